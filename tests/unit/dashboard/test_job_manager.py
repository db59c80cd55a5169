"""The job manager with the GCS's own KV and job table in process (no cluster): entrypoints as real
subprocesses, their records, logs, stops, failures and the runtime_env set-up it asks the raylet for."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aioray._private.common import process
from aioray._private.common.jobs import (
    ADDRESS_ENV,
    JOB_RUNTIME_ENV_ENV,
    SUBMISSION_ID_ENV,
    JobStatus,
    JobType,
    info_key,
)
from aioray._private.dashboard.job.manager import (
    BadJobRequestError,
    JobManager,
    JobNotFoundError,
    SubmitRequest,
)
from aioray._private.gcs.jobs import JobTable
from aioray._private.gcs.kv import InternalKv
from aioray._proto.aioray import v1 as pb

PY = sys.executable
DEADLINE_S = 60.0


def _exists(path: str) -> bool:
    return os.path.exists(path)


class Stub:
    """A GCS service object called as a stub is (with `timeout=`)."""

    def __init__(self, service: Any) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._service, name)

        async def call(request: Any, timeout: float | None = None) -> Any:
            return await method(request)

        return call


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.kv = InternalKv()
        self.table = JobTable(lambda address: None, kv=lambda: self.kv.kv)
        self.setups: list[pb.RuntimeEnvSetupRequest] = []
        self.setup_reply: pb.RuntimeEnvSetup | None = None
        self.manager = JobManager(
            kv=Stub(self.kv),
            jobs=Stub(self.table),
            setup_runtime_env=self.setup,
            gcs_address="127.0.0.1:1",
            token="tok",
            log_dir=str(tmp_path / "logs"),
            node_id="ab" * 14,
            stop_grace_s=1.0,
        )

    async def setup(self, request: pb.RuntimeEnvSetupRequest) -> pb.RuntimeEnvSetup:
        self.setups.append(request)
        if self.setup_reply is not None:
            return self.setup_reply
        env = dict(request.base_env)
        env["FROM_ENV"] = "yes"
        return pb.RuntimeEnvSetup(python=PY, cwd=str(Path(self.manager.log_dir).parent), env=env)

    async def submit(self, entrypoint: str, **kw: Any) -> str:
        return await self.manager.submit_job(SubmitRequest.parse({"entrypoint": entrypoint, **kw}))

    async def wait_status(self, sid: str, *wanted: JobStatus) -> JobStatus:
        deadline = asyncio.get_running_loop().time() + DEADLINE_S
        while True:
            info = await self.manager.get_info(sid)
            assert info is not None
            if info.status in wanted:
                return info.status
            assert asyncio.get_running_loop().time() < deadline, f"{sid} stayed {info.status}"
            await asyncio.sleep(0.02)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    await c.manager.close()


async def test_a_job_runs_to_success_with_its_output_in_its_log(cluster: Cluster) -> None:
    sid = await cluster.submit(f"{PY} -c \"import os; print('hello', os.environ['{SUBMISSION_ID_ENV}'])\"")
    assert await cluster.wait_status(sid, JobStatus.SUCCEEDED) == JobStatus.SUCCEEDED
    assert f"hello {sid}" in await cluster.manager.get_logs(sid)
    info = await cluster.manager.get_info(sid)
    assert info is not None
    assert info.driver_exit_code == 0 and info.message == "Job finished successfully."
    assert info.start_time is not None and info.end_time is not None and info.end_time >= info.start_time
    assert info.driver_node_id == "ab" * 14
    # The record is in the GCS's KV, listed by its job table with the drivers.
    assert info_key(sid) in cluster.kv.kv
    (job,) = await cluster.manager.list_jobs()
    assert (job.submission_id, job.type, job.status, job.job_id) == (
        sid,
        JobType.SUBMISSION,
        "SUCCEEDED",
        None,
    )
    assert cluster.setups == []  # no runtime_env: the raylet is not asked


async def test_the_entrypoint_is_told_its_cluster(cluster: Cluster) -> None:
    sid = await cluster.submit(
        f'{PY} -c "import os; print([os.environ.get(k) for k in '
        f"('{ADDRESS_ENV}', '{process.TOKEN_ENV}', '{JOB_RUNTIME_ENV_ENV}', 'PYTHONUNBUFFERED')])\""
    )
    await cluster.wait_status(sid, JobStatus.SUCCEEDED)
    assert "['127.0.0.1:1', 'tok', None, '1']" in await cluster.manager.get_logs(sid)


async def test_the_runtime_env_is_set_up_by_the_raylet_and_applied(cluster: Cluster) -> None:
    env = {"env_vars": {"A": "1"}, "working_dir": "gcs://_ray_pkg_abc.zip"}
    sid = await cluster.submit(
        f"{PY} -c \"import os, json; print(os.environ['FROM_ENV'], os.getcwd(), "
        f"json.loads(os.environ['{JOB_RUNTIME_ENV_ENV}']))\"",
        runtime_env=env,
    )
    await cluster.wait_status(sid, JobStatus.SUCCEEDED)
    (request,) = cluster.setups
    assert request.runtime_env.serialized == '{"env_vars":{"A":"1"},"working_dir":"gcs://_ray_pkg_abc.zip"}'
    assert request.base_env[SUBMISSION_ID_ENV] == sid
    logs = await cluster.manager.get_logs(sid)
    assert f"yes {Path(cluster.manager.log_dir).parent} {env}" in logs


async def test_a_failed_runtime_env_fails_the_job(cluster: Cluster) -> None:
    cluster.setup_reply = pb.RuntimeEnvSetup(error="pip says no")
    sid = await cluster.submit("true", runtime_env={"env_vars": {"A": "1"}})
    await cluster.wait_status(sid, JobStatus.FAILED)
    info = await cluster.manager.get_info(sid)
    assert info is not None and info.error_type == "RUNTIME_ENV_SETUP_FAILURE"
    assert info.message == "runtime_env setup failed: pip says no"


async def test_a_nonzero_exit_fails_the_job_with_the_output_tail(cluster: Cluster) -> None:
    sid = await cluster.submit(f"{PY} -c \"import sys; print('last words'); sys.exit(3)\"")
    await cluster.wait_status(sid, JobStatus.FAILED)
    info = await cluster.manager.get_info(sid)
    assert info is not None and info.driver_exit_code == 3
    assert info.error_type == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert info.message is not None
    assert (
        info.message.startswith("Job entrypoint command failed with exit code 3")
        and "last words" in info.message
    )


async def test_stop_terminates_the_whole_process_group(cluster: Cluster, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A shell with a child that ignores nothing, and the shell itself waiting on it.
    script = f"{PY} -c \"import os,time; open('{pids}','w').write(str(os.getpid())); time.sleep(300)\" & wait"
    sid = await cluster.submit(script)
    await cluster.wait_status(sid, JobStatus.RUNNING)
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not pids.exists() or not pids.read_text():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    child = int(pids.read_text())
    assert await cluster.manager.stop_job(sid) is True
    assert await cluster.wait_status(sid, JobStatus.STOPPED) == JobStatus.STOPPED
    while not process.is_gone(child):
        assert asyncio.get_running_loop().time() < deadline, "the entrypoint's child survived the stop"
        await asyncio.sleep(0.02)
    assert await cluster.manager.stop_job(sid) is False  # ended already


async def test_a_term_ignoring_entrypoint_is_killed_after_the_grace_period(cluster: Cluster) -> None:
    code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(300)"
    sid = await cluster.submit(f'exec {PY} -c "{code}"')  # the process the stop signals first
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while "up" not in await cluster.manager.get_logs(sid):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    await cluster.manager.stop_job(sid)
    await cluster.wait_status(sid, JobStatus.STOPPED)
    info = await cluster.manager.get_info(sid)
    assert info is not None and info.driver_exit_code == -9


async def test_stopping_a_pending_job_never_starts_it(cluster: Cluster) -> None:
    gate = asyncio.Event()

    async def slow_setup(request: pb.RuntimeEnvSetupRequest) -> pb.RuntimeEnvSetup:
        await gate.wait()
        return pb.RuntimeEnvSetup(env=dict(request.base_env))

    cluster.manager._setup_runtime_env = slow_setup
    sid = await cluster.submit("echo started", runtime_env={"env_vars": {"A": "1"}})
    assert (await cluster.manager.get_info(sid)).status == JobStatus.PENDING  # type: ignore[union-attr]
    assert await cluster.manager.stop_job(sid) is True
    await cluster.wait_status(sid, JobStatus.STOPPED)
    assert await cluster.manager.get_logs(sid) == ""


async def test_tail_follows_the_output_until_the_job_ends(cluster: Cluster) -> None:
    code = "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.2)\nprint('é' * 3)"
    sid = await cluster.submit(f'{PY} -c "{code}"')
    got = "".join([text async for text in await cluster.manager.tail_logs(sid)])
    assert got == "line 0\nline 1\nline 2\nééé\n"
    assert (await cluster.manager.get_info(sid)).status == JobStatus.SUCCEEDED  # type: ignore[union-attr]


async def test_duplicate_ids_unknown_ids_and_delete(cluster: Cluster) -> None:
    sid = await cluster.submit("echo one", submission_id="mine")
    assert sid == "mine"
    with pytest.raises(BadJobRequestError, match="already exists"):
        await cluster.submit("echo two", submission_id="mine")
    with pytest.raises(JobNotFoundError, match="Job nope does not exist"):
        await cluster.manager.get_job("nope")
    with pytest.raises(JobNotFoundError):
        await cluster.manager.stop_job("nope")
    long = await cluster.submit(f'{PY} -c "import time; time.sleep(300)"')
    await cluster.wait_status(long, JobStatus.RUNNING)
    with pytest.raises(BadJobRequestError, match="non-terminal"):
        await cluster.manager.delete_job(long)
    await cluster.wait_status(sid, JobStatus.SUCCEEDED)
    assert _exists(cluster.manager.log_path(sid))
    assert await cluster.manager.delete_job(sid) is True
    assert not _exists(cluster.manager.log_path(sid)) and info_key(sid) not in cluster.kv.kv
    assert [j.submission_id for j in await cluster.manager.list_jobs()] == [long]


async def test_a_driver_registered_by_the_entrypoint_is_linked_and_finished(cluster: Cluster) -> None:
    sid = await cluster.submit(f'{PY} -c "import time; time.sleep(300)"')
    await cluster.wait_status(sid, JobStatus.RUNNING)
    from aioray._private.common import versions

    reply = await cluster.table.register_job(
        pb.RegisterJobRequest(
            driver_address="127.0.0.1:5", driver_pid=7, version=versions.build_version(), submission_id=sid
        )
    )
    other = await cluster.table.register_job(
        pb.RegisterJobRequest(driver_address="127.0.0.1:6", driver_pid=8, version=versions.build_version())
    )
    jobs = {j.job_id: j for j in await cluster.manager.list_jobs()}
    linked = jobs[reply.job_id.hex()]
    assert (
        linked.submission_id == sid
        and linked.type == JobType.SUBMISSION
        and linked.status == JobStatus.RUNNING
    )
    assert linked.driver_info is not None and linked.driver_info.pid == "7"
    assert jobs[other.job_id.hex()].type == JobType.DRIVER
    assert (await cluster.manager.get_job(reply.job_id.hex())).submission_id == sid  # by either id
    await cluster.manager.stop_job(sid)
    await cluster.wait_status(sid, JobStatus.STOPPED)
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while reply.job_id in cluster.table.jobs:  # the driver that never said goodbye is finished for it
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert other.job_id in cluster.table.jobs


async def test_a_restarted_manager_fails_what_the_previous_one_left_running(
    cluster: Cluster, tmp_path: Path
) -> None:
    sid = await cluster.submit(f'{PY} -c "import time; time.sleep(300)"')
    await cluster.wait_status(sid, JobStatus.RUNNING)
    run = cluster.manager.runs[sid]
    assert run.proc is not None
    pid = run.proc.pid
    successor = JobManager(
        kv=Stub(cluster.kv),
        jobs=Stub(cluster.table),
        setup_runtime_env=cluster.setup,
        gcs_address="127.0.0.1:1",
        token="tok",
        log_dir=cluster.manager.log_dir,
    )
    assert await successor.recover() == 1
    info = await successor.get_info(sid)
    assert info is not None and info.status == JobStatus.FAILED and "restarted" in (info.message or "")
    await cluster.wait_status(sid, JobStatus.STOPPED, JobStatus.FAILED)
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not process.is_gone(pid):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([], "JSON object"),
        ({}, "'entrypoint' must be a non-empty"),
        ({"entrypoint": "  "}, "'entrypoint' must be a non-empty"),
        ({"entrypoint": "x", "submission_id": "../etc"}, "'submission_id' must be"),
        ({"entrypoint": "x", "bogus": 1}, "unknown field"),
        ({"entrypoint": "x", "runtime_env": {"working_dir": "/home/me/proj"}}, "not an uploaded package"),
        ({"entrypoint": "x", "runtime_env": {"env_vars": {"A": 1}}}, "env_vars"),
        ({"entrypoint": "x", "metadata": {"a": 1}}, "'metadata' must map strings"),
        ({"entrypoint": "x", "entrypoint_num_cpus": -1}, "'entrypoint_num_cpus' must be a number"),
        ({"entrypoint": "x", "entrypoint_resources": {"CPU": 1}}, "entrypoint_num_cpus"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(body: Any, error: str) -> None:
    with pytest.raises(BadJobRequestError, match=error):
        SubmitRequest.parse(body)


def test_a_request_in_rays_shape_is_taken() -> None:
    req = SubmitRequest.parse(
        {
            "entrypoint": "python x.py",
            "job_id": "old-name",
            "runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip", "env_vars": {"A": "b"}},
            "metadata": {"owner": "me"},
            "entrypoint_num_cpus": 1,
            "entrypoint_resources": {"accel": 0.5},
        }
    )
    assert req.submission_id == "old-name"
    assert req.resources() == {"CPU": 1.0, "accel": 0.5}
