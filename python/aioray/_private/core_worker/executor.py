"""The executing side: a worker runs the tasks pushed to it, and may host one actor.

Plain tasks and the methods of a sync actor run one at a time on the task
thread, in the order they arrived. A threaded actor (sync class,
``max_concurrency > 1``) runs methods on a thread pool; an async actor runs
them as coroutines on its own event loop, interleaving at ``await``, at most
``max_concurrency`` at once.

Arguments arrive inline or as ids in the node's store (read zero-copy); small
return values go back inline in the result, larger ones are written to the
node's store and pinned there as primary copies until their owner frees them.
Before a result is sent, borrows of refs the task received (and still holds)
and of refs inside its return values are registered with their owners, so an
owner never frees an object a borrower still needs.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ctypes
import functools
import inspect
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from aioray._private.common import serialization, task_spec
from aioray._private.common.process import new_event_loop
from aioray._private.common.task_spec import ActorCreationSpec, TaskSpec
from aioray._private.core_worker.borrowing import BorrowProtocol
from aioray._private.core_worker.ownership import ObjectValue
from aioray._private.core_worker.runtime import Runtime
from aioray.exceptions import ObjectLostError, RayTaskError, TaskCancelledError

log = logging.getLogger("aioray.executor")
Reply = Callable[[task_spec.Result], None]
Outcome = tuple[bytes, int, list[tuple[Any, ...]]]


class TaskContext(threading.local):
    task_id: bytes | None = None
    task_name: str = ""
    lease_id: bytes | None = None


class Executor:
    def __init__(
        self,
        runtime: Runtime,
        borrows: BorrowProtocol,
        load_function: Callable[[bytes], Any],
        read_buffer: Callable[[bytes, ObjectValue], Any],
        write_to_store: Callable[[bytes, serialization.Frame], None],
        cancel_owned: Callable[[bytes, bool, bool], None],
        node_id: bytes,
        inline_limit: int,
    ) -> None:
        """`read_buffer` and `write_to_store` run on the task thread; `cancel_owned(task_id, force,
        recursive)` cancels a task this process submitted (on the loop)."""
        self._runtime = runtime
        # Bound once: every reply of every task thread goes through it.
        self._to_loop = runtime.loop.call_soon_threadsafe
        self._borrows = borrows
        self._load_function = load_function
        self._read_buffer = read_buffer
        self._write_to_store = write_to_store
        self._cancel_owned = cancel_owned
        self._node_id = node_id
        self._inline_limit = inline_limit
        self.children: dict[bytes, list[bytes]] = {}  # running task id -> tasks it submitted (to cancel)
        self.context = TaskContext()
        self.actor: Any = None
        self.actor_id: bytes | None = None
        self.actor_name = ""
        self._actor_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._actor_loop: asyncio.AbstractEventLoop | None = None
        self._actor_slots: asyncio.Semaphore | None = None
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self.cancelled: set[bytes] = set()
        self._running: dict[bytes, int] = {}  # task id -> ident of the thread running it
        self._running_lock = threading.Lock()
        self._coros: dict[bytes, asyncio.Task[None]] = {}
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="aioray-task", daemon=True)
        self._thread.start()

    def note_child(self, task_id: bytes) -> None:
        """Any thread: inside a running task, remembers what it submits, for recursive cancellation."""
        parent = self.context.task_id
        if parent is not None:
            self.children.setdefault(parent, []).append(task_id)

    # -- the task thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                job = self._queue.popleft()
            job()

    def _on_task_thread(self, job: Callable[[], None]) -> None:
        with self._cv:
            self._queue.append(job)
            self._cv.notify()

    def submit(self, specs: list[TaskSpec], lease_id: bytes, reply: Reply) -> None:
        """From the core loop: run specs in order; `reply(result)` is called on the core loop."""
        for spec in specs:
            if spec.actor_id and self._actor_loop is not None:
                self._run_async_method(spec, reply)
            elif spec.actor_id and self._actor_pool is not None:
                self._actor_pool.submit(self._run_and_reply, spec, lease_id, reply)
            else:
                job = functools.partial(self._run_and_reply, spec, lease_id, reply)
                job.task_id = spec.task_id  # type: ignore[attr-defined]
                self._on_task_thread(job)

    def _run_and_reply(self, spec: TaskSpec, lease_id: bytes, reply: Reply) -> None:
        start = time.perf_counter()
        try:
            task_id, status, returns = self.execute(spec, lease_id)
        except KeyboardInterrupt:  # a cancel landed outside the user's code
            task_id, status, returns = self._cancelled_result(spec)
        self._reply(reply, (task_id, status, returns, time.perf_counter() - start))

    def _reply(self, reply: Reply, result: task_spec.Result) -> None:
        self._to_loop(self._send, result, reply)

    def _send(self, result: task_spec.Result, reply: Reply) -> None:
        # Borrow registrations go out (and are acknowledged) before the result does.
        if self._borrows.has_pending():
            self._runtime.spawn(self._register_then_reply(result, reply))
        else:
            reply(result)

    async def _register_then_reply(self, result: task_spec.Result, reply: Reply) -> None:
        await self._borrows.flush_registrations()
        reply(result)

    # -- running one task ----------------------------------------------------------------------
    def _target(self, spec: TaskSpec) -> Callable[..., Any]:
        if spec.actor_id:
            if self.actor is None or spec.actor_id != self.actor_id:
                raise RuntimeError(f"this worker hosts no actor {spec.actor_id.hex()}")
            method: Callable[..., Any] = getattr(self.actor, spec.method)
            return method
        function: Callable[..., Any] = self._load_function(spec.function_id)
        return function

    def execute(self, spec: TaskSpec, lease_id: bytes) -> Outcome:
        task_id = spec.task_id
        if task_id in self.cancelled:
            self.cancelled.discard(task_id)
            return self._cancelled_result(spec)
        ctx = self.context
        ctx.task_id, ctx.task_name, ctx.lease_id = task_id, self.actor_name or spec.name, lease_id
        try:
            try:
                fn = self._target(spec)
                args, kwargs = self.resolve_args(spec.args, spec.kwarg_names)
            except Exception as e:
                err = RayTaskError(spec.name, traceback.format_exc(), e)
                return self._error_result(spec, err, task_spec.SYSTEM_ERROR)
            me = threading.get_ident()
            with self._running_lock:
                self._running[task_id] = me
            try:
                value = fn(*args, **kwargs)
            except KeyboardInterrupt:
                if task_id in self.cancelled:
                    return self._cancelled_result(spec)
                raise
            except Exception as e:
                err = RayTaskError(spec.name, _user_traceback(e), e)
                return self._error_result(spec, err, task_spec.APP_ERROR)
            finally:
                with self._running_lock:
                    del self._running[task_id]
                    # A cancel that raced with the return must not hit the next task.
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(me), None)
            del args, kwargs
            return self._finish(spec, value)
        finally:
            ctx.task_id, ctx.task_name, ctx.lease_id = None, "", None
            self.cancelled.discard(task_id)
            self.children.pop(task_id, None)

    def _cancelled_result(self, spec: TaskSpec) -> Outcome:
        frame = serialization.serialize(
            TaskCancelledError(f"{spec.name} was cancelled"), is_error=True
        ).to_bytes()
        return (spec.task_id, task_spec.CANCELLED, [(task_spec.RET_INLINE, frame, [])] * spec.num_returns)

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> bool:
        """On the core loop: stops a task queued or running here; False if it is not here."""
        if recursive:
            for child in self.children.pop(task_id, ()):
                self._cancel_owned(child, force, recursive)
        coro = self._coros.get(task_id)
        if coro is not None and self._actor_loop is not None:
            self._actor_loop.call_soon_threadsafe(coro.cancel)
            return True
        with self._running_lock:
            thread = self._running.get(task_id)
            if thread is not None:
                self.cancelled.add(task_id)
                if force:
                    # The owner sees the stream break and reports the task cancelled.
                    self._runtime.loop.call_later(0.05, os._exit, 1)
                else:
                    # KeyboardInterrupt, as Ray: an `except Exception` in user code does not swallow it.
                    exc = ctypes.py_object(KeyboardInterrupt)
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), exc)
                return True
        with self._cv:
            queued = any(getattr(job, "task_id", None) == task_id for job in self._queue)
        if queued:
            self.cancelled.add(task_id)
        return queued

    def _finish(self, spec: TaskSpec, value: Any) -> Outcome:
        try:
            return (spec.task_id, task_spec.OK, self._store_returns(spec, value))
        except Exception as e:
            err = RayTaskError(spec.name, traceback.format_exc(), e)
            return self._error_result(spec, err, task_spec.APP_ERROR)

    def resolve_args(
        self, wire_args: list[tuple[Any, ...]], kwarg_names: tuple[str, ...]
    ) -> tuple[list[Any], dict[str, Any]]:
        values = []
        for arg in wire_args:
            if arg[0] == task_spec.ARG_INLINE:
                value, _ = serialization.deserialize(arg[1])
            else:
                _, oid, node_id, size, source = arg
                value = self._read_store_arg(oid, node_id, source, size)
            values.append(value)
        n_kw = len(kwarg_names)
        if n_kw:
            return values[:-n_kw], dict(zip(kwarg_names, values[-n_kw:], strict=True))
        return values, {}

    def _read_store_arg(self, oid: bytes, node_id: bytes, source: str, size: int) -> Any:
        buf = self._read_buffer(oid, ObjectValue(None, node_id, source, size))
        if buf is None:
            raise ObjectLostError(f"argument {oid.hex()} is in no reachable object store")
        value, _ = serialization.deserialize(buf)
        return value

    def _store_returns(self, spec: TaskSpec, value: Any) -> list[tuple[Any, ...]]:
        if spec.num_returns == 1:
            outputs = [value]
        elif spec.num_returns == 0:
            outputs = []
        else:
            if not isinstance(value, tuple | list) or len(value) != spec.num_returns:
                raise ValueError(
                    f"{spec.name} declares num_returns={spec.num_returns} but returned "
                    f"{type(value).__name__} {value!r:.60}"
                )
            outputs = list(value)
        returns: list[tuple[Any, ...]] = []
        for oid, out in zip(spec.return_ids, outputs, strict=True):
            frame = serialization.serialize(out)
            inner = [(r.binary(), r.owner_address) for r in frame.contained_refs]
            if inner:
                self._borrows.lend_refs(inner, spec.owner)
            if frame.size <= self._inline_limit:
                returns.append((task_spec.RET_INLINE, frame.to_bytes(), inner))
            else:
                self._write_to_store(oid, frame)
                returns.append(
                    (task_spec.RET_STORE, self._node_id, frame.size, inner, self._runtime.raylet_address)
                )
        return returns

    def _error_result(self, spec: TaskSpec, err: RayTaskError, status: int) -> Outcome:
        try:
            frame = serialization.serialize(err, is_error=True).to_bytes()
        except serialization.SerializationError:
            # The exception itself cannot be pickled: send its text.
            plain = RayTaskError(spec.name, err.traceback_str, None)
            frame = serialization.serialize(plain, is_error=True).to_bytes()
        return (spec.task_id, status, [(task_spec.RET_INLINE, frame, [])] * spec.num_returns)

    # -- actors --------------------------------------------------------------------------------
    async def create_actor(self, spec: ActorCreationSpec) -> bytes:
        """Runs the constructor on the task thread; b"" on success, else an error frame."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()

        def construct() -> None:
            try:
                cls = self._load_function(spec.function_id)
                args, kwargs = self.resolve_args(spec.args, spec.kwarg_names)
                self.actor_id, self.actor_name = spec.actor_id, spec.class_name
                self.actor = cls(*args, **kwargs)
                outcome = b""
            except Exception as e:
                self.actor_id = None
                err = RayTaskError(f"{spec.class_name}.__init__", _user_traceback(e), e)
                try:
                    outcome = serialization.serialize(err, is_error=True).to_bytes()
                except serialization.SerializationError:
                    plain = RayTaskError(f"{spec.class_name}.__init__", err.traceback_str, None)
                    outcome = serialization.serialize(plain, is_error=True).to_bytes()
            loop.call_soon_threadsafe(done.set_result, outcome)

        self._on_task_thread(construct)
        outcome = await done
        if not outcome:
            if spec.is_async:
                self._start_actor_loop(spec.max_concurrency)
            elif spec.max_concurrency > 1:
                self._actor_pool = concurrent.futures.ThreadPoolExecutor(
                    spec.max_concurrency, thread_name_prefix="aioray-actor"
                )
        return outcome

    def _start_actor_loop(self, max_concurrency: int) -> None:
        loop = new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._actor_slots = asyncio.Semaphore(max_concurrency)
            loop.call_soon(ready.set)
            loop.run_forever()

        threading.Thread(target=run, name="aioray-actor-loop", daemon=True).start()
        ready.wait()
        self._actor_loop = loop

    def _run_async_method(self, spec: TaskSpec, reply: Reply) -> None:
        loop = self._actor_loop
        assert loop is not None
        # Coroutines start in arrival order: call_soon_threadsafe keeps it.
        loop.call_soon_threadsafe(lambda: loop.create_task(self._async_method(spec, reply)))

    async def _async_method(self, spec: TaskSpec, reply: Reply) -> None:
        current = asyncio.current_task()
        assert current is not None
        self._coros[spec.task_id] = current
        try:
            await self._async_method_body(spec, reply)
        except asyncio.CancelledError:  # cancelled before it got a slot
            self._reply(reply, (*self._cancelled_result(spec), 0.0))
        finally:
            self._coros.pop(spec.task_id, None)

    async def _async_method_body(self, spec: TaskSpec, reply: Reply) -> None:
        assert self._actor_slots is not None
        async with self._actor_slots:
            start = time.perf_counter()
            ctx = self.context
            ctx.task_id, ctx.task_name = spec.task_id, self.actor_name
            try:
                fn = self._target(spec)
                args, kwargs = self.resolve_args(spec.args, spec.kwarg_names)
            except Exception as e:
                outcome = self._error_result(
                    spec, RayTaskError(spec.name, traceback.format_exc(), e), task_spec.SYSTEM_ERROR
                )
            else:
                try:
                    value = fn(*args, **kwargs)
                    if inspect.isawaitable(value):
                        value = await value
                    outcome = self._finish(spec, value)
                except asyncio.CancelledError:
                    outcome = self._cancelled_result(spec)
                except Exception as e:
                    outcome = self._error_result(
                        spec, RayTaskError(spec.name, _user_traceback(e), e), task_spec.APP_ERROR
                    )
            self._reply(reply, (*outcome, time.perf_counter() - start))


def _user_traceback(e: BaseException) -> str:
    """The traceback of the user's code, without aioray's own frames above it."""
    tb = e.__traceback__
    # Skip the executor's frame: the user's function starts one level down.
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))
