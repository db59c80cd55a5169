"""Calls about one thing (a placement group) kept in the order they were made, some not waited for.

``placement_group()`` and ``remove_placement_group()`` return without waiting for the GCS's
answer (Ray's return once the GCS answered): a driver creating and removing groups one after
another then costs the GCS's work, not a round trip each, and the GCS places the groups that
arrive together in one call to the raylet. What a program can see stays the same because every
call this process makes about a group goes through here and waits for the one made before it:
``pg.wait()`` right after ``placement_group()`` asks once the GCS has the group, the table read
after a removal shows REMOVED. A call that failed fails the ones after it with its error; a
background call's failure that nothing waited for is logged. At close, the background calls
still under way are given time to finish (a removal is not lost at a script's end).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, TypeVar

from aioray._private.core_worker.runtime import Runtime

log = logging.getLogger("aioray.core_worker")
T = TypeVar("T")


class OrderedCalls:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._last: dict[Hashable, asyncio.Future[None]] = {}  # on the loop only
        self._background: set[asyncio.Task[None]] = set()
        self._sent: collections.Counter[Hashable] = collections.Counter()  # any thread: under _lock
        self._lock = threading.Lock()

    async def run(self, key: Hashable, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """On the loop: `call()` once the call about `key` made before it ended; its result."""
        return await self._after(key, *self._enter(key), call)

    def _enter(self, key: Hashable) -> tuple[asyncio.Future[None] | None, asyncio.Future[None]]:
        """Takes the call's place in line (synchronously: the order of this, not of the tasks'
        first steps, is the order of the calls)."""
        previous = self._last.get(key)
        mine: asyncio.Future[None] = self._runtime.loop.create_future()
        self._last[key] = mine
        return previous, mine

    async def _after(
        self,
        key: Hashable,
        previous: asyncio.Future[None] | None,
        mine: asyncio.Future[None],
        call: Callable[[], Coroutine[Any, Any, T]],
    ) -> T:
        try:
            if previous is not None:
                await asyncio.shield(previous)  # raises what the previous call raised
            result = await call()
        except asyncio.CancelledError:
            mine.cancel()
            raise
        except BaseException as e:
            mine.set_exception(e)
            mine.exception()  # the next call, if any, raises it; no "never retrieved" warning
            raise
        else:
            mine.set_result(None)
            return result
        finally:
            if self._last.get(key) is mine:
                del self._last[key]

    async def wait_for(self, key: Hashable) -> None:
        """On the loop: returns once the calls about `key` made so far ended (raises a failure)."""
        previous = self._last.get(key)
        if previous is not None:
            await asyncio.shield(previous)

    async def wait_for_all(self) -> None:
        """On the loop: returns once every call made so far ended (failures are not raised: they
        belong to the calls about their own key)."""
        if self._last:
            await asyncio.wait(list(self._last.values()))  # waiting cancels none of them

    def pending(self, key: Hashable) -> bool:
        """From any thread: whether a call about `key` sent without waiting has not ended yet."""
        with self._lock:
            return key in self._sent

    def send(self, key: Hashable, call: Callable[[], Coroutine[Any, Any, Any]], what: str) -> None:
        """From the caller's thread: makes the call in order on the loop without waiting for it."""
        with self._lock:
            self._sent[key] += 1

        async def background(previous: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
            try:
                await self._after(key, previous, mine, call)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("%s failed: %s", what, e)
            finally:
                self._ended(key)

        def start() -> None:
            previous, mine = self._enter(key)
            task = self._runtime.loop.create_task(background(previous, mine))

            def cancelled_before_it_started(_: asyncio.Task[None]) -> None:
                if not mine.done():  # at close: the calls after it must not wait for it for ever
                    mine.cancel()
                    if self._last.get(key) is mine:
                        del self._last[key]

            task.add_done_callback(cancelled_before_it_started)
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        if self._runtime.in_loop_thread():
            start()
            return
        try:
            self._runtime.call_soon(start)
        except RuntimeError:  # the loop is closed: this process is disconnecting
            self._ended(key)
            raise

    def _ended(self, key: Hashable) -> None:
        with self._lock:
            self._sent[key] -= 1
            if not self._sent[key]:
                del self._sent[key]

    async def flush(self, timeout: float) -> None:
        """On the loop: waits (at most `timeout`) for the background calls under way, then
        cancels those still waiting for their answer."""
        if not self._background:
            return
        _, late = await asyncio.wait(list(self._background), timeout=timeout)
        if late:
            log.error(
                "%d placement group call(s) did not end within %.0f s of closing: given up",
                len(late),
                timeout,
            )
            for task in late:
                task.cancel()
            await asyncio.wait(late, timeout=1.0)


__all__ = ["OrderedCalls"]
