"""ObjectRef: a future of a value that lives in its owner's process or in a node's store.

Creating an ObjectRef counts as a local reference in the owner's ownership
table (or, in another process, as a borrow); dropping the last one frees the
object. Refs hash and compare by id, pickle (the receiver becomes a
borrower), and can be awaited from any event loop.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from aioray._private.common import serialization

if TYPE_CHECKING:
    from aioray._private.core_worker.worker import CoreWorker

# The process's connected core worker, set by core_worker.connect().
_worker: CoreWorker | None = None


def set_global_worker(worker: CoreWorker | None) -> None:
    global _worker
    _worker = worker


def current_worker() -> CoreWorker | None:
    """The connected core worker, or None (never starts one)."""
    return _worker


# Starts (or connects to) a cluster when a driver uses the API before `init`, as Ray does; installed
# by the driver-side API (worker processes are connected before any user code runs).
_auto_connect: Callable[[], None] | None = None


def set_auto_connect(start: Callable[[], None] | None) -> None:
    global _auto_connect
    _auto_connect = start


def global_worker(auto_connect: bool = True) -> CoreWorker:
    """The connected core worker; in a driver that is not connected yet, `init()` runs first
    (unless AIORAY_ENABLE_AUTO_CONNECT=0, or `auto_connect` is False)."""
    if _worker is None and auto_connect and _auto_connect is not None:
        _auto_connect()
    if _worker is None:
        raise RuntimeError(
            "aioray is not initialised: call aioray.init() or use `async with aioray.Cluster()`"
        )
    return _worker


class ObjectRef:
    """A reference to a remote object: ``await ref`` or ``aioray.get(ref)`` for its value."""

    __slots__ = ("__weakref__", "_counted", "_id", "_owner")

    def __init__(self, object_id: bytes, owner: str, *, _count: bool = True) -> None:
        self._id = object_id
        self._owner = owner
        self._counted = False
        if _count and _worker is not None:
            _worker.refs.add_local(object_id, owner)
            self._counted = True

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    @property
    def owner_address(self) -> str:
        return self._owner

    def task_id(self) -> bytes:
        return self._id[:16]

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self) -> tuple[Any, ...]:
        serialization.note_contained_ref(self)
        return (_rebuild, (self._id, self._owner))

    def __del__(self) -> None:
        if self._counted and _worker is not None:
            _worker.refs.remove_local(self._id)

    def future(self) -> concurrent.futures.Future[Any]:
        """A concurrent.futures.Future of the value (or its error)."""
        return global_worker(auto_connect=False).get_future(self)

    def __await__(self) -> Generator[Any, None, Any]:
        # Cancelling the awaiting coroutine cancels the task, unless the result is needed
        # elsewhere; ``await aioray.shield(ref)`` never cancels it.
        return global_worker(auto_connect=False).await_ref(self).__await__()


class _Shielded:
    __slots__ = ("_ref",)

    def __init__(self, ref: ObjectRef) -> None:
        self._ref = ref

    def __await__(self) -> Generator[Any, None, Any]:
        return global_worker(auto_connect=False).await_ref(self._ref, cancel_on_cancel=False).__await__()


def shield(ref: ObjectRef) -> Any:
    """An awaitable of `ref` whose cancellation leaves the task running (cf. asyncio.shield)."""
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"shield() takes an ObjectRef, got {type(ref).__name__}")
    return _Shielded(ref)


def _rebuild(object_id: bytes, owner: str) -> ObjectRef:
    ref = ObjectRef(object_id, owner)
    if _worker is not None:
        _worker.refs.note_deserialized(object_id, owner)
    return ref
