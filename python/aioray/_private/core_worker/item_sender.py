"""Sends a generator task's items to their owner: in order, batched while a report is in flight.

The producer (the task's thread) hands each item over and goes on at once, up to a window of items
not yet answered by the owner; the sender, on the core loop, reports whatever accumulated as one
batch, waits for the answer, and goes on. A task with backpressure reports item by item instead
(`Executor._stream`), so that it pauses exactly where the owner says.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

# Items produced ahead of the owner's answers, at most: what a slow owner can make a worker hold.
WINDOW = 256

Batch = list[tuple[int, tuple[Any, ...]]]


class ItemChannel(Protocol):
    """Where a generator task's items go when its owner's task channel carries them
    (`task_channel.WorkerEnd`); on the core loop."""

    def send_items(self, task_id: bytes, batch: list[tuple[int, tuple[Any, ...]]]) -> None: ...
    async def drained(self) -> None: ...


class ItemSender:
    """One generator task's items on their way. `put` and `close` are called from the producer's
    thread (not the core loop); `close` returns once the owner has every item."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[Batch], Awaitable[None]]) -> None:
        self._loop = loop
        self._send = send
        self._slots = threading.Semaphore(WINDOW)
        self._buffer: Batch = []
        self._closed = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def put(self, index: int, ret: tuple[Any, ...]) -> None:
        while not self._slots.acquire(timeout=0.5):
            self._raise_if_failed()
        self._raise_if_failed()
        self._loop.call_soon_threadsafe(self._add, (index, ret))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._add, None)
        self._done.result()

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    # -- on the core loop ------------------------------------------------------------------------
    def _add(self, entry: tuple[int, tuple[Any, ...]] | None) -> None:
        if entry is None:
            self._closed = True
        else:
            self._buffer.append(entry)
        if self._wake is None:
            self._wake = asyncio.Event()
            self._task = self._loop.create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        try:
            while self._buffer or not self._closed:
                if not self._buffer:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch, self._buffer = self._buffer, []
                await self._send(batch)
                for _ in batch:
                    self._slots.release()
        except BaseException as e:  # the owner is gone, or the loop closes: the producer hears of it
            self._failed = e
            self._done.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        self._done.set_result(None)
