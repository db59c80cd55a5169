"""Job submission on a CLI-started head: the SDK and `aioray job` against its dashboard, entrypoints
that are drivers of the cluster, their runtime_env, logs, stops, failures, and the job table.

One head for the module (its own TMPDIR and session tag, so `aioray stop` touches only it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aioray._private.common import process
from aioray.job_submission import JobServerError, JobStatus, JobSubmissionClient, JobType
from aioray.util.state import list_jobs

from ..conftest import SESSION_TAG

DEADLINE_S = 60.0

TASKS_SCRIPT = """
import os
import signal
import aioray

@aioray.remote
def square(x):
    return x * x, os.environ.get("JOB_FLAVOUR")

aioray.init()
print("squares", aioray.get([square.remote(i) for i in range(4)]))
print("entrypoint sees", os.environ.get("JOB_FLAVOUR"))
"""


class Head:
    def __init__(self, root: Path) -> None:
        self.tag = f"{SESSION_TAG}-j{uuid.uuid4().hex[:6]}"
        self.env = {**os.environ, "TMPDIR": str(root), process.TAG_ENV: self.tag}
        self.env.pop(process.TOKEN_ENV, None)
        self.root = root

    def cli(self, *args: str, timeout: float = DEADLINE_S, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aioray", *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    def start(self) -> None:
        r = self.cli("start", "--head", "--num-cpus", "2", "--object-store-memory", str(64 << 20), "--dashboard-port", "0")  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        info = json.loads((self.root / "aioray-session" / "cluster.json").read_text())
        self.url: str = info["dashboard_url"]
        self.token: str = info["token"]
        self.gcs_address: str = info["gcs_address"]

    def client(self, token: str | None = None) -> JobSubmissionClient:
        return JobSubmissionClient(self.url, headers={"Authorization": f"Bearer {token or self.token}"})


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    h = Head(tmp_path_factory.mktemp("jobs"))
    try:
        h.start()
        yield h
    finally:
        r = h.cli("stop", "--force")
        assert r.returncode == 0, r.stdout + r.stderr
        assert process.find_daemons(h.tag) == {}


def wait_ended(client: JobSubmissionClient, job_id: str) -> JobStatus:
    deadline = time.monotonic() + DEADLINE_S
    while not (status := client.get_job_status(job_id)).is_terminal():
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.1)
    return status


def wait_for(check: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.1)
    return value


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_a_job_of_tasks_succeeds_and_is_in_the_job_table(
    head: Head, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = write(tmp_path / "tasks.py", TASKS_SCRIPT)
    client = head.client()
    job = client.submit_job(entrypoint=f"{sys.executable} {script}", metadata={"owner": "tests"})
    assert wait_ended(client, job) == JobStatus.SUCCEEDED
    logs = client.get_job_logs(job)
    assert "squares [(0, None), (1, None), (4, None), (9, None)]" in logs
    info = client.get_job_info(job)
    assert (
        info.type == JobType.SUBMISSION and info.submission_id == job and info.metadata == {"owner": "tests"}
    )
    assert info.driver_exit_code == 0 and info.job_id is not None  # its driver registered, linked
    assert info.driver_info is not None and info.driver_info.node_ip_address == "127.0.0.1"
    # The state API reads the same from the GCS: the submitted job, with its driver's job id.
    monkeypatch.setenv(process.TOKEN_ENV, head.token)
    rows = {r["submission_id"]: r for r in list_jobs(address=head.gcs_address, detail=True)}
    assert rows[job]["status"] == "SUCCEEDED" and rows[job]["job_id"] == info.job_id
    assert rows[job]["type"] == "SUBMISSION" and rows[job]["entrypoint"] == f"{sys.executable} {script}"
    assert client.get_job_info(info.job_id).submission_id == job  # found by its driver's job id too


def test_working_dir_and_env_vars_apply_to_the_entrypoint_and_its_tasks(head: Head, tmp_path: Path) -> None:
    project = tmp_path / "project"
    write(project / "helper.py", "GREETING = 'hello from helper'\n")
    write(
        project / "main.py",
        """
        import os
        import aioray
        import helper

        @aioray.remote
        def remote_greeting():
            import helper  # the working_dir is the task's too
            return helper.GREETING, os.environ["JOB_FLAVOUR"]

        aioray.init()
        print("entrypoint", helper.GREETING, os.environ["JOB_FLAVOUR"], os.path.exists("main.py"))
        print("task", aioray.get(remote_greeting.remote()))
        """,
    )
    client = head.client()
    job = client.submit_job(
        entrypoint="python main.py",  # `python` is the head's interpreter; main.py is in the working_dir
        runtime_env={"working_dir": str(project), "env_vars": {"JOB_FLAVOUR": "vanilla"}},
    )
    assert wait_ended(client, job) == JobStatus.SUCCEEDED, client.get_job_logs(job)
    logs = client.get_job_logs(job)
    assert "entrypoint hello from helper vanilla True" in logs
    assert "task ('hello from helper', 'vanilla')" in logs
    runtime_env = client.get_job_info(job).runtime_env
    assert runtime_env is not None and runtime_env["working_dir"].startswith("gcs://_ray_pkg_")


def test_a_failing_entrypoint_fails_the_job(head: Head, tmp_path: Path) -> None:
    script = write(tmp_path / "fail.py", "import sys\nprint('about to fail')\nsys.exit(7)\n")
    client = head.client()
    job = client.submit_job(entrypoint=f"{sys.executable} {script}")
    assert wait_ended(client, job) == JobStatus.FAILED
    info = client.get_job_info(job)
    assert info.driver_exit_code == 7 and info.error_type == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert info.message is not None and "exit code 7" in info.message and "about to fail" in info.message


def test_stop_ends_a_long_job_and_its_processes(head: Head, tmp_path: Path) -> None:
    script = write(
        tmp_path / "long.py",
        """
        import os, time
        import aioray

        @aioray.remote
        class Holder:
            def pid(self):
                return os.getpid()

        aioray.init()
        holder = Holder.remote()
        print("pids", os.getpid(), aioray.get(holder.pid.remote()), flush=True)
        time.sleep(600)
        """,
    )
    client = head.client()
    job = client.submit_job(entrypoint=f"{sys.executable} {script}")
    line = wait_for(
        lambda: [ln for ln in client.get_job_logs(job).splitlines() if ln.startswith("pids")], "pids"
    )
    driver_pid, actor_pid = map(int, line[0].split()[1:])
    assert client.get_job_status(job) == JobStatus.RUNNING
    assert client.stop_job(job) is True
    assert wait_ended(client, job) == JobStatus.STOPPED
    wait_for(lambda: process.is_gone(driver_pid), "the entrypoint exiting")
    wait_for(lambda: process.is_gone(actor_pid), "the job's actor exiting with its driver")
    assert client.stop_job(job) is False


def test_tail_follows_a_job_to_its_end(head: Head, tmp_path: Path) -> None:
    script = write(
        tmp_path / "ticks.py", "import time\nfor i in range(3):\n    print('tick', i)\n    time.sleep(0.3)\n"
    )
    client = head.client()
    job = client.submit_job(entrypoint=f"{sys.executable} {script}")

    async def follow() -> str:
        async with asyncio.timeout(DEADLINE_S):
            return "".join([text async for text in client.tail_job_logs(job)])

    assert asyncio.run(follow()) == "tick 0\ntick 1\ntick 2\n"
    assert wait_ended(client, job) == JobStatus.SUCCEEDED


def test_list_delete_and_bad_requests(head: Head) -> None:
    client = head.client()
    job = client.submit_job(entrypoint="echo listed", submission_id=f"listed-{uuid.uuid4().hex[:6]}")
    assert job.startswith("listed-")
    assert wait_ended(client, job) == JobStatus.SUCCEEDED
    assert job in {j.submission_id for j in client.list_jobs()}
    with pytest.raises(JobServerError, match="already exists") as e:
        client.submit_job(entrypoint="echo again", submission_id=job)
    assert e.value.status == 400
    assert client.delete_job(job) is True
    assert job not in {j.submission_id for j in client.list_jobs()}
    with pytest.raises(JobServerError, match=f"Job {job} does not exist") as e:
        client.get_job_status(job)
    assert e.value.status == 404
    with pytest.raises(JobServerError, match="'entrypoint' must be a non-empty") as e:
        client.submit_job(entrypoint="")
    assert e.value.status == 400


def test_a_missing_or_wrong_token_is_refused(head: Head) -> None:
    with pytest.raises(JobServerError, match="auth token") as e:
        head.client(token="not-the-token").list_jobs()
    assert e.value.status == 401
    request = urllib.request.Request(
        head.url + "/api/jobs/", data=b'{"entrypoint": "touch /tmp/pwned"}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
    assert "Authorization: Bearer" in json.loads(refused.value.read())["error"]


def test_the_cli_submits_waits_and_prints_the_output(head: Head, tmp_path: Path) -> None:
    write(tmp_path / "cli_job.py", TASKS_SCRIPT)
    # The CLI finds the token in the head's cluster file (same TMPDIR), as on the head's machine.
    r = head.cli(
        "job", "submit", "--address", head.url, "--working-dir", str(tmp_path),
        "--runtime-env-json", '{"env_vars": {"JOB_FLAVOUR": "mint"}}', "--", "python", "cli_job.py",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "squares [(0, 'mint'), (1, 'mint'), (4, 'mint'), (9, 'mint')]" in r.stdout
    assert "entrypoint sees mint" in r.stdout and "succeeded" in r.stdout
    job = r.stdout.split("Job '", 1)[1].split("'", 1)[0]
    status = head.cli("job", "status", "--address", head.url, job)
    assert status.returncode == 0 and f"Status for job '{job}': SUCCEEDED" in status.stdout
    listed = head.cli("job", "list", "--address", head.url)
    assert job in listed.stdout
    failed = head.cli("job", "submit", "--address", head.url, "--", "python", "-c", "import sys; sys.exit(2)")
    assert failed.returncode == 1 and "failed" in failed.stdout and "exit code 2" in failed.stdout
    refused = head.cli("job", "list", "--address", head.url, **{process.TOKEN_ENV: "wrong"})
    assert refused.returncode == 1 and "401" in refused.stderr


def test_entrypoint_resources_are_reserved_on_the_head(head: Head) -> None:
    client = head.client()
    job = client.submit_job(entrypoint="echo reserved", entrypoint_num_cpus=1)
    assert wait_ended(client, job) == JobStatus.SUCCEEDED
    assert client.get_job_info(job).entrypoint_num_cpus == 1
    # What the head does not have keeps the job PENDING, until it is stopped.
    waiting = client.submit_job(entrypoint="echo never", entrypoint_resources={"unobtainium": 1})
    assert client.get_job_status(waiting) == JobStatus.PENDING
    assert client.stop_job(waiting) is True
    assert wait_ended(client, waiting) == JobStatus.STOPPED
    assert client.get_job_logs(waiting) == ""


def test_no_entrypoint_outlives_a_killed_dashboard(head: Head, tmp_path: Path) -> None:
    # Last in this module: the dashboard is SIGKILLed (its supervisor starts another).
    script = write(
        tmp_path / "forever.py",
        """
        import os, time
        print("pid", os.getpid(), flush=True)
        time.sleep(600)
        """,
    )
    client = head.client()
    # `; true` keeps the shell as the entrypoint's parent: the python process is a grandchild.
    job = client.submit_job(entrypoint=f"{sys.executable} {script}; true")
    line = wait_for(
        lambda: [ln for ln in client.get_job_logs(job).splitlines() if ln.startswith("pid")], "pid"
    )
    pid = int(line[0].split()[1])
    (dashboard,) = [p for p, kind in process.find_daemons(head.tag).items() if kind == "dashboard"]
    os.kill(dashboard, signal.SIGKILL)
    wait_for(lambda: process.is_gone(pid), "the entrypoint going with its dashboard")
