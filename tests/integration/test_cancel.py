"""Cancellation: pending, running, nested and forced tasks, async actor methods, and cancelled awaiters."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import aioray
from aioray.exceptions import TaskCancelledError

from .conftest import eventually


@aioray.remote
def ticker(path: str, seconds: float = 30) -> str:
    """Appends a line to `path` every 20 ms: a side effect that shows whether it still runs."""
    end = time.time() + seconds
    while time.time() < end:
        with open(path, "a") as f:
            f.write(".")
        time.sleep(0.02)
    return "finished"


def _size(path) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def _stopped(path) -> bool:
    before = _size(path)
    time.sleep(0.3)
    return _size(path) == before


@pytest.fixture(scope="module")
def one_cpu():
    aioray.init(num_cpus=1, object_store_memory=64 << 20)
    try:
        yield aioray
    finally:
        aioray.shutdown()


def test_cancel_pending_task(one_cpu, tmp_path) -> None:
    busy = ticker.remote(str(tmp_path / "busy"), 2)
    queued = ticker.remote(str(tmp_path / "queued"), 2)  # waits for the only CPU
    aioray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        aioray.get(queued, timeout=30)
    assert aioray.get(busy, timeout=30) == "finished"
    assert _size(tmp_path / "queued") == 0, "the cancelled task never ran"


def test_cancel_running_task(one_cpu, tmp_path) -> None:
    path = tmp_path / "running"
    ref = ticker.remote(str(path))
    eventually(lambda: _size(path) > 0, 30, "the task starting")
    aioray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        aioray.get(ref, timeout=30)
    assert _stopped(path), "the task kept running after cancel"
    # The worker survives an interrupt and runs the next task.
    assert aioray.get(ticker.remote(str(tmp_path / "next"), 0.05), timeout=30) == "finished"


def test_cancel_is_recursive(one_cpu, tmp_path) -> None:
    child_path = tmp_path / "child"

    @aioray.remote(num_cpus=0)
    def parent(path):
        return aioray.get(ticker.remote(path))

    ref = parent.remote(str(child_path))
    eventually(lambda: _size(child_path) > 0, 30, "the child task starting")
    aioray.cancel(ref, recursive=True)
    with pytest.raises(TaskCancelledError):
        aioray.get(ref, timeout=30)
    eventually(lambda: _stopped(child_path), 10, "the child task stopping")


def test_force_cancel_kills_a_task_stuck_in_c_code(one_cpu, tmp_path) -> None:
    @aioray.remote(max_retries=3)
    def stuck(path):
        open(path, "w").close()
        time.sleep(1000)  # not interruptible by KeyboardInterrupt until it returns

    marker = tmp_path / "stuck"
    ref = stuck.remote(str(marker))
    eventually(marker.exists, 30, "the task starting")
    aioray.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        aioray.get(ref, timeout=30)
    # Never retried, even with retries left.
    marker.unlink()
    time.sleep(0.5)
    assert not marker.exists()


def test_cancel_async_actor_method(one_cpu) -> None:
    @aioray.remote
    class Waiter:
        def __init__(self):
            self.started = 0
            self.cancelled = 0

        async def wait_forever(self):
            self.started += 1
            try:
                await asyncio.sleep(1000)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise

        async def count(self):
            return self.started, self.cancelled

    w = Waiter.remote()
    ref = w.wait_forever.remote()
    eventually(lambda: aioray.get(w.count.remote(), timeout=30)[0] == 1, 30, "the method starting")
    aioray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        aioray.get(ref, timeout=30)
    assert aioray.get(w.count.remote(), timeout=30) == (1, 1)
    with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
        aioray.cancel(w.wait_forever.remote(), force=True)


async def test_cancelled_awaiter_cancels_its_task(one_cpu, tmp_path) -> None:
    path = tmp_path / "awaited"

    async def awaits(ref):
        return await ref

    with pytest.raises(TimeoutError):  # the coroutine awaiting the ref is cancelled: so is the task
        await asyncio.wait_for(awaits(ticker.remote(str(path))), 1.0)
    await asyncio.to_thread(eventually, lambda: _stopped(path), 10, "the awaited task stopping")

    # Shielded, or still referenced by another pending task: the task goes on.
    shielded = tmp_path / "shielded"
    ref = ticker.remote(str(shielded), 1.5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(aioray.shield(ref), 0.5)
    assert await ref == "finished"


def test_cancel_interrupts_sleep_and_blocking_get(one_cpu, tmp_path) -> None:
    """Tasks run on their worker's main thread: the cancel's signal wakes them from a system call."""

    @aioray.remote
    def sleeps() -> None:
        time.sleep(600)

    @aioray.remote
    def waits_on(refs: list) -> None:
        aioray.get(refs[0])

    @aioray.remote
    class Never:
        async def answer(self) -> None:
            await asyncio.sleep(600)

    never = Never.remote()
    for ref in (sleeps.remote(), waits_on.remote([never.answer.remote()])):
        time.sleep(0.5)  # running, inside sleep / get
        start = time.monotonic()
        aioray.cancel(ref, recursive=False)
        with pytest.raises(TaskCancelledError):
            aioray.get(ref, timeout=30)
        assert time.monotonic() - start < 10
    aioray.kill(never)


def test_a_sync_actor_method_is_not_interrupted_but_sees_is_canceled(one_cpu, tmp_path) -> None:
    @aioray.remote
    class Careful:
        def __init__(self) -> None:
            self.steps = 0

        def work(self) -> str:
            while not aioray.get_runtime_context().is_canceled():
                self.steps += 1
                time.sleep(0.01)
            return "stopped cleanly"

        def steps_done(self) -> int:
            return self.steps

    a = Careful.options(max_concurrency=2).remote()  # a threaded actor: steps_done runs beside work
    ref = a.work.remote()
    eventually(lambda: _steps(a) > 3, 30, "the method running")
    aioray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        aioray.get(ref, timeout=30)
    # The actor's state survived the cancel, and it goes on serving calls.
    assert aioray.get(a.steps_done.remote(), timeout=30) > 3


def _steps(actor) -> int:
    steps: int = aioray.get(actor.steps_done.remote(), timeout=30)
    return steps


def test_is_canceled_outside_a_task_is_an_error(one_cpu) -> None:
    with pytest.raises(RuntimeError, match="inside a task"):
        aioray.get_runtime_context().is_canceled()

    @aioray.remote
    def not_cancelled() -> bool:
        return aioray.get_runtime_context().is_canceled()

    assert aioray.get(not_cancelled.remote(), timeout=30) is False
