"""Utilities on top of actors (``aioray.util.ActorPool``), as in ``ray.util``."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aioray._private import api
from aioray._private.actor import ActorHandle
from aioray._private.core_worker.object_ref import ObjectRef

__all__ = ["ActorPool"]


class ActorPool:
    """Spreads work over a fixed set of actors.

    ``fn(actor, value)`` must call a method and return its ObjectRef, e.g.
    ``lambda a, v: a.double.remote(v)``.
    """

    def __init__(self, actors: Iterable[ActorHandle]) -> None:
        self._idle: list[ActorHandle] = list(actors)
        self._future_to_actor: dict[ObjectRef, tuple[int, ActorHandle]] = {}
        self._index_to_future: dict[int, ObjectRef] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending: collections.deque[tuple[Callable[[ActorHandle, Any], ObjectRef], Any]] = (
            collections.deque()
        )

    def submit(self, fn: Callable[[ActorHandle, Any], ObjectRef], value: Any) -> None:
        """Runs ``fn(actor, value)`` on an idle actor, or queues it until one is free."""
        if self._idle:
            actor = self._idle.pop()
            ref = fn(actor, value)
            self._future_to_actor[ref] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = ref
            self._next_task_index += 1
        else:
            self._pending.append((fn, value))

    def has_next(self) -> bool:
        """Whether results are still to be fetched."""
        return bool(self._future_to_actor)

    def has_free(self) -> bool:
        """Whether an actor is idle and nothing is queued."""
        return bool(self._idle) and not self._pending

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("it is not allowed to call get_next() after get_next_unordered()")
        ref = self._index_to_future[self._next_return_index]
        if timeout is not None:
            ready, _ = api.wait([ref], timeout=timeout)
            if not ready:
                if ignore_if_timedout:
                    return None
                raise TimeoutError(f"timed out waiting for a result after {timeout}s")
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(ref)
        self._return_actor(actor)
        return api.get(ref)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result to finish, in any order."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        ready, _ = api.wait(list(self._future_to_actor), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError(f"timed out waiting for a result after {timeout}s")
        ref = ready[0]
        index, actor = self._future_to_actor.pop(ref)
        self._index_to_future.pop(index, None)
        self._next_return_index = max(self._next_return_index, index + 1)
        self._return_actor(actor)
        return api.get(ref)

    def _return_actor(self, actor: ActorHandle) -> None:
        self._idle.append(actor)
        if self._pending:
            fn, value = self._pending.popleft()
            self.submit(fn, value)

    def map(self, fn: Callable[[ActorHandle, Any], ObjectRef], values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn`` over `values`, in order."""
        while self.has_next():  # drain what an earlier call left
            self.get_next_unordered()
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next()

    def map_unordered(
        self, fn: Callable[[ActorHandle, Any], ObjectRef], values: Iterable[Any]
    ) -> Iterator[Any]:
        """Results of ``fn`` over `values`, as they finish."""
        while self.has_next():
            self.get_next_unordered()
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next_unordered()

    def pop_idle(self) -> ActorHandle | None:
        """Removes an idle actor from the pool (None if all are busy)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: ActorHandle) -> None:
        """Adds an actor to the pool."""
        busy = {a for _, a in self._future_to_actor.values()}
        if actor in self._idle or actor in busy:
            raise ValueError("the actor is already in the pool")
        self._return_actor(actor)
