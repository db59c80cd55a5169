"""Ray's asyncio semantics in the driver (test_asyncio.py): awaiting refs of tasks and actor calls,
`asyncio.gather` over refs, `future()`/`as_future()`, errors, a cancelled wait, and awaiting twice."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

import aioray
from aioray.exceptions import RayActorError, RayTaskError
from aioray.testing import SignalActor


@aioray.remote
def one():
    return 1


@aioray.remote
def echo(x):
    return x


@aioray.remote
def divide_by_zero():
    return 1 / 0


@aioray.remote
class Actor:
    def echo(self, i):
        return i

    def big(self, n):
        return "a" * n

    def throw(self):
        return 1 / 0


async def test_await_task_refs(ray) -> None:
    assert await one.remote() == 1
    with pytest.raises(RayTaskError):
        await divide_by_zero.remote()
    with pytest.raises(ZeroDivisionError):
        await divide_by_zero.remote()


async def test_await_actor_calls_small_and_large(ray) -> None:
    a = Actor.remote()
    assert await a.echo.remote(2) == 2
    size = 200 * 1024  # above the size Ray returns inline
    assert await a.big.remote(size) == "a" * size
    with pytest.raises(ZeroDivisionError):
        await a.throw.remote()


async def test_await_put_refs_and_refs_inside_results(ray) -> None:
    ref = ray.put({"k": [1, 2]})
    assert await ref == {"k": [1, 2]}
    inner = ray.put(7)
    outer = echo.remote([inner])
    got = await outer
    assert isinstance(got[0], aioray.ObjectRef)
    assert await got[0] == 7


async def test_gather_over_refs(ray) -> None:
    refs = [echo.remote(i) for i in range(10)]
    assert list(await asyncio.gather(*refs)) == list(range(10))
    results = await asyncio.gather(one.remote(), divide_by_zero.remote(), return_exceptions=True)
    assert results[0] == 1 and isinstance(results[1], ZeroDivisionError)


async def test_future_gives_a_concurrent_future(ray) -> None:
    fut = echo.remote(3).future()
    assert isinstance(fut, concurrent.futures.Future)
    assert await asyncio.wrap_future(fut) == 3
    assert echo.remote(4).future().result(timeout=30) == 4
    with pytest.raises(ZeroDivisionError):
        divide_by_zero.remote().future().result(timeout=30)


async def test_as_future_gives_an_asyncio_future(ray) -> None:
    fut = echo.remote(5).as_future()
    assert isinstance(fut, asyncio.Future)
    assert await fut == 5


async def test_await_after_a_timed_out_wait_and_awaiting_twice(ray) -> None:
    signal = SignalActor.remote()
    waiting = signal.wait.remote()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.wrap_future(waiting.future()), timeout=0.1)
    await signal.send.remote()
    assert await waiting is None
    assert await waiting is None


async def test_await_a_ref_twice_after_wait_for_on_the_ref_itself(ray) -> None:
    signal = SignalActor.remote()
    waiting = signal.wait.remote()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(waiting, timeout=0.1)
    # Ray: timing out an await does not cancel the task behind the ref, which the driver still holds.
    await signal.send.remote()
    assert await waiting is None
    assert await waiting is None


async def test_await_on_a_killed_actor_raises_actor_error(ray) -> None:
    a = Actor.remote()
    assert await a.echo.remote(1) == 1
    ray.kill(a)
    with pytest.raises(RayActorError):
        await a.echo.remote(1)


async def test_driver_coroutines_and_refs_interleave(ray) -> None:
    signal = SignalActor.remote()

    @ray.remote
    def gated(x):
        aioray.get(signal.wait.remote())
        return x

    order = []

    async def waiter():
        value = await gated.remote("done")
        order.append(value)

    async def releaser():
        await asyncio.sleep(0.2)
        order.append("release")
        await signal.send.remote()

    await asyncio.wait_for(asyncio.gather(waiter(), releaser()), timeout=30)
    assert order == ["release", "done"]


def test_get_inside_a_running_event_loop_thread_still_works_from_a_worker_thread(ray) -> None:
    async def main():
        return await asyncio.to_thread(ray.get, echo.remote(9), timeout=30)

    assert asyncio.run(main()) == 9
