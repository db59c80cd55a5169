"""``aioray.util.queue.Queue``: a FIFO queue shared by drivers, tasks and actors, as ``ray.util.queue``.

The items live in an async actor that holds an ``asyncio.Queue``; a ``Queue`` object is a small
picklable front to it, so it can be passed to tasks and actors as an argument.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

from aioray._private import api
from aioray._private.actor import ActorClass, ActorHandle

__all__ = ["Empty", "Full", "Queue"]

# Every blocked get()/put() holds one of the actor's concurrency slots while it waits.
_DEFAULT_MAX_CONCURRENCY = 1000


class Empty(_stdlib_queue.Empty):
    """Raised by a get on an empty queue that does not wait, or that timed out."""


class Full(_stdlib_queue.Full):
    """Raised by a put on a full queue that does not wait, or that timed out."""


class _QueueActor:
    """The actor holding the items. Its methods report "empty"/"full" in their return value, so
    the caller raises a plain ``Empty``/``Full`` rather than a wrapped remote error."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None) -> bool:
        """Whether `item` went in before `timeout` (None: waits as long as it takes)."""
        if not self.queue.full():
            self.queue.put_nowait(item)
            return True
        if timeout is not None and timeout <= 0:
            return False
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except TimeoutError:
            return False
        return True

    async def get(self, timeout: float | None) -> tuple[bool, Any]:
        """(True, item), or (False, None) if none came before `timeout`."""
        if not self.queue.empty():
            return True, self.queue.get_nowait()
        if timeout is not None and timeout <= 0:
            return False, None
        try:
            return True, await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return False, None

    async def put_nowait_batch(self, items: list[Any]) -> str | None:
        """Puts all of `items`, or none of them and says why."""
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return f"Cannot add {len(items)} items to queue of size {self.queue.qsize()} and maxsize {self.maxsize}."
        for item in items:
            self.queue.put_nowait(item)
        return None

    async def get_nowait_batch(self, num_items: int) -> tuple[bool, Any]:
        """(True, the first `num_items` items), or (False, why) if there are fewer."""
        if num_items > self.queue.qsize():
            return False, f"Cannot get {num_items} items from queue of size {self.queue.qsize()}."
        return True, [self.queue.get_nowait() for _ in range(num_items)]


_queue_actor_class: ActorClass | None = None


def _actor_class() -> ActorClass:
    global _queue_actor_class
    if _queue_actor_class is None:
        _queue_actor_class = api.remote(_QueueActor)
    return _queue_actor_class


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """A first-in, first-out queue usable from the driver, tasks and actors (pass it as an argument).

    Args:
        maxsize: how many items it holds at most; 0 (the default) is unbounded.
        actor_options: options for the actor that holds the items (``num_cpus``, ``resources``,
            ``name``, ...), as ``ActorClass.options(...)`` takes them. The actor needs no CPU by
            default.

    ``put``/``get`` block (up to `timeout` seconds) while the queue is full/empty, or with
    ``block=False`` raise ``Full``/``Empty`` at once; ``put_async``/``get_async`` are their
    coroutine forms, for use inside an event loop (an async actor, a driver's coroutine). Several
    producers on a full queue, or consumers on an empty one, are served in no guaranteed order.

    >>> q = Queue(maxsize=10)
    >>> q.put(1)
    >>> q.get(timeout=1)
    1
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        options = dict(actor_options or {})
        options.setdefault("max_concurrency", _DEFAULT_MAX_CONCURRENCY)
        self.maxsize = maxsize
        self.actor: ActorHandle | None = _actor_class().options(**options).remote(maxsize)

    def _handle(self) -> ActorHandle:
        if self.actor is None:
            raise RuntimeError("this Queue has been shut down")
        return self.actor

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items the queue holds."""
        return int(api.get(self._handle().qsize.remote()))

    def qsize(self) -> int:
        """How many items the queue holds (as ``size``)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return bool(api.get(self._handle().empty.remote()))

    def full(self) -> bool:
        """Whether the queue holds `maxsize` items (never, if it is unbounded)."""
        return bool(api.get(self._handle().full.remote()))

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Adds `item` at the end, waiting while the queue is full if `block`.

        Raises ``Full`` if the queue is full and `block` is False, or still full after
        `timeout` seconds; ``ValueError`` if `timeout` is negative.
        """
        if block:
            _check_timeout(timeout)
        if not api.get(self._handle().put.remote(item, timeout if block else 0)):
            raise Full
        return None

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` as a coroutine: waits without blocking the event loop."""
        if block:
            _check_timeout(timeout)
        if not await self._handle().put.remote(item, timeout if block else 0):
            raise Full
        return None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Removes and returns the first item, waiting while the queue is empty if `block`.

        Raises ``Empty`` if the queue is empty and `block` is False, or still empty after
        `timeout` seconds; ``ValueError`` if `timeout` is negative.
        """
        if block:
            _check_timeout(timeout)
        ok, item = api.get(self._handle().get.remote(timeout if block else 0))
        if not ok:
            raise Empty
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` as a coroutine: waits without blocking the event loop."""
        if block:
            _check_timeout(timeout)
        ok, item = await self._handle().get.remote(timeout if block else 0)
        if not ok:
            raise Empty
        return item

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``: raises ``Full`` if the queue is full."""
        return self.put(item, block=False)

    def get_nowait(self) -> Any:
        """``get(block=False)``: raises ``Empty`` if the queue is empty."""
        return self.get(block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Adds all of `items` in order in one call, or none of them: raises ``Full`` if they do
        not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        why = api.get(self._handle().put_nowait_batch.remote(list(items)))
        if why is not None:
            raise Full(why)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Removes and returns the first `num_items` items in one call: raises ``Empty`` (taking
        none) if the queue holds fewer."""
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        ok, result = api.get(self._handle().get_nowait_batch.remote(num_items))
        if not ok:
            raise Empty(result)
        return list(result)

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """Ends the queue's actor, releasing what it reserved; the items are lost.

        With `force` the actor is killed at once; else it is asked to exit, and killed if it has
        not within `grace_period_s` seconds. Calls blocked in ``get``/``put`` then raise
        ``ActorDiedError``. Safe to call twice.
        """
        actor, self.actor = self.actor, None
        if actor is None:
            return
        if force:
            api.kill(actor, no_restart=True)
            return
        done = actor.__ray_terminate__.remote()
        exited, _ = api.wait([done], timeout=grace_period_s)
        if not exited:
            api.kill(actor, no_restart=True)
