"""aioray.testing: the cluster fixtures, SignalActor, Semaphore and wait_for_condition, as a user's tests use them."""

# ruff: noqa: F811  (test arguments named as the fixtures imported to register them)

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import aioray
from aioray.testing import (  # the fixtures register by being imported
    Semaphore,
    SignalActor,
    aioray_cluster,  # noqa: F401
    aioray_shutdown_only,  # noqa: F401
    async_wait_for_condition,
    wait_for_condition,
)


@aioray.remote
def wait_then(signal, value):
    aioray.get(signal.wait.remote())
    return value


@aioray.remote
class Holder:
    def __init__(self, sema):
        self.sema = sema

    def hold(self):
        aioray.get(self.sema.acquire.remote())
        return "held"


def test_fixture_starts_a_one_cpu_cluster(aioray_cluster) -> None:
    assert aioray.is_initialized()
    assert aioray.cluster_resources()["CPU"] == 1
    assert aioray_cluster["address"].startswith("127.0.0.1:")  # what init() returned: the GCS address


@pytest.mark.parametrize("aioray_cluster", [{"num_cpus": 3, "resources": {"custom": 2}}], indirect=True)
def test_fixture_takes_init_arguments(aioray_cluster) -> None:
    resources = aioray.cluster_resources()
    assert resources["CPU"] == 3 and resources["custom"] == 2


def test_fixture_shut_down_after_the_test() -> None:
    assert not aioray.is_initialized()


def test_signal_holds_a_task_until_sent(aioray_cluster) -> None:
    signal = SignalActor.remote()
    ref = wait_then.remote(signal, 42)
    # The signal actor needs no CPU: the one CPU runs the waiting task.
    wait_for_condition(lambda: aioray.get(signal.cur_num_waiters.remote()) == 1)
    ready, _ = aioray.wait([ref], timeout=0.3)
    assert ready == []
    aioray.get(signal.send.remote())
    assert aioray.get(ref, timeout=10) == 42
    assert aioray.get(signal.cur_num_waiters.remote()) == 0
    # Sent stays sent: a later wait returns at once; should_wait=False never waits.
    aioray.get(signal.wait.remote(), timeout=10)


@pytest.mark.parametrize("aioray_cluster", [{"num_cpus": 2}], indirect=True)
def test_send_with_clear_wakes_the_waiters_and_resets(aioray_cluster) -> None:
    signal = SignalActor.remote()
    refs = [wait_then.remote(signal, i) for i in range(2)]
    wait_for_condition(lambda: aioray.get(signal.cur_num_waiters.remote()) == 2)
    aioray.get(signal.send.remote(clear=True))
    assert aioray.get(refs, timeout=10) == [0, 1]
    later = signal.wait.remote()
    assert aioray.wait([later], timeout=0.3)[0] == []
    aioray.get(signal.wait.remote(should_wait=False), timeout=10)
    aioray.get(signal.send.remote())
    aioray.get(later, timeout=10)


async def test_signal_from_an_async_test(aioray_cluster) -> None:
    signal = SignalActor.remote()
    waiter = signal.wait.remote()
    await async_wait_for_condition(lambda: signal.cur_num_waiters.remote(), retry_interval_ms=20)
    assert await signal.cur_num_waiters.remote() == 1
    await signal.send.remote()
    await waiter


def test_semaphore(aioray_cluster) -> None:
    sema = Semaphore.remote(value=1)
    assert aioray.get(sema.locked.remote()) is False
    aioray.get(sema.acquire.remote())
    assert aioray.get(sema.locked.remote()) is True
    holder = Holder.remote(sema)
    pending = holder.hold.remote()  # blocks: no unit is free
    assert aioray.wait([pending], timeout=0.3)[0] == []
    aioray.get(sema.release.remote())
    assert aioray.get(pending, timeout=10) == "held"
    assert aioray.get(sema.locked.remote()) is True


def test_shutdown_only(aioray_shutdown_only) -> None:
    aioray.init(num_cpus=1, object_store_memory=64 << 20)
    assert aioray.is_initialized()


def test_wait_for_condition() -> None:
    calls = []

    def third_time(step):
        calls.append(step)
        return len(calls) >= 3

    wait_for_condition(third_time, timeout=5, retry_interval_ms=1, step=1)
    assert calls == [1, 1, 1]

    def broken():
        raise ValueError("not yet")

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="not yet"):
        wait_for_condition(broken, timeout=0.2, retry_interval_ms=10)
    assert time.monotonic() - start < 2
    with pytest.raises(ValueError):
        wait_for_condition(broken, timeout=5, raise_exceptions=True)
    with pytest.raises(RuntimeError, match="wasn't met"):
        wait_for_condition(lambda: False, timeout=0.1, retry_interval_ms=10)


async def test_async_wait_for_condition() -> None:
    async def never():
        return False

    with pytest.raises(RuntimeError, match="wasn't met"):
        await async_wait_for_condition(never, timeout=0.1, retry_interval_ms=10)


def test_import_aioray_does_not_import_pytest() -> None:
    code = "import sys, aioray; assert 'pytest' not in sys.modules and 'aioray.testing' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_plugin_and_the_module_scoped_fixture(tmp_path) -> None:
    """In a user's project: ``pytest_plugins = ["aioray.testing"]`` in the root conftest, and one
    cluster shared by a module's tests, parametrized indirectly."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["aioray.testing"]\n')
    (tmp_path / "test_user.py").write_text(
        "import pytest\n"
        "import aioray\n"
        "seen = []\n"
        "two_cpus = pytest.mark.parametrize('aioray_cluster_shared', [{'num_cpus': 2}], indirect=True)\n"
        "@two_cpus\n"
        "def test_one(aioray_cluster_shared):\n"
        "    seen.append(aioray_cluster_shared['address'])\n"
        "    assert aioray.cluster_resources()['CPU'] == 2\n"
        "@two_cpus\n"
        "def test_two(aioray_cluster_shared):\n"
        "    assert seen == [aioray_cluster_shared['address']]\n"
        "def test_multinode_fixture(aioray_start_cluster):\n"
        "    aioray_start_cluster.add_node(num_cpus=1)\n"
        "    aioray_start_cluster.wait_for_nodes()\n"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout
