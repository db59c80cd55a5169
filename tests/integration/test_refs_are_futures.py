"""ObjectRefs are asyncio futures where asyncio expects one (issue #14): wait, as_completed, gather,
shield, wait_for, ensure_future, callbacks, cancellation; run_until_complete outside a loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import aioray
from aioray.exceptions import TaskCancelledError

from .conftest import eventually


@aioray.remote
def echo(x: Any, delay: float = 0.0) -> Any:
    time.sleep(delay)
    return x


@aioray.remote(max_concurrency=4)
class Sleeper:
    def echo(self, x: Any, delay: float) -> Any:
        time.sleep(delay)
        return x


@aioray.remote
def fail() -> None:
    raise KeyError("no such key")


async def test_asyncio_wait_and_isfuture(ray: Any) -> None:
    refs = [echo.remote(i, 0.05 * i) for i in range(4)]
    assert all(asyncio.isfuture(r) for r in refs)
    done, pending = await asyncio.wait(refs, timeout=30)
    assert not pending
    assert sorted(r.result() for r in done) == [0, 1, 2, 3]
    first, rest = await asyncio.wait(
        [echo.remote("fast"), echo.remote("slow", 5)], return_when="FIRST_COMPLETED"
    )
    assert [r.result() for r in first] == ["fast"]
    assert len(rest) == 1
    aioray.cancel(rest.pop())  # frees its CPU for the next test


async def test_as_completed_gather_shield_ensure_future(ray: Any) -> None:
    sleeper = Sleeper.remote()  # a threaded actor: both calls run at once, whatever the CPUs do
    refs = [sleeper.echo.remote("slow", 1.5), sleeper.echo.remote("fast", 0.1)]
    assert [await f for f in asyncio.as_completed(refs)] == ["fast", "slow"]
    assert await asyncio.gather(*[echo.remote(i) for i in range(3)]) == [0, 1, 2]
    assert await asyncio.shield(echo.remote("shielded")) == "shielded"
    ref = echo.remote("same")
    assert asyncio.ensure_future(ref) is ref
    assert await asyncio.wait_for(echo.remote("in time"), 30) == "in time"
    async with asyncio.timeout(30):
        assert await echo.remote("timeout ctx") == "timeout ctx"
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(_await(echo.remote("in a group")))
    assert task.result() == "in a group"


async def _await(ref: Any) -> Any:
    return await ref


async def test_errors_through_the_future_protocol(ray: Any) -> None:
    ref = fail.remote()
    done, _ = await asyncio.wait([ref], timeout=30)
    assert done == {ref}
    assert isinstance(ref.exception(), KeyError)
    with pytest.raises(KeyError):
        ref.result()
    results = await asyncio.gather(fail.remote(), echo.remote(1), return_exceptions=True)
    assert isinstance(results[0], KeyError) and results[1] == 1
    fine = echo.remote(2)
    await asyncio.wait([fine], timeout=30)
    assert fine.exception() is None


async def test_result_before_ready_and_done_callbacks(ray: Any) -> None:
    ref = echo.remote("later", 0.5)
    assert not ref.done()
    with pytest.raises(asyncio.InvalidStateError):
        ref.result()
    seen: list[Any] = []
    ref.add_done_callback(lambda r: seen.append(r.result()))
    removed = echo.remote("never seen", 0.2)
    callback = seen.append
    removed.add_done_callback(callback)
    assert removed.remove_done_callback(callback) == 1
    await asyncio.wait([ref, removed], timeout=30)
    await asyncio.sleep(0)  # callbacks run on the next loop iteration
    assert seen == ["later"]
    assert ref.done() and not ref.cancelled()


async def test_wait_for_timeout_on_a_ref_leaves_the_task_but_on_a_coroutine_cancels_it(
    ray: Any, tmp_path: Any
) -> None:
    ref = echo.remote("still coming", 1.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ref, 0.1)
    assert ref.cancelled()  # its future on this loop; the task runs on, as in Ray
    assert await ref == "still coming"

    path = tmp_path / "ticks"

    @aioray.remote
    def ticks(p: str) -> None:
        while True:
            with open(p, "a") as f:
                f.write(".")
            time.sleep(0.02)

    ticking = ticks.remote(str(path))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_await(ticking), 1)  # the awaiting coroutine is cancelled
    with pytest.raises(TaskCancelledError):
        aioray.get(ticking, timeout=30)  # ...and the task with it: nothing else needed it
    size = path.stat().st_size
    eventually(lambda: path.stat().st_size == size, 5, "the task stopping")


async def test_cancelling_a_refs_future_leaves_the_task(ray: Any) -> None:
    ref = echo.remote("kept", 1)
    assert ref.cancel()
    assert ref.cancelled()
    with pytest.raises(asyncio.CancelledError):
        ref.result()
    assert await ref == "kept"


async def test_readiness_does_not_read_the_value(ray: Any) -> None:
    big = aioray.put(b"x" * (8 << 20))
    done, _ = await asyncio.wait([big], timeout=30)
    assert done == {big}  # ready: in the store; reading it is `result()`'s business
    assert len(big.result()) == 8 << 20


def test_run_until_complete_outside_a_loop(ray: Any) -> None:
    ref = echo.remote("sync")
    assert not asyncio.isfuture(ref)  # no running loop: an awaitable, wrapped in a task
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(ref) == "sync"
    finally:
        loop.close()
    assert ref.done()
