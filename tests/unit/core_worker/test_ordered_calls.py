"""Placement group changes sent without waiting, and the reads that must see them
(core_worker/ordered_calls.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from aioray._private.core_worker.ordered_calls import OrderedCalls
from aioray._private.core_worker.runtime import Runtime

GROUP = b"g" * 18
OTHER = b"h" * 18


def _calls() -> OrderedCalls:
    runtime = Runtime(asyncio.get_running_loop(), "token", "gcs:1", "raylet:1")
    runtime.loop_thread_id = threading.get_ident()
    return OrderedCalls(runtime)


def _change(
    log: list[str], name: str, delay: float = 0.0, error: Exception | None = None
) -> Callable[[], Coroutine[Any, Any, None]]:
    async def call() -> None:
        log.append(f"{name} started")
        await asyncio.sleep(delay)
        if error is not None:
            raise error
        log.append(f"{name} done")

    return call


async def test_changes_about_a_group_go_in_order_and_reads_wait_for_them() -> None:
    calls = _calls()
    log: list[str] = []
    calls.send(GROUP, _change(log, "create", delay=0.05), "creating")
    calls.send(OTHER, _change(log, "unrelated"), "unrelated")
    calls.send(GROUP, _change(log, "remove"), "removing")
    assert calls.pending(GROUP)
    await calls.settled(GROUP)
    assert log.index("create done") < log.index("remove started")
    assert log.index("unrelated done") < log.index("create done")  # another group does not wait
    assert not calls.pending(GROUP)


async def test_a_failed_change_is_logged_raised_by_later_reads_and_does_not_stop_the_next_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = _calls()
    log: list[str] = []
    with caplog.at_level(logging.ERROR, logger="aioray.core_worker"):
        calls.send(GROUP, _change(log, "create", error=ConnectionError("the GCS is gone")), "creating g")
        with pytest.raises(ConnectionError, match="the GCS is gone"):
            await calls.settled(GROUP)
        with pytest.raises(ConnectionError):  # again: the group was never created
            await calls.settled(GROUP)
    assert "creating g failed: the GCS is gone" in caplog.text
    calls.send(GROUP, _change(log, "remove"), "removing")  # sent all the same
    await calls.settled(GROUP)  # and it went well: nothing to raise now
    assert "remove done" in log


async def test_a_read_does_not_hold_up_the_changes_after_it() -> None:
    calls = _calls()
    log: list[str] = []
    reader_may_finish = asyncio.Event()

    async def long_read() -> None:
        await calls.settled(GROUP)
        await reader_may_finish.wait()  # as pg.wait() on a group that does not fit

    reader = asyncio.create_task(long_read())
    await asyncio.sleep(0)
    calls.send(GROUP, _change(log, "remove"), "removing")
    await asyncio.wait_for(calls.settled(GROUP), 1)
    assert "remove done" in log and not reader.done()
    reader_may_finish.set()
    await reader


async def test_all_settled_waits_for_every_group() -> None:
    calls = _calls()
    log: list[str] = []
    calls.send(GROUP, _change(log, "remove", delay=0.05), "removing")
    calls.send(OTHER, _change(log, "create", delay=0.02, error=ValueError("no")), "creating")
    await calls.all_settled()  # the failure belongs to the reads of its own group
    assert "remove done" in log and "create started" in log


async def test_a_change_cancelled_early_still_keeps_the_ones_after_it_behind_the_ones_before() -> None:
    calls = _calls()
    log: list[str] = []
    calls.send(GROUP, _change(log, "first", delay=0.1), "first")
    calls.send(GROUP, _change(log, "second"), "second")
    calls.send(GROUP, _change(log, "third"), "third")
    await asyncio.sleep(0.01)
    [second] = [t for t in calls._background if t.get_coro().cr_frame.f_locals["what"] == "second"]  # type: ignore[union-attr]
    second.cancel()  # as at close, while it waits for the first
    await calls.settled(GROUP)
    assert log.index("first done") < log.index("third started") and "second started" not in log
    assert not calls.pending(GROUP)


async def test_closing_waits_for_what_is_under_way(caplog: pytest.LogCaptureFixture) -> None:
    calls = _calls()
    log: list[str] = []
    calls.send(GROUP, _change(log, "quick", delay=0.01), "quick")
    calls.send(OTHER, _change(log, "stuck", delay=60), "stuck")
    with caplog.at_level(logging.ERROR, logger="aioray.core_worker"):
        await calls.flush(0.2)
    assert "quick done" in log and "stuck done" not in log
    assert "1 placement group change(s) did not end" in caplog.text
    for task in list(calls._background):
        task.cancel()


async def test_a_change_sent_from_another_thread_is_seen_by_a_read_made_after_it() -> None:
    calls = _calls()
    log: list[str] = []
    loop = asyncio.get_running_loop()

    def from_a_thread() -> None:
        calls.send(GROUP, _change(log, "create", delay=0.02), "creating")
        assert calls.pending(GROUP)  # already, before the loop took it
        asyncio.run_coroutine_threadsafe(calls.settled(GROUP), loop).result(5)
        log.append("read")

    await asyncio.to_thread(from_a_thread)
    assert log == ["create started", "create done", "read"]
