"""Calls about one placement group stay in order when some are not waited for
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


def _calls() -> tuple[OrderedCalls, Runtime]:
    runtime = Runtime(asyncio.get_running_loop(), "token", "gcs:1", "raylet:1")
    runtime.loop_thread_id = threading.get_ident()
    return OrderedCalls(runtime), runtime


def _recording(
    log: list[str], name: str, delay: float = 0.0, error: Exception | None = None
) -> Callable[[], Coroutine[Any, Any, str]]:
    async def call() -> str:
        log.append(f"{name} started")
        await asyncio.sleep(delay)
        if error is not None:
            raise error
        log.append(f"{name} done")
        return name

    return call


async def test_a_call_waits_for_the_ones_sent_before_it_about_the_same_group() -> None:
    calls, _ = _calls()
    log: list[str] = []
    calls.send(GROUP, _recording(log, "create", delay=0.05), "creating")
    calls.send(b"other" * 4, _recording(log, "unrelated"), "unrelated")
    assert calls.pending(GROUP)
    assert await calls.run(GROUP, _recording(log, "wait")) == "wait"
    assert log.index("create done") < log.index("wait started")
    assert log.index("unrelated done") < log.index("create done")  # another group does not wait
    await calls.flush(1.0)
    assert not calls.pending(GROUP)


async def test_a_failed_call_fails_the_calls_after_it_and_is_logged_when_not_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls, _ = _calls()
    log: list[str] = []
    with caplog.at_level(logging.ERROR, logger="aioray.core_worker"):
        calls.send(GROUP, _recording(log, "create", error=ConnectionError("the GCS is gone")), "creating g")
        with pytest.raises(ConnectionError, match="the GCS is gone"):
            await calls.run(GROUP, _recording(log, "wait"))
        await calls.flush(1.0)
    assert "wait started" not in log
    assert "creating g failed: the GCS is gone" in caplog.text
    # Once it ended, a new call about the group goes ahead.
    assert await calls.run(GROUP, _recording(log, "again")) == "again"


async def test_waiting_for_all_and_for_one_group() -> None:
    calls, _ = _calls()
    log: list[str] = []
    calls.send(GROUP, _recording(log, "remove", delay=0.05), "removing")
    calls.send(b"h" * 18, _recording(log, "create", delay=0.02), "creating")
    await asyncio.sleep(0)  # the sends start on the loop
    await calls.wait_for_all()
    assert {"remove done", "create done"} <= set(log)
    calls.send(GROUP, _recording(log, "second", error=ValueError("no")), "second")
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="no"):
        await calls.wait_for(GROUP)


async def test_closing_waits_for_what_is_under_way_and_gives_up_on_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls, _ = _calls()
    log: list[str] = []
    calls.send(GROUP, _recording(log, "quick", delay=0.01), "quick")
    calls.send(b"h" * 18, _recording(log, "stuck", delay=60), "stuck")
    with caplog.at_level(logging.ERROR, logger="aioray.core_worker"):
        await calls.flush(0.2)
    assert "quick done" in log and "stuck done" not in log
    assert "1 placement group call(s) did not end" in caplog.text


async def test_a_send_from_another_thread_is_ordered_before_a_call_made_after_it() -> None:
    calls, runtime = _calls()
    log: list[str] = []
    loop = asyncio.get_running_loop()

    def from_a_thread() -> str:
        calls.send(GROUP, _recording(log, "create", delay=0.02), "creating")
        assert calls.pending(GROUP)  # already, before the loop took it
        result: str = asyncio.run_coroutine_threadsafe(
            calls.run(GROUP, _recording(log, "wait")), loop
        ).result(5)
        return result

    runtime.loop_thread_id = threading.get_ident()
    assert await asyncio.to_thread(from_a_thread) == "wait"
    assert log == ["create started", "create done", "wait started", "wait done"]
