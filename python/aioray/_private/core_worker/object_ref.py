"""ObjectRef: a future of a value that lives in its owner's process or in a node's store.

Creating an ObjectRef counts as a local reference in the owner's ownership
table (or, in another process, as a borrow); dropping the last one frees the
object. Refs hash and compare by id, pickle (the receiver becomes a
borrower), and can be awaited from any event loop.

Inside a running event loop a ref is also an asyncio future (`asyncio.isfuture`
is true), so `asyncio.wait`, `as_completed`, `gather`, `shield`, `wait_for` and
`ensure_future` take it as it is. Its future side is a per-loop view that is
done once the object is *ready*, without reading it; `result()` and
`exception()` read it then. Outside a running loop it is a plain awaitable, so
`loop.run_until_complete(ref)` wraps it in a task as any awaitable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

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


if TYPE_CHECKING:  # a default (PEP 696) keeps a bare `ObjectRef` meaning `ObjectRef[Any]`
    from typing_extensions import TypeVar as _TypeVarWithDefault

    _T_co = _TypeVarWithDefault("_T_co", covariant=True, default=Any)
else:
    _T_co = TypeVar("_T_co", covariant=True)


class ObjectRef(Generic[_T_co]):
    """A reference to a remote object: ``await ref`` or ``aioray.get(ref)`` for its value.

    Generic in the value's type for type checkers only (``ObjectRef[int]``: ``await ref`` is an
    int); a bare ``ObjectRef`` is ``ObjectRef[Any]``.
    """

    # `_view` and `_callbacks` are set only once the ref is used as an asyncio future.
    __slots__ = ("__weakref__", "_callbacks", "_counted", "_id", "_owner", "_view")

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

    def future(self) -> concurrent.futures.Future[_T_co]:
        """A concurrent.futures.Future of the value (or its error)."""
        return global_worker(auto_connect=False).get_future(self)

    def as_future(self) -> asyncio.Future[Any]:
        """An asyncio.Future of the value on the running loop (Ray's ``as_future``); cancelling it
        leaves the task running."""
        return asyncio.wrap_future(self.future())

    def __await__(self) -> Generator[Any, None, _T_co]:
        # Cancelling the awaiting coroutine cancels the task, unless the result is needed
        # elsewhere; ``await aioray.shield(ref)`` never cancels it.
        return global_worker(auto_connect=False).await_ref(self).__await__()

    # -- the asyncio.Future protocol -------------------------------------------------------------
    @property
    def _asyncio_future_blocking(self) -> bool | None:
        # asyncio.isfuture() is true where a loop runs: outside one (`loop.run_until_complete(ref)`)
        # a ref is an awaitable to wrap in a task, since it cannot know which loop it belongs to.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        return False

    def _loop_view(self) -> asyncio.Future[None]:
        """This ref's future on the running loop: done once the object is ready (not read)."""
        loop = asyncio.get_running_loop()
        view: asyncio.Future[None] | None = getattr(self, "_view", None)
        if view is not None and view.get_loop() is loop:
            return view
        view = loop.create_future()
        self._view = view
        ready = global_worker(auto_connect=False).ready_future(self)

        def settle(done: concurrent.futures.Future[Any]) -> None:
            if view.done():
                return
            err = None if done.cancelled() else done.exception()
            if err is not None:  # the wait itself failed (e.g. shut down): the view fails with it
                view.set_exception(err)
            else:
                view.set_result(None)

        def hand_over(done: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(settle, done)

        ready.add_done_callback(hand_over)
        return view

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop_view().get_loop()

    def done(self) -> bool:
        """Whether the object is ready (its task finished, well or not), without reading it."""
        try:
            return self._loop_view().done()
        except RuntimeError:  # no running loop: ask without waiting
            ready, _ = global_worker(auto_connect=False).wait([self], 1, 0)
            return bool(ready)

    def cancelled(self) -> bool:
        view: asyncio.Future[None] | None = getattr(self, "_view", None)
        return view is not None and view.cancelled()

    def result(self) -> Any:
        """The value (read now: a pull from another node blocks the caller, as ``get`` does; ``await
        ref`` does not block the loop). Raises the task's error, CancelledError if this future was
        cancelled, InvalidStateError if the object is not ready yet."""
        self._check_done()
        return global_worker(auto_connect=False).get([self], None)[0]

    def exception(self) -> BaseException | None:
        """The task's error, or None if it succeeded; same conditions as `result`."""
        self._check_done()
        try:
            global_worker(auto_connect=False).get([self], None)
        except Exception as e:
            return e
        return None

    def _check_done(self) -> None:
        view: asyncio.Future[None] | None = getattr(self, "_view", None)
        if view is not None and view.cancelled():
            raise asyncio.CancelledError
        if not self.done():
            raise asyncio.InvalidStateError("the object is not ready yet")

    def add_done_callback(
        self, fn: Callable[[ObjectRef], object], *, context: contextvars.Context | None = None
    ) -> None:
        """Calls ``fn(ref)`` on the running loop once the object is ready (as asyncio.Future does)."""
        callbacks: dict[Any, Callable[[Any], object]] | None = getattr(self, "_callbacks", None)
        if callbacks is None:
            callbacks = {}
            self._callbacks = callbacks

        def call(_view: asyncio.Future[None]) -> object:
            return fn(self)

        callbacks[fn] = call
        self._loop_view().add_done_callback(call, context=context)

    def remove_done_callback(self, fn: Callable[[ObjectRef], object]) -> int:
        callbacks: dict[Any, Callable[[Any], object]] | None = getattr(self, "_callbacks", None)
        call = callbacks.pop(fn, None) if callbacks else None
        view: asyncio.Future[None] | None = getattr(self, "_view", None)
        if call is None or view is None:
            return 0
        return view.remove_done_callback(call)

    def cancel(self, msg: Any = None) -> bool:
        """Cancels this future on this loop (``asyncio.wait_for(ref, t)`` timing out does), not the
        task: as in Ray, the ref can be awaited again. The task is cancelled by ``aioray.cancel`` or
        by cancelling a coroutine that awaits the ref (see docs/asyncio.md)."""
        view = self._loop_view()
        if view.done():
            return False
        view.cancel(msg)
        return True


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
