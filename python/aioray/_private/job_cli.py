"""``aioray job submit|status|logs|stop|list|delete``: Ray's job CLI, a client of the job REST API."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from typing import Any

from aioray._private.common.jobs import JobDetails, JobStatus
from aioray.job_submission import JobServerError, JobSubmissionClient

POLL_S = 0.5
LINE = "-" * 50


def _json_arg(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as e:
        raise SystemExit(f"aioray job: {what} is not valid JSON: {e}") from None


def _client(args: argparse.Namespace) -> JobSubmissionClient:
    headers = _json_arg(args.headers, "--headers")
    return JobSubmissionClient(args.address, headers=headers, verify=args.verify, timeout=args.timeout)


async def _tail(client: JobSubmissionClient, job_id: str) -> None:
    async for text in client.tail_job_logs(job_id):
        sys.stdout.write(text)
        sys.stdout.flush()


def _wait_until_ended(client: JobSubmissionClient, job_id: str) -> JobStatus:
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        time.sleep(POLL_S)


def _report_end(client: JobSubmissionClient, job_id: str, status: JobStatus) -> int:
    print(LINE)
    if status == JobStatus.SUCCEEDED:
        print(f"Job '{job_id}' succeeded")
    elif status == JobStatus.STOPPED:
        print(f"Job '{job_id}' was stopped")
    else:
        info = client.get_job_info(job_id)
        print(f"Job '{job_id}' failed")
        print(LINE)
        print(f"Status message: {info.message}")
    print(LINE)
    return 0 if status == JobStatus.SUCCEEDED else 1


def cmd_submit(args: argparse.Namespace) -> int:
    entrypoint = list(args.entrypoint)
    if entrypoint and entrypoint[0] == "--":
        entrypoint = entrypoint[1:]
    if not entrypoint:
        print("aioray job submit: give the entrypoint after --, e.g. `-- python script.py`", file=sys.stderr)
        return 2
    runtime_env = _json_arg(args.runtime_env_json, "--runtime-env-json")
    if args.runtime_env:
        with open(args.runtime_env) as f:
            runtime_env = _json_arg(f.read(), args.runtime_env)
    runtime_env = dict(runtime_env or {})
    if args.working_dir:
        runtime_env["working_dir"] = args.working_dir
    client = _client(args)
    print(f"Job submission server address: {client.address}")
    job_id = client.submit_job(
        entrypoint=shlex.join(entrypoint) if len(entrypoint) > 1 else entrypoint[0],
        submission_id=args.submission_id,
        runtime_env=runtime_env or None,
        metadata=_json_arg(args.metadata_json, "--metadata-json"),
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus,
        entrypoint_memory=args.entrypoint_memory,
        entrypoint_resources=_json_arg(args.entrypoint_resources, "--entrypoint-resources"),
    )
    print(LINE)
    print(f"Job '{job_id}' submitted successfully")
    print(LINE)
    where = f" --address {client.address}"
    print("Next steps")
    print(f"  Query the logs of the job:\n    aioray job logs{where} {job_id}")
    print(f"  Query the status of the job:\n    aioray job status{where} {job_id}")
    print(f"  Request the job to be stopped:\n    aioray job stop{where} {job_id}")
    if args.no_wait:
        return 0
    print("Tailing logs until the job exits (disable with --no-wait):")
    sys.stdout.flush()
    try:
        asyncio.run(_tail(client, job_id))
        status = _wait_until_ended(client, job_id)
    except KeyboardInterrupt:
        print(f"\nStopped following the job; it goes on. Stop it with: aioray job stop{where} {job_id}")
        return 130
    return _report_end(client, job_id, status)


def cmd_status(args: argparse.Namespace) -> int:
    info = _client(args).get_job_info(args.job_id)
    print(f"Status for job '{args.job_id}': {info.status}")
    if info.message:
        print(f"Status message: {info.message}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        try:
            asyncio.run(_tail(client, args.job_id))
        except KeyboardInterrupt:
            return 130
        return 0
    sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    client = _client(args)
    if not client.stop_job(args.job_id):
        print(f"Job '{args.job_id}' had ended already: {client.get_job_status(args.job_id)}")
        return 0
    print(f"Requested the job '{args.job_id}' to stop")
    if args.no_wait:
        return 0
    status = _wait_until_ended(client, args.job_id)
    print(f"Job '{args.job_id}' is {status}")
    return 0


def _row(job: JobDetails) -> str:
    started = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
    )
    return (
        f"{job.submission_id or '-':<28} {job.job_id or '-':<10} {job.type:<10} {job.status:<9} "
        f"{started:<19} {job.entrypoint}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    jobs = _client(args).list_jobs()
    if args.format == "json":
        print(json.dumps([j.to_json() for j in jobs], indent=2))
        return 0
    print(f"{'SUBMISSION ID':<28} {'JOB ID':<10} {'TYPE':<10} {'STATUS':<9} {'START TIME':<19} ENTRYPOINT")
    for job in jobs:
        print(_row(job))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _client(args).delete_job(args.job_id)
    print(f"Job '{args.job_id}' deleted successfully")
    return 0


def _run(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (JobServerError, ConnectionError, TimeoutError, ValueError, TypeError, OSError) as e:
            print(f"aioray job {args.job_command}: {e}", file=sys.stderr)
            return 1

    return run


def add_parser(sub: Any) -> None:
    job = sub.add_parser("job", help="submit jobs to a cluster's head and manage them (Ray's job CLI)")
    cmds = job.add_subparsers(dest="job_command", required=True)

    def command(name: str, func: Any, help: str, job_id: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=help)
        p.add_argument(
            "--address",
            default=None,
            help="the dashboard: http://HEAD:PORT (default: $AIORAY_API_SERVER_ADDRESS, else the cluster "
            "started on this machine)",
        )
        p.add_argument(
            "--headers", default=None, help='JSON of HTTP headers, e.g. \'{"Authorization": "Bearer T"}\''
        )
        p.add_argument("--verify", default=True, type=lambda v: v.lower() not in ("0", "false", "no"))
        p.add_argument("--timeout", type=float, default=30.0, help="seconds each request may take")
        if job_id:
            p.add_argument("job_id", help="the submission id (or a driver's job id)")
        p.set_defaults(func=_run(func))
        return p

    submit = command("submit", cmd_submit, "run ENTRYPOINT on the head; follows its output", job_id=False)
    submit.add_argument("--submission-id", "--job-id", dest="submission_id", default=None)
    submit.add_argument("--working-dir", default=None, help="a local directory uploaded and run in")
    submit.add_argument("--runtime-env-json", default=None, help="the job's runtime_env as JSON")
    submit.add_argument("--runtime-env", default=None, help="a JSON file holding the job's runtime_env")
    submit.add_argument("--metadata-json", default=None, help="JSON of string metadata")
    submit.add_argument("--entrypoint-num-cpus", type=float, default=None)
    submit.add_argument("--entrypoint-num-gpus", type=float, default=None)
    submit.add_argument("--entrypoint-memory", type=int, default=None)
    submit.add_argument("--entrypoint-resources", default=None, help="JSON of custom resources")
    submit.add_argument("--no-wait", action="store_true", help="return once submitted")
    submit.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    command("status", cmd_status, "a job's status")
    logs = command("logs", cmd_logs, "a job's output")
    logs.add_argument("-f", "--follow", action="store_true", help="follow it until the job ends")
    stop = command("stop", cmd_stop, "stop a job (SIGTERM, then SIGKILL)")
    stop.add_argument("--no-wait", action="store_true", help="return once asked")
    lst = command("list", cmd_list, "every job: submitted ones and drivers", job_id=False)
    lst.add_argument("--format", choices=("table", "json"), default="table")
    command("delete", cmd_delete, "forget an ended job")


__all__ = ["add_parser"]
