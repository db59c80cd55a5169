"""Changes to one thing (a placement group) sent without waiting, and the calls that must see them.

``placement_group()`` (unnamed) and ``remove_placement_group()`` return without waiting for the
GCS's answer (Ray's return once the GCS answered): a driver creating and removing groups one after
another then costs the GCS's work, not a round trip each, and the GCS places the groups that
arrive together in one call to the raylet. What a program can see stays the same because:

- the changes about one group are sent in the order they were made, each once the one before it
  ended (however that went: a removal is sent even if the creation before it failed);
- a call that reads a group (``pg.wait()``, its table row, placing work in it) first waits for the
  changes this process made to it before; one that reads every group, or finds one by name, for
  all the changes under way. Reads take no place in line: a removal made while another thread
  waits for the group is not held behind that wait;
- a change that failed is logged, and the reads of its group after it raise its error (the
  group was perhaps never created);
- at close, the changes under way are given time to finish (a removal is not lost at a script's
  end).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from aioray._private.core_worker.runtime import Runtime

log = logging.getLogger("aioray.core_worker")
MAX_FAILURES_KEPT = 1000  # the failed changes remembered for later reads, the oldest dropped first


class OrderedCalls:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        # On the loop only: by key, the newest change's end (resolved, never failed, once it and
        # every change before it about the key ended), and the failure of the newest change.
        self._last: dict[Hashable, asyncio.Future[None]] = {}
        self._failed: collections.OrderedDict[Hashable, BaseException] = collections.OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        self._sent: collections.Counter[Hashable] = collections.Counter()  # any thread: under _lock
        self._lock = threading.Lock()

    # -- changes ---------------------------------------------------------------------------------
    def send(self, key: Hashable, call: Callable[[], Coroutine[Any, Any, Any]], what: str) -> None:
        """From any thread: makes the change `call()` about `key`, in order, without waiting."""
        with self._lock:
            self._sent[key] += 1
        if self._runtime.in_loop_thread():
            self._start(key, call, what)
            return
        try:
            self._runtime.call_soon(self._start, key, call, what)
        except RuntimeError:  # the loop is closed: this process is disconnecting
            self._ended(key)
            raise

    def _start(self, key: Hashable, call: Callable[[], Coroutine[Any, Any, Any]], what: str) -> None:
        # Synchronous on the loop: the order of these, not of the tasks' first steps, is the order
        # of the changes.
        previous = self._last.get(key)
        end: asyncio.Future[None] = self._runtime.loop.create_future()
        self._last[key] = end
        started = False

        async def change() -> None:
            nonlocal started
            started = True
            try:
                if previous is not None:
                    await asyncio.shield(previous)
                await call()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("%s failed: %s", what, e)
                self._failed[key] = e
                self._failed.move_to_end(key)
                while len(self._failed) > MAX_FAILURES_KEPT:
                    self._failed.popitem(last=False)
            else:
                self._failed.pop(key, None)
            finally:
                self._ended(key)

        def ended(task: asyncio.Task[None]) -> None:
            if not started:  # cancelled (at close) before its first step
                self._ended(key)
            # Ended only once the changes before it did, even if it was cancelled early: the
            # calls after it must not overtake those.
            if previous is None or previous.done():
                self._resolve(key, end)
            else:
                previous.add_done_callback(lambda _: self._resolve(key, end))

        task = self._runtime.loop.create_task(change())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(ended)

    def _resolve(self, key: Hashable, end: asyncio.Future[None]) -> None:
        if not end.done():
            end.set_result(None)
        if self._last.get(key) is end:
            del self._last[key]

    def _ended(self, key: Hashable) -> None:
        with self._lock:
            self._sent[key] -= 1
            if not self._sent[key]:
                del self._sent[key]

    # -- reads -----------------------------------------------------------------------------------
    def pending(self, key: Hashable) -> bool:
        """From any thread: whether a change about `key` has not ended yet."""
        with self._lock:
            return key in self._sent

    def any_pending(self) -> bool:
        """From any thread: whether any change has not ended yet."""
        with self._lock:
            return bool(self._sent)

    async def settled(self, key: Hashable) -> None:
        """On the loop: returns once the changes about `key` made so far ended; raises the
        failure of the newest one, if it failed."""
        last = self._last.get(key)
        if last is not None:
            await asyncio.shield(last)
        failure = self._failed.get(key)
        if failure is not None:
            raise failure.with_traceback(None)

    async def all_settled(self) -> None:
        """On the loop: returns once every change made so far ended (failures are not raised:
        they belong to the reads of their own key)."""
        if self._last:
            await asyncio.wait(list(self._last.values()))  # waiting cancels none of them

    async def flush(self, timeout: float) -> None:
        """On the loop: waits (at most `timeout`) for the changes under way."""
        if not self._background:
            return
        _, late = await asyncio.wait(list(self._background), timeout=timeout)
        if late:
            log.error("%d placement group change(s) did not end within %.0f s of closing", len(late), timeout)


__all__ = ["OrderedCalls"]
