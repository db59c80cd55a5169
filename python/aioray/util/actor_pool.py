"""``aioray.util.ActorPool``: work spread over a fixed set of actors, as ``ray.util.ActorPool``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeAlias, TypeVar

from aioray._private import api
from aioray._private.actor import ActorHandle
from aioray._private.core_worker.object_ref import ObjectRef
from aioray.exceptions import ActorDiedError

__all__ = ["ActorPool"]

V = TypeVar("V")
# What `fn(actor, value)` returns: one ref, or a list of refs for a method with several returns.
Submitted: TypeAlias = ObjectRef | Sequence[ObjectRef]
# The dict key of a submitted call: the ref itself, or its refs as a tuple.
_Key: TypeAlias = ObjectRef | tuple[ObjectRef, ...]


def _key(submitted: Submitted) -> _Key:
    return submitted if isinstance(submitted, ObjectRef) else tuple(submitted)


def _refs(key: _Key) -> list[ObjectRef]:
    return [key] if isinstance(key, ObjectRef) else list(key)


class ActorPool:
    """Runs calls on a fixed set of actors, one call per actor at a time.

    ``fn(actor, value)`` calls one method and returns what ``.remote()`` gave: an ObjectRef, or
    the list of refs of a method with several returns (its result is then the list of values).
    The actor counts as busy until the result has been fetched with ``get_next`` or
    ``get_next_unordered`` (``map`` and ``map_unordered`` fetch for you); calls submitted while
    every actor is busy wait in the pool and start as actors come back.

    A call that raised leaves its actor in the pool (the error is raised to the caller); an actor
    that died (``ActorDiedError``) leaves the pool, and ``push`` can add a replacement.

    >>> pool = ActorPool([Doubler.remote(), Doubler.remote()])
    >>> list(pool.map(lambda actor, v: actor.double.remote(v), [1, 2, 3]))
    [2, 4, 6]
    """

    def __init__(self, actors: Iterable[ActorHandle]) -> None:
        self._idle_actors: list[ActorHandle] = list(actors)
        # In flight: key -> (submission index, actor running it).
        self._future_to_actor: dict[_Key, tuple[int, ActorHandle]] = {}
        self._index_to_future: dict[int, _Key] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        # Submitted while no actor was idle, oldest first.
        self._pending_submits: list[tuple[Callable[[ActorHandle, Any], Submitted], Any]] = []

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, fn: Callable[[ActorHandle, V], Submitted], value: V) -> None:
        """Runs ``fn(actor, value)`` on an idle actor now, or as soon as one is free.

        Its result comes from ``get_next()`` (in submission order) or ``get_next_unordered()``.
        """
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        try:
            submitted = fn(actor, value)
            key = self._check_submitted(submitted)
        except BaseException:
            self._idle_actors.append(actor)  # nothing runs on it: it is still free
            raise
        index = self._next_task_index
        self._future_to_actor[key] = (index, actor)
        self._index_to_future[index] = key
        self._next_task_index += 1

    @staticmethod
    def _check_submitted(submitted: object) -> _Key:
        if isinstance(submitted, ObjectRef):
            return submitted
        if (
            isinstance(submitted, list | tuple)
            and submitted
            and all(isinstance(r, ObjectRef) for r in submitted)
        ):
            return _key(submitted)
        raise TypeError(
            "ActorPool: fn(actor, value) must return the ObjectRef of an actor call "
            f"(or the list of refs of a call with several returns), got {type(submitted).__name__}"
        )

    def map(self, fn: Callable[[ActorHandle, V], Submitted], values: Iterable[V]) -> Iterator[Any]:
        """Submits ``fn(actor, v)`` for every value at once; returns an iterator of their results in
        the order of `values`.

        Calls submitted earlier whose results were not fetched are dropped first (they still
        run; their results are discarded), as in Ray.
        """
        self._discard_in_flight()
        for v in values:
            self.submit(fn, v)
        return self._results(ordered=True)

    def map_unordered(self, fn: Callable[[ActorHandle, V], Submitted], values: Iterable[V]) -> Iterator[Any]:
        """As ``map``, but the results come as the calls finish."""
        self._discard_in_flight()
        for v in values:
            self.submit(fn, v)
        return self._results(ordered=False)

    def _results(self, ordered: bool) -> Iterator[Any]:
        while self.has_next():
            yield self.get_next() if ordered else self.get_next_unordered()

    def _discard_in_flight(self) -> None:
        """Forgets every call whose result was not fetched, freeing its actor.

        Queued submissions start on the freed actors and are forgotten in turn. An actor whose
        call already failed with ``ActorDiedError`` leaves the pool.
        """
        while self._future_to_actor:
            keys = list(self._future_to_actor)
            finished, _ = api.wait([_refs(k)[0] for k in keys], num_returns=len(keys), timeout=0)
            done = set(finished)
            for key in keys:
                _, actor = self._future_to_actor.pop(key)
                alive = True
                if _refs(key)[0] in done:
                    try:
                        api.get(_refs(key))
                    except ActorDiedError:
                        alive = False
                    except Exception:
                        pass  # a discarded call's error goes with its result
                self._return_actor(actor, alive=alive)
        self._index_to_future.clear()
        self._next_return_index = self._next_task_index

    # -- results ------------------------------------------------------------------------------
    def has_next(self) -> bool:
        """Whether results of submitted calls are still to be fetched."""
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of the oldest call not yet fetched, waiting up to `timeout` seconds for it.

        Raises ``TimeoutError`` if it is not ready in time; the call stays in the pool to be
        fetched later, unless `ignore_if_timedout`, which drops it (it still runs, its result is
        discarded and its actor takes new work) before raising. Raises ``StopIteration`` when
        nothing is left, and ``ValueError`` after ``get_next_unordered`` has taken later results.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        index = self._next_return_index
        key = self._index_to_future[index]
        if timeout is not None:
            refs = _refs(key)
            ready, _ = api.wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                if not ignore_if_timedout:
                    raise TimeoutError(f"Timed out waiting for result after {timeout}s")
                del self._index_to_future[index]
                self._next_return_index += 1
                _, actor = self._future_to_actor.pop(key)
                self._return_actor(actor)
                raise TimeoutError(
                    f"Timed out waiting for result after {timeout}s; the call {key!r} has been ignored"
                )
        del self._index_to_future[index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(key)
        return self._fetch(key, actor)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of whichever call finishes first, waiting up to `timeout` seconds.

        Raises ``TimeoutError`` if none finishes in time, or with `ignore_if_timedout` returns
        None (no call is dropped: which one would be is not known). Raises ``StopIteration`` when
        nothing is left.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        # The returns of one call are ready together: its first ref stands for it.
        by_first = {_refs(k)[0]: k for k in self._future_to_actor}
        ready, _ = api.wait(list(by_first), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError(f"Timed out waiting for result after {timeout}s")
        key = by_first[ready[0]]
        index, actor = self._future_to_actor.pop(key)
        del self._index_to_future[index]
        self._next_return_index = max(self._next_return_index, index + 1)
        return self._fetch(key, actor)

    def _fetch(self, key: _Key, actor: ActorHandle) -> Any:
        """The call's value(s); its actor goes back to the pool unless it died."""
        alive = True
        try:
            return api.get(key) if isinstance(key, ObjectRef) else api.get(list(key))
        except ActorDiedError:
            alive = False
            raise
        finally:
            self._return_actor(actor, alive=alive)

    # -- actors -------------------------------------------------------------------------------
    def _return_actor(self, actor: ActorHandle, alive: bool = True) -> None:
        # A dead actor stays out: submit() would keep picking it and every call would fail.
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            fn, value = self._pending_submits.pop(0)
            self.submit(fn, value)

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> ActorHandle | None:
        """Takes an idle actor out of the pool; None if there is none (or work is waiting)."""
        if self.has_free():
            return self._idle_actors.pop()
        return None

    def push(self, actor: ActorHandle) -> None:
        """Adds an actor to the pool; it starts the oldest waiting submission, if any.

        Raises ``ValueError`` if the actor is already in the pool (idle or busy).
        """
        busy = {a for _, a in self._future_to_actor.values()}
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
