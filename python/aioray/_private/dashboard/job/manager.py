"""The job manager: runs submitted jobs' entrypoints on the head, as drivers of its cluster.

A job is a shell command. Its record (`common.jobs.JobInfo`) lives in the GCS key-value store, so
every client reads the same status whatever manager wrote it. Submitting creates the record
(PENDING, refused if the submission id exists: the KV's create-only put decides), then, in the
background: the head's raylet sets the job's runtime environment up as it does for workers
(packages unpacked, env vars, virtual environment: `NodeManager.SetupRuntimeEnv`), the entrypoint
starts in its working directory in a session of its own (RUNNING), with its output in a log file
on the head, and its exit decides SUCCEEDED or FAILED. Stopping sends SIGTERM to the entrypoint's
process group, SIGKILL after a grace period (STOPPED).

The entrypoint finds its cluster in its environment: `init()` with no address connects to
`ADDRESS_ENV`, takes the job's runtime_env (`JOB_RUNTIME_ENV_ENV`) as its job-level one, and
registers its driver under the submission id, which links the driver job to the submitted one.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, BinaryIO

from aioray._private.common import process
from aioray._private.common.jobs import (
    ADDRESS_ENV,
    JOB_RUNTIME_ENV_ENV,
    SUBMISSION_ID_ENV,
    JobDetails,
    JobInfo,
    JobStatus,
    info_key,
    job_details,
)
from aioray._private.common.runtime_env_info import info_of
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.dashboard.jobs")

STOP_GRACE_S = float(os.environ.get("AIORAY_JOB_STOP_WAIT_TIME_S", "3"))  # Ray: RAY_JOB_STOP_WAIT_TIME_S
RPC_TIMEOUT_S = 30.0
TAIL_POLL_S = 0.1
FAILED_LOG_TAIL_CHARS = 20_000  # of the entrypoint's output, in a FAILED job's message (as Ray)
_SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_PACKAGE_URI = re.compile(r"^gcs://[A-Za-z0-9_.-]+\.zip$")

SetupRuntimeEnv = Callable[[pb.RuntimeEnvSetupRequest], Awaitable[pb.RuntimeEnvSetup]]


class JobNotFoundError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class BadJobRequestError(ValueError):
    pass


def new_submission_id() -> str:
    return "raysubmit_" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


def log_file_name(submission_id: str) -> str:
    return f"job-driver-{submission_id}.log"


@dataclasses.dataclass
class SubmitRequest:
    """POST /api/jobs/ (Ray's JobSubmitRequest), checked."""

    entrypoint: str
    submission_id: str | None = None
    runtime_env: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    entrypoint_resources: dict[str, float] | None = None

    @classmethod
    def parse(cls, body: Any) -> SubmitRequest:
        if not isinstance(body, dict):
            raise BadJobRequestError("the request body must be a JSON object")
        body = dict(body)
        if body.get("job_id") is not None and body.get("submission_id") is None:
            body["submission_id"] = body["job_id"]  # Ray's deprecated name
        body.pop("job_id", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise BadJobRequestError(f"unknown field(s) in the job request: {', '.join(unknown)}")
        entrypoint = body.get("entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise BadJobRequestError("'entrypoint' must be a non-empty shell command string")
        sid = body.get("submission_id")
        if sid is not None and (not isinstance(sid, str) or not _SUBMISSION_ID.match(sid)):
            raise BadJobRequestError(
                f"'submission_id' must be 1 to 128 letters, digits, '_', '.' or '-', got {sid!r}"
            )
        req = cls(**body)
        req.runtime_env = _check_runtime_env(req.runtime_env)
        if req.metadata is not None and (
            not isinstance(req.metadata, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in req.metadata.items())
        ):
            raise BadJobRequestError("'metadata' must map strings to strings")
        for name in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory"):
            value = getattr(req, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise BadJobRequestError(f"'{name}' must be a number >= 0, got {value!r}")
        res = req.entrypoint_resources
        if res is not None and (
            not isinstance(res, dict)
            or not all(
                isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
                for k, v in res.items()
            )
            or {"CPU", "GPU", "memory"} & set(res)
        ):
            raise BadJobRequestError(
                "'entrypoint_resources' must map custom resource names to numbers >= 0 "
                "(CPU, GPU and memory have entrypoint_num_cpus, entrypoint_num_gpus and entrypoint_memory)"
            )
        return req

    def resources(self) -> dict[str, float]:
        wanted = {
            "CPU": self.entrypoint_num_cpus or 0,
            "GPU": self.entrypoint_num_gpus or 0,
            "memory": self.entrypoint_memory or 0,
            **(self.entrypoint_resources or {}),
        }
        return {k: float(v) for k, v in wanted.items() if v}


def _check_runtime_env(env: Any) -> dict[str, Any] | None:
    """The shape the head can use; the full check is the client's (and the raylet's, when it sets
    the environment up). Local paths cannot be used here: the client uploads them first."""
    if env is None or env == {}:
        return None
    if not isinstance(env, dict):
        raise BadJobRequestError("'runtime_env' must be a JSON object")
    paths = [env.get("working_dir")] if env.get("working_dir") is not None else []
    modules = env.get("py_modules") or []
    if not isinstance(modules, list):
        raise BadJobRequestError("runtime_env 'py_modules' must be a list")
    for path in [*paths, *modules]:
        if not isinstance(path, str) or not _PACKAGE_URI.match(path):
            raise BadJobRequestError(
                f"runtime_env path {path!r} is not an uploaded package (gcs://<name>.zip): local "
                "directories are uploaded by the client; submit with JobSubmissionClient or `aioray job submit`"
            )
    env_vars = env.get("env_vars")
    if env_vars is not None and (
        not isinstance(env_vars, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())
    ):
        raise BadJobRequestError("runtime_env 'env_vars' must map strings to strings")
    return env


@dataclasses.dataclass
class _Run:
    """A job this manager runs."""

    info: JobInfo
    task: asyncio.Task[None] | None = None
    proc: asyncio.subprocess.Process | None = None
    starting: bool = False
    stopping: bool = False
    stop_requested: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class JobManager:
    """Jobs on this head. `kv` and `jobs` are GCS stubs (InternalKv, JobInfo), `setup_runtime_env`
    the head raylet's SetupRuntimeEnv; `reserve` holds the entrypoint's resources (if it asks for
    any) until the returned release is awaited."""

    def __init__(
        self,
        *,
        kv: Any,
        jobs: Any,
        setup_runtime_env: SetupRuntimeEnv,
        gcs_address: str,
        token: str,
        log_dir: str,
        node_id: str = "",
        reserve: Callable[[str, dict[str, float]], Awaitable[Callable[[], Awaitable[None]]]] | None = None,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self._kv = kv
        self._jobs = jobs
        self._setup_runtime_env = setup_runtime_env
        self._reserve = reserve
        self.gcs_address = gcs_address
        self._token = token
        self.log_dir = log_dir
        self.node_id = node_id
        self.stop_grace_s = stop_grace_s
        self.runs: dict[str, _Run] = {}
        os.makedirs(log_dir, exist_ok=True)

    # -- records ---------------------------------------------------------------------------------
    async def _put(self, sid: str, info: JobInfo, overwrite: bool = True) -> bool:
        reply = await self._kv.kv_put(
            pb.KvPutRequest(key=info_key(sid), value=info.dump(), overwrite=overwrite), timeout=RPC_TIMEOUT_S
        )
        return bool(reply.added)

    async def get_info(self, sid: str) -> JobInfo | None:
        run = self.runs.get(sid)
        if run is not None:
            return run.info
        reply = await self._kv.kv_get(pb.KvKey(key=info_key(sid)), timeout=RPC_TIMEOUT_S)
        return JobInfo.load(reply.value) if reply.found else None

    async def _update(self, sid: str, status: JobStatus, **changes: Any) -> None:
        run = self.runs[sid]
        if run.info.status.is_terminal():
            return
        changes.setdefault("message", None)  # the status's own message unless one is given
        run.info = dataclasses.replace(run.info, status=status, **changes)
        if status.is_terminal():
            run.info.end_time = int(time.time() * 1000)
        await self._put(sid, run.info)

    async def list_jobs(self) -> list[JobDetails]:
        return job_details(await self._jobs.list_jobs(pb.Empty(), timeout=RPC_TIMEOUT_S))

    async def get_job(self, job_or_submission_id: str) -> JobDetails:
        """A job by submission id or by its driver's job id (hex), as Ray's routes take either."""
        jobs = await self.list_jobs()
        for job in jobs:
            if job.submission_id == job_or_submission_id:
                return job
        for job in jobs:
            if job.job_id == job_or_submission_id:
                return job
        raise JobNotFoundError(f"Job {job_or_submission_id} does not exist")

    async def _submission(self, job_or_submission_id: str, what: str) -> tuple[str, JobInfo]:
        info = await self.get_info(job_or_submission_id)
        if info is not None:
            return job_or_submission_id, info
        job = await self.get_job(job_or_submission_id)
        if job.submission_id is None:
            raise BadJobRequestError(f"Can only {what} submission type jobs")
        info = await self.get_info(job.submission_id)
        if info is None:
            raise JobNotFoundError(f"Job {job_or_submission_id} does not exist")
        return job.submission_id, info

    # -- submit, stop, delete --------------------------------------------------------------------
    async def submit_job(self, req: SubmitRequest) -> str:
        sid = req.submission_id or new_submission_id()
        info = JobInfo(
            status=JobStatus.PENDING,
            entrypoint=req.entrypoint,
            start_time=int(time.time() * 1000),
            metadata=req.metadata or {},
            runtime_env=req.runtime_env,
            entrypoint_num_cpus=req.entrypoint_num_cpus,
            entrypoint_num_gpus=req.entrypoint_num_gpus,
            entrypoint_memory=req.entrypoint_memory,
            entrypoint_resources=req.entrypoint_resources,
        )
        if not await self._put(sid, info, overwrite=False):
            raise BadJobRequestError(
                f"Job with submission_id {sid} already exists. Please use a different submission_id."
            )
        run = self.runs[sid] = _Run(info)
        run.task = asyncio.get_running_loop().create_task(self._run(sid, req), name=f"job {sid}")
        return sid

    async def stop_job(self, job_or_submission_id: str) -> bool:
        """True if the job was running (it is being stopped), False if it had ended already."""
        sid, info = await self._submission(job_or_submission_id, "stop")
        if info.status.is_terminal():
            return False
        run = self.runs.get(sid)
        if run is None:
            # Not ours (its manager is gone and recovery marked it): nothing runs it here.
            return False
        if run.stopping:
            return True
        run.stopping = True
        run.stop_requested.set()
        if run.proc is not None:
            _signal_group(run.proc.pid, signal.SIGTERM)
        elif not run.starting and run.task is not None:
            run.task.cancel()  # still setting up: it never starts
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
            # A task cancelled before its first step ran none of its handlers.
            await self._update(sid, JobStatus.STOPPED)
            run.done.set()
        return True

    async def delete_job(self, job_or_submission_id: str) -> bool:
        sid, info = await self._submission(job_or_submission_id, "delete")
        if not info.status.is_terminal():
            raise BadJobRequestError(
                f"Attempted to delete job {sid} in non-terminal state {info.status}: stop it first"
            )
        await self._kv.kv_del(pb.KvKey(key=info_key(sid)), timeout=RPC_TIMEOUT_S)
        self.runs.pop(sid, None)
        for path in (self.log_path(sid), self._pid_path(sid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True

    # -- running ---------------------------------------------------------------------------------
    def _base_env(self, sid: str, runtime_env: dict[str, Any] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIORAY_READY", "AIORAY_LIFELINE"))}
        env[ADDRESS_ENV] = self.gcs_address
        env[process.TOKEN_ENV] = self._token
        env[SUBMISSION_ID_ENV] = sid
        env["PYTHONUNBUFFERED"] = "1"  # so that the job's output reaches its log (and tails) as printed
        # `python` in the entrypoint is the head's interpreter, as if its virtualenv were active.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
        if runtime_env:
            env[JOB_RUNTIME_ENV_ENV] = json.dumps(runtime_env)
        else:
            env.pop(JOB_RUNTIME_ENV_ENV, None)
        return env

    async def _run(self, sid: str, req: SubmitRequest) -> None:
        run = self.runs[sid]
        release: Callable[[], Awaitable[None]] | None = None
        try:
            resources = req.resources()
            if resources and self._reserve is not None:
                release = await self._reserve(sid, resources)
            env = self._base_env(sid, req.runtime_env)
            cwd = None
            if req.runtime_env:
                setup = await self._setup_runtime_env(
                    pb.RuntimeEnvSetupRequest(runtime_env=info_of(req.runtime_env), base_env=env)
                )
                if setup.error:
                    await self._update(
                        sid,
                        JobStatus.FAILED,
                        error_type="RUNTIME_ENV_SETUP_FAILURE",
                        message=f"runtime_env setup failed: {setup.error}",
                    )
                    return
                env, cwd = dict(setup.env), setup.cwd or None
            run.starting = True  # from here a stop waits for the process, to signal it
            with _open_log(self.log_path(sid)) as out:
                # Through a small parent that takes the job's process group down if this process
                # dies (`job/entrypoint.py`): no entrypoint outlives its dashboard.
                run.proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "aioray._private.dashboard.job.entrypoint",
                    str(self.stop_grace_s),
                    req.entrypoint,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,  # its own process group: stop signals the whole job
                )
            _write(self._pid_path(sid), str(run.proc.pid))  # for a restarted manager (`recover`)
            await self._update(sid, JobStatus.RUNNING, driver_node_id=self.node_id or None)
            if run.stopping:  # asked while it started
                _signal_group(run.proc.pid, signal.SIGTERM)
            code = await self._wait(run)
            if run.stopping:
                await self._update(sid, JobStatus.STOPPED, driver_exit_code=code)
            elif code == 0:
                await self._update(sid, JobStatus.SUCCEEDED, driver_exit_code=0)
            else:
                tail = self._tail(sid)
                await self._update(
                    sid,
                    JobStatus.FAILED,
                    driver_exit_code=code,
                    error_type="JOB_ENTRYPOINT_COMMAND_ERROR",
                    message=f"Job entrypoint command failed with exit code {code}, last available logs "
                    f"(truncated to {FAILED_LOG_TAIL_CHARS:,} chars):\n{tail}",
                )
        except asyncio.CancelledError:
            if run.stopping:
                await self._update(sid, JobStatus.STOPPED)
            else:
                raise
        except Exception as e:
            log.exception("job %s failed to start", sid)
            await self._update(
                sid,
                JobStatus.FAILED,
                error_type="JOB_SUPERVISOR_ERROR",
                message=f"the job could not be started: {type(e).__name__}: {e}",
            )
        finally:
            run.done.set()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._pid_path(sid))
            if release is not None:
                with contextlib.suppress(Exception):
                    await release()
            await self._finish_drivers(sid)

    async def _wait(self, run: _Run) -> int:
        """The entrypoint's exit code; once a stop is asked, SIGKILL after the grace period."""
        assert run.proc is not None
        pid = run.proc.pid
        exited = asyncio.ensure_future(run.proc.wait())
        stop = asyncio.ensure_future(run.stop_requested.wait())
        try:
            await asyncio.wait([exited, stop], return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(exited), self.stop_grace_s)
                if not exited.done():
                    _signal_group(pid, signal.SIGKILL)
                    await exited
        finally:
            stop.cancel()
        if run.stopping:
            _signal_group(pid, signal.SIGKILL)  # what the entrypoint started and left behind
        return run.proc.returncode if run.proc.returncode is not None else -1

    async def _finish_drivers(self, sid: str) -> None:
        """The entrypoint is gone: so is its driver, even if it died before it could say so (its
        actors then die with its job, as for any driver that disconnects)."""
        with contextlib.suppress(Exception):
            reply = await self._jobs.list_jobs(pb.Empty(), timeout=RPC_TIMEOUT_S)
            for j in reply.jobs:
                if j.submission_id == sid and not j.is_dead:
                    await self._jobs.mark_job_finished(pb.JobId(job_id=j.job_id), timeout=RPC_TIMEOUT_S)

    # -- logs ------------------------------------------------------------------------------------
    def log_path(self, sid: str) -> str:
        return os.path.join(self.log_dir, log_file_name(sid))

    def _pid_path(self, sid: str) -> str:
        return os.path.join(self.log_dir, f"job-driver-{sid}.pid")

    def _tail(self, sid: str) -> str:
        try:
            with open(self.log_path(sid), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - FAILED_LOG_TAIL_CHARS))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    async def get_logs(self, job_or_submission_id: str) -> str:
        sid, _ = await self._submission(job_or_submission_id, "get logs of")
        return _read(self.log_path(sid)).decode(errors="replace")

    async def tail_logs(self, job_or_submission_id: str) -> AsyncIterator[str]:
        """The job's output as it is written, until the job has ended and all of it was sent."""
        sid, _ = await self._submission(job_or_submission_id, "get logs of")
        return self._follow(sid)

    async def _follow(self, sid: str) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        offset = 0
        last_check = 0.0
        while True:
            chunk = _read(self.log_path(sid), offset, 1 << 20)
            if chunk:
                offset += len(chunk)
                text = decoder.decode(chunk)
                if text:
                    yield text
                continue
            run = self.runs.get(sid)
            if run is not None:
                if run.done.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.done.wait(), TAIL_POLL_S)
                continue
            now = time.monotonic()
            if now - last_check > 1.0:  # not ours: its status is in the GCS
                last_check = now
                info = await self.get_info(sid)
                if info is None or info.status.is_terminal():
                    break
            await asyncio.sleep(TAIL_POLL_S)
        # What was written between the last read and the end.
        rest = _read(self.log_path(sid), offset)
        text = decoder.decode(rest, final=True)
        if text:
            yield text

    # -- life ------------------------------------------------------------------------------------
    async def recover(self) -> int:
        """Jobs a previous manager left unfinished: their entrypoints are stopped and they are
        marked FAILED (this manager cannot learn how they end). Returns how many."""
        reply = await self._jobs.list_jobs(pb.Empty(), timeout=RPC_TIMEOUT_S)
        count = 0
        for s in reply.submissions:
            if s.submission_id in self.runs:
                continue
            try:
                info = JobInfo.load(s.info)
            except (ValueError, TypeError, KeyError):
                continue
            if info.status.is_terminal():
                continue
            pid = _read(self._pid_path(s.submission_id)).decode()
            if pid.isdigit():
                _signal_group(int(pid), signal.SIGKILL)
            info = dataclasses.replace(
                info,
                status=JobStatus.FAILED,
                error_type="JOB_SUPERVISOR_ERROR",
                message="the job manager restarted while the job ran; its entrypoint was stopped",
                end_time=int(time.time() * 1000),
            )
            await self._put(s.submission_id, info)
            count += 1
        return count

    async def close(self) -> None:
        """Stops every running job (the head is going away)."""
        for sid, run in list(self.runs.items()):
            if not run.done.is_set():
                with contextlib.suppress(Exception):
                    await self.stop_job(sid)
        waits = [run.done.wait() for run in self.runs.values() if not run.done.is_set()]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), self.stop_grace_s + 5)


def _open_log(path: str) -> BinaryIO:
    return open(path, "ab")


def _read(path: str, offset: int = 0, limit: int = -1) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except OSError:
        return b""


def _write(path: str, text: str) -> None:
    with contextlib.suppress(OSError), open(path, "w") as f:
        f.write(text)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


__all__ = [
    "BadJobRequestError",
    "JobManager",
    "JobNotFoundError",
    "SubmitRequest",
    "log_file_name",
    "new_submission_id",
]
