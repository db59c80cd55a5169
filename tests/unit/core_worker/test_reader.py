"""The countdown that get/wait use over many futures."""

from __future__ import annotations

import asyncio

import pytest

from aioray._private.core_worker.reader import wait_some


async def test_wait_some_wakes_after_the_needed_count() -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(5)]
    futures[0].set_result(0)  # already done counts
    waiter = asyncio.ensure_future(wait_some(futures, 3))
    futures[1].set_result(1)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not waiter.done()
    futures[2].set_exception(ValueError("an error counts as done"))
    await asyncio.wait_for(waiter, 1)
    futures[2].exception()


async def test_wait_some_timeout_leaves_no_callbacks_behind() -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await wait_some(futures, 3)
    # The futures belong to the owner and outlive this wait: no countdown may stay attached to them.
    assert all(not fut._callbacks for fut in futures)  # type: ignore[attr-defined]


async def test_wait_some_stops_early_on_a_matching_future() -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    waiter = asyncio.ensure_future(wait_some(futures, 3, stop=lambda f: f.result() == "failed"))
    futures[0].set_result("ok")
    await asyncio.sleep(0)
    assert not waiter.done()
    futures[2].set_result("failed")
    await asyncio.wait_for(waiter, 1)
    assert not futures[1].done()  # the rest are left alone
    # A matching future that is already done returns at once.
    await asyncio.wait_for(wait_some(futures, 3, stop=lambda f: f.result() == "failed"), 1)
