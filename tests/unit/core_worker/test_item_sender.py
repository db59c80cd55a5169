"""ItemSender: items reach the owner in order, batched while a report is in flight; failures surface."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from aioray._private.core_worker.item_sender import ItemSender


def _run_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return loop, thread


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_items_arrive_in_order_in_batches() -> None:
    loop, thread = _run_loop()
    batches: list[list[int]] = []
    gate = threading.Event()

    async def send(batch: list[tuple[int, Any]]) -> None:
        batches.append([index for index, _ in batch])
        await asyncio.to_thread(gate.wait, 5)  # the first report is slow: the rest pile up

    try:
        sender = ItemSender(loop, send)
        for i in range(100):
            sender.put(i, ("ret", i))
        gate.set()
        sender.close()
    finally:
        _stop(loop, thread)
    assert [i for batch in batches for i in batch] == list(range(100))
    assert len(batches) < 100  # batched while the first report was in flight


def test_a_failed_report_reaches_the_producer() -> None:
    loop, thread = _run_loop()

    async def send(batch: list[tuple[int, Any]]) -> None:
        raise ConnectionError("the owner is gone")

    try:
        sender = ItemSender(loop, send)
        sender.put(0, ("ret",))
        with pytest.raises(ConnectionError, match="owner is gone"):
            sender.close()
    finally:
        _stop(loop, thread)
