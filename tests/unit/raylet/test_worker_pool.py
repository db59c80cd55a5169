"""The worker pool starts a few workers at a time: a burst of them starved a small node until it was
declared dead (100 actors created at once on 2 cores, benches/actor_scale.py)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from aioray._private.raylet import worker_pool

_pids = itertools.count(1_000_000)


class FakeProc:
    """What the pool uses of an `asyncio.subprocess.Process`; it exits when killed."""

    def __init__(self) -> None:
        self.pid = next(_pids)
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        return await self._exited

    def kill(self) -> None:
        if not self._exited.done():
            self.returncode = -9
            self._exited.set_result(-9)

    terminate = kill


def fake_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[worker_pool.WorkerPool, list[FakeProc], list[asyncio.Future[None]]]:
    """A pool whose workers are `FakeProc`s; the processes it spawned and its background tasks."""
    spawned: list[FakeProc] = []

    async def fake_exec(*args: Any, **kwargs: Any) -> FakeProc:
        spawned.append(FakeProc())
        return spawned[-1]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", fake_exec)
    tasks: list[asyncio.Future[None]] = []
    pool = worker_pool.WorkerPool(
        lambda: {}, lambda c: tasks.append(asyncio.ensure_future(c)), lambda w, c: None
    )
    return pool, spawned, tasks


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_workers_start_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(worker_pool.STARTUP_CONCURRENCY_ENV, "2")
    pool, spawned, tasks = fake_pool(monkeypatch)
    pool.start(5)
    assert pool.starting == 5  # all counted as starting at once: the dispatcher starts no more for them
    await settle()
    assert len(spawned) == 2  # only two processes, until one registers

    registered = 0
    while registered < 5:
        waiting = [w for w in pool.workers.values() if not w.registered.done()]
        assert len(waiting) <= 2
        assert pool.register(waiting[0].worker_id, f"127.0.0.1:{10_000 + registered}") is not None
        registered += 1
        await settle()
        assert len(spawned) == min(5, registered + 2)
    assert pool.starting == 0 and len(pool.idle) == 5

    for proc in spawned:
        proc.kill()
    await asyncio.gather(*tasks)


async def test_a_start_cancelled_while_it_waits_is_no_longer_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(worker_pool.STARTUP_CONCURRENCY_ENV, "1")
    pool, spawned, tasks = fake_pool(monkeypatch)
    pool.start(3)
    await settle()
    assert len(spawned) == 1
    for task in tasks[1:3]:  # the two starts that wait (tasks[3:] watch the running worker)
        task.cancel()
    await settle()
    assert pool.starting == 1  # the one that runs; the two that waited are no longer counted
    for proc in spawned:
        proc.kill()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert pool.starting == 0


async def test_a_worker_is_no_longer_starting_once_it_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatch that follows a registration gives the new worker away: still counted as starting
    there, it stood for demand it no longer met, no worker was started for that demand, and nothing
    dispatched again (a task waited for ever with the node's CPUs free)."""
    pool, spawned, tasks = fake_pool(monkeypatch)
    pool.start(1)
    await settle()
    (worker,) = pool.workers.values()
    assert pool.register(worker.worker_id, "127.0.0.1:10000") is worker
    assert (pool.starting, pool.starting_for("")) == (0, 0)  # at once, before the starter resumes
    await settle()
    assert (pool.starting, pool.starting_for("")) == (0, 0)  # and not counted down twice
    for proc in spawned:
        proc.kill()
    await asyncio.gather(*tasks)
