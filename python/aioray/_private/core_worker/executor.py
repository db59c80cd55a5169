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
import atexit
import collections
import collections.abc
import concurrent.futures
import contextlib
import ctypes
import functools
import inspect
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from aioray._private.common import metrics, serialization, task_spec
from aioray._private.common import task_events as te
from aioray._private.common.config import ACTOR_GRACEFUL_SHUTDOWN_TIMEOUT_S
from aioray._private.common.process import new_event_loop
from aioray._private.common.task_spec import ActorCreationSpec, TaskSpec
from aioray._private.common.worker_logs import Whose
from aioray._private.core_worker import generators
from aioray._private.core_worker.borrowing import BorrowProtocol
from aioray._private.core_worker.item_sender import ItemChannel, ItemSender
from aioray._private.core_worker.ownership import ObjectValue
from aioray._private.core_worker.runtime import Runtime
from aioray._private.core_worker.task_errors import error_frame, user_traceback
from aioray._proto.aioray import v1 as pb
from aioray.exceptions import (
    ActorDiedError,
    AsyncioActorExit,
    ObjectLostError,
    RayTaskError,
    TaskCancelledError,
)

CUDA_DEVICES = "CUDA_VISIBLE_DEVICES"

log = logging.getLogger("aioray.executor")
Reply = Callable[[task_spec.Result], None]


Outcome = tuple[bytes, int, list[tuple[Any, ...]]]
# What `execute` returns for a call that made its actor exit: no reply is sent, the caller learns
# the actor's death (and its reason) from the GCS when the worker is gone.
NO_REPLY: Outcome = (b"", -1, [])

EXECUTED = metrics.REGISTRY.counter(
    "aioray_tasks_executed_total", "Tasks and actor calls this node's workers ran, by outcome", ("status",)
)
_EXECUTED_BY_STATUS = {
    task_spec.OK: EXECUTED.labels("ok"),
    task_spec.APP_ERROR: EXECUTED.labels("error"),
    task_spec.SYSTEM_ERROR: EXECUTED.labels("system_error"),
    task_spec.CANCELLED: EXECUTED.labels("cancelled"),
}


class TaskContext(threading.local):
    task_id: bytes | None = None
    task_name: str = ""
    job_id: bytes = b""
    lease_id: bytes | None = None
    placement_group: tuple[bytes, int, bool] | None = None  # of the running task or actor
    gpu_ids: tuple[int, ...] = ()


class Executor:
    def __init__(
        self,
        runtime: Runtime,
        borrows: BorrowProtocol,
        load_function: Callable[[bytes], Any],
        read_buffer: Callable[[bytes, ObjectValue, tuple[bytes, int] | None], Any],
        write_to_store: Callable[[bytes, serialization.Frame], None],
        cancel_owned: Callable[[bytes, bool, bool], None],
        node_id: bytes,
        inline_limit: int,
        events: te.TaskEventBuffer | None = None,
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
        self.events = events if events is not None else te.TaskEventBuffer(enabled=False)
        self.flush_events: Callable[[], Coroutine[Any, Any, None]] | None = None  # before the process exits
        self.children: dict[bytes, list[bytes]] = {}  # running task id -> tasks it submitted (to cancel)
        self.context = TaskContext()
        self.actor: Any = None
        self.actor_id: bytes | None = None
        self.actor_name = ""
        self.actor_job_id = b""
        self._recent: TaskSpec | None = None  # the last task started, for output of threads of none
        self._actor_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._actor_loop: asyncio.AbstractEventLoop | None = None
        self._actor_slots: asyncio.Semaphore | None = None
        # Concurrency groups: an event loop (async actors) or a thread pool (sync ones) per group.
        self._method_groups: dict[str, str] = {}
        self._group_loops: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}
        self._group_pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self.cancelled: set[bytes] = set()
        self._running: dict[bytes, int] = {}  # task id -> ident of the thread running it
        self._running_lock = threading.Lock()
        self._coros: dict[bytes, asyncio.Task[None]] = {}
        self._item_channels: dict[bytes, ItemChannel] = {}  # generator task -> its owner's channel
        # Set once the hosted actor has begun to exit: no call runs or is answered after that.
        self.exit_reason: str | None = None
        self._exit_requested = False
        self._exit_hooks_ran = False
        self._cv = threading.Condition()
        self._task_thread: int | None = None  # the thread `serve` runs on
        # Unless the user set it, OMP_NUM_THREADS follows each task's CPUs (1 at least), as in Ray,
        # so numerical libraries do not start a thread per core of the machine in every worker.
        self._set_omp_threads = "OMP_NUM_THREADS" not in os.environ
        if self._set_omp_threads:
            os.environ["OMP_NUM_THREADS"] = "1"
        # Each task sees the GPUs of its lease; one without GPUs sees what the worker started with.
        self._original_cuda_devices = os.environ.get(CUDA_DEVICES)
        self.actor_placement_group: tuple[bytes, int, bool] | None = None
        self.actor_gpu_ids: tuple[int, ...] = ()

    def _show_gpus(self, gpu_ids: tuple[int, ...]) -> None:
        if gpu_ids:
            os.environ[CUDA_DEVICES] = ",".join(str(i) for i in gpu_ids)
        elif self._original_cuda_devices is None:
            os.environ.pop(CUDA_DEVICES, None)
        else:
            os.environ[CUDA_DEVICES] = self._original_cuda_devices

    def current_placement_group(self) -> tuple[bytes, int, bool] | None:
        """(group id, bundle index, capture) of the running task, or of the hosted actor."""
        return self.context.placement_group or self.actor_placement_group

    def current_gpu_ids(self) -> tuple[int, ...]:
        return self.context.gpu_ids or self.actor_gpu_ids

    def current_job_id(self) -> bytes:
        """The job of the running task (or hosted actor): what the tasks it submits belong to."""
        return self.actor_job_id or self.context.job_id

    def whose(self) -> Whose:
        """Whose output the calling thread writes (the markers of the worker's log files): its task's,
        or for a thread running none (one a task started), the last task's, as in Ray."""
        if self.actor_id is not None:
            return Whose(self.actor_job_id.hex(), "", self.actor_name)
        ctx = self.context
        if ctx.task_id is not None:
            return Whose(ctx.job_id.hex(), ctx.task_name)
        recent = self._recent
        return Whose(recent.job_id.hex(), recent.name) if recent is not None else Whose()

    def running(self) -> int:
        """Tasks running here now (async actor calls from their start, waiting for a slot too)."""
        return len(self._running) + len(self._coros)

    def serve(self) -> None:
        """Runs plain tasks and sync actor methods on the calling thread, forever.

        The worker's main thread calls this (its core loop runs on another thread), so a
        cancel's SIGINT interrupts what the task blocks in (``time.sleep``, a lock, ``get``)
        with KeyboardInterrupt, as in Ray. A SIGINT that is not a cancel is ignored."""
        self._task_thread = threading.get_ident()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_sigint)
        self._run()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.context.task_id is not None and self.context.task_id in self.cancelled:
            raise KeyboardInterrupt

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

    def submit(
        self, specs: list[TaskSpec], lease_id: bytes, reply: Reply, items: ItemChannel | None = None
    ) -> None:
        """From the core loop: run specs in order; `reply(result)` is called on the core loop. A
        generator task without backpressure sends its items through `items`, if given."""
        for spec in specs:
            if self.exit_reason is not None:
                continue  # the actor is exiting: its callers learn that from the GCS
            if spec.streaming and items is not None and not spec.backpressure:
                self._item_channels[spec.task_id] = items
            group = (
                (spec.concurrency_group or self._method_groups.get(spec.method, "")) if spec.actor_id else ""
            )
            if group and group not in self._group_loops and group not in self._group_pools:
                err = RayTaskError(spec.name, "", ValueError(f"the actor has no concurrency group {group!r}"))
                self._reply(reply, (*self._error_result(spec, err, task_spec.APP_ERROR), 0.0))
            elif spec.actor_id and self._actor_loop is not None:
                self._run_async_method(spec, reply, group)
            elif group:
                self._group_pools[group].submit(self._run_and_reply, spec, lease_id, reply)
            elif spec.actor_id and self._actor_pool is not None:
                self._actor_pool.submit(self._run_and_reply, spec, lease_id, reply)
            else:
                job = functools.partial(self._run_and_reply, spec, lease_id, reply)
                job.task_id = spec.task_id  # type: ignore[attr-defined]
                self._on_task_thread(job)

    def _run_and_reply(self, spec: TaskSpec, lease_id: bytes, reply: Reply) -> None:
        start = time.perf_counter()
        try:
            outcome = self.execute(spec, lease_id)
        except KeyboardInterrupt:  # a cancel landed outside the user's code
            outcome = self._cancelled_result(spec)
        finally:
            self._item_channels.pop(spec.task_id, None)
        if outcome is not NO_REPLY:
            if spec.events:
                self._record_results(spec, outcome)
            self._reply(reply, (*outcome, time.perf_counter() - start))

    def _record_results(self, spec: TaskSpec, outcome: Outcome) -> None:
        """RESULT_INLINED / RESULT_STORED per return, then FINISHED if the task succeeded (the worker
        records it, as in Ray; a failure is the owner's to record, it decides on retries). The common
        case, one return of a task that succeeded, is one record whose fields are the size alone: the
        GCS reads it as the return's event followed by FINISHED (see common.task_events)."""
        record, task_id, attempt = self.events.record, spec.task_id, spec.attempt
        returns = outcome[2]
        ok = outcome[1] == task_spec.OK
        if ok and len(returns) == 1:
            ret = returns[0]
            if ret[0] == task_spec.RET_INLINE:
                record(task_id, attempt, te.RESULT_INLINED, len(ret[1]))
            else:
                record(task_id, attempt, te.RESULT_STORED, ret[2])
            return
        for i, ret in enumerate(returns):
            if ret[0] == task_spec.RET_INLINE:
                record(task_id, attempt, te.RESULT_INLINED, (i + 1, len(ret[1])))
            else:
                record(task_id, attempt, te.RESULT_STORED, (i + 1, ret[2]))
        if ok:
            record(task_id, attempt, te.FINISHED)

    def _reply(self, reply: Reply, result: task_spec.Result) -> None:
        self._to_loop(self._send, result, reply)

    def _send(self, result: task_spec.Result, reply: Reply) -> None:
        counted = _EXECUTED_BY_STATUS.get(result[1])
        if counted is not None:
            counted.inc()
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
            builtin = self._builtin_method(spec.method)
            if builtin is not None:
                return builtin
            method: Callable[..., Any] = getattr(self.actor, spec.method)
            return method
        function: Callable[..., Any] = self._load_function(spec.function_id)
        return function

    def execute(self, spec: TaskSpec, lease_id: bytes) -> Outcome:
        task_id = spec.task_id
        if self.exit_reason is not None and spec.actor_id:
            return NO_REPLY
        if task_id in self.cancelled:
            self.cancelled.discard(task_id)
            return self._cancelled_result(spec)
        ctx = self.context
        ctx.task_id, ctx.task_name, ctx.lease_id = task_id, self.actor_name or spec.name, lease_id
        ctx.job_id = spec.job_id
        self._recent = spec
        if not spec.actor_id:
            if self._set_omp_threads:
                os.environ["OMP_NUM_THREADS"] = str(max(1, int(spec.num_cpus)))
            ctx.placement_group, ctx.gpu_ids = spec.placement_group, spec.gpu_ids
            self._show_gpus(spec.gpu_ids)
        else:
            ctx.placement_group, ctx.gpu_ids = self.actor_placement_group, self.actor_gpu_ids
        me = threading.get_ident()
        with self._running_lock:  # cancellable from here on, while its arguments are read too
            self._running[task_id] = me
        try:
            try:
                fn = self._target(spec)
                args, kwargs = self.resolve_args(spec.args, spec.kwarg_names, _task_of(spec))
            except KeyboardInterrupt:
                if task_id in self.cancelled:
                    return self._cancelled_result(spec)
                raise
            except Exception as e:
                if task_id in self.cancelled:
                    return self._cancelled_result(spec)
                err = RayTaskError(spec.name, traceback.format_exc(), e)
                return self._error_result(spec, err, task_spec.SYSTEM_ERROR)
            if task_id in self.cancelled:  # cancelled before it started (an actor method is only flagged)
                return self._cancelled_result(spec)
            if spec.events:
                self.events.record(task_id, spec.attempt, te.RUNNING)
            try:
                value = fn(*args, **kwargs)
                if spec.streaming:
                    self._stream(spec, value)
                    value = None
            except KeyboardInterrupt:
                if task_id in self.cancelled:
                    return self._cancelled_result(spec)
                raise
            except (Exception, SystemExit) as e:
                if self.exit_reason is not None and spec.actor_id:
                    return NO_REPLY  # exit_actor() raised (or was caught): the actor exits
                if task_id in self.cancelled:  # the user's code turned the interrupt into another error
                    return self._cancelled_result(spec)
                if isinstance(e, SystemExit):
                    raise
                err = RayTaskError(spec.name, user_traceback(e, __file__), e)
                return self._error_result(spec, err, task_spec.APP_ERROR)
            del args, kwargs
            if self.exit_reason is not None and spec.actor_id:
                return NO_REPLY
            if task_id in self.cancelled:  # an actor method that ran on after its cancel
                return self._cancelled_result(spec)
            return self._finish(spec, value)
        finally:
            with self._running_lock:
                del self._running[task_id]
                # A cancel that raced with the return must not hit the next task.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(me), None)
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
        if coro is not None:
            coro.get_loop().call_soon_threadsafe(coro.cancel)
            return True
        with self._running_lock:
            thread = self._running.get(task_id)
            if thread is not None:
                self.cancelled.add(task_id)
                if force:
                    # The owner sees the stream break and reports the task cancelled.
                    self._runtime.loop.call_later(0.05, os._exit, 1)
                elif self.actor_id is not None:
                    # As in Ray, an actor's running method is not interrupted (the actor has state
                    # to keep consistent): it may check get_runtime_context().is_canceled().
                    pass
                elif thread == self._task_thread and self._task_thread == threading.main_thread().ident:
                    # KeyboardInterrupt, as Ray: an `except Exception` in user code does not swallow
                    # it, and the signal wakes a thread blocked in a system call.
                    signal.pthread_kill(thread, signal.SIGINT)
                else:  # a threaded actor's method: raised at its next bytecode
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
        self,
        wire_args: list[tuple[Any, ...]],
        kwarg_names: tuple[str, ...],
        task: tuple[bytes, int] | None = None,
    ) -> tuple[list[Any], dict[str, Any]]:
        """The arguments' values; `task` (id, attempt) names the task whose pulls are its events."""
        values = []
        for arg in wire_args:
            if arg[0] == task_spec.ARG_INLINE:
                value, _ = serialization.deserialize(arg[1])
            else:
                _, oid, node_id, size, source = arg
                value = self._read_store_arg(oid, node_id, source, size, task)
            values.append(value)
        n_kw = len(kwarg_names)
        if n_kw:
            return values[:-n_kw], dict(zip(kwarg_names, values[-n_kw:], strict=True))
        return values, {}

    def _read_store_arg(
        self, oid: bytes, node_id: bytes, source: str, size: int, task: tuple[bytes, int] | None
    ) -> Any:
        buf = self._read_buffer(oid, ObjectValue(None, node_id, source, size), task)
        if buf is None:
            raise ObjectLostError(f"argument {oid.hex()} is in no reachable object store")
        value, _ = serialization.deserialize(buf)
        return value

    # -- streaming generators ----------------------------------------------------------------------
    def _stream(self, spec: TaskSpec, items: Any) -> None:
        """Runs a generator task's generator, reporting each item to the owner as it comes. With
        backpressure each report waits for the owner's answer (which it holds back while too many
        items wait for the consumer); else items go in batches (`ItemSender`), and every one has
        reached the owner before the task's result (or error) does."""
        if not inspect.isgenerator(items) and not isinstance(items, collections.abc.Iterator):
            raise TypeError(
                f"{spec.name} was called as a generator task but returned {type(items).__name__}, not a "
                "generator (an async generator runs only in an async actor)"
            )
        loop = self._runtime.loop
        if spec.backpressure:
            for index, item in enumerate(items):
                ret = self._store_one(spec, generators.item_id(spec.task_id, index), item)
                asyncio.run_coroutine_threadsafe(self._report_items(spec, [(index, ret)]), loop).result()
            return
        channel = self._item_channels.pop(spec.task_id, None)
        if channel is not None:
            sender = ItemSender(loop, functools.partial(self._send_items, channel, spec))
        else:
            sender = ItemSender(loop, functools.partial(self._report_items, spec))
        try:
            for index, item in enumerate(items):
                sender.put(index, self._store_one(spec, generators.item_id(spec.task_id, index), item))
        finally:
            sender.close()

    async def _stream_async(self, spec: TaskSpec, items: Any) -> None:
        """`_stream` for an async actor's method: an async generator (or a plain one)."""
        if not inspect.isasyncgen(items):
            await asyncio.to_thread(self._stream, spec, items)
            return
        loop = self._runtime.loop
        index = 0
        async for item in items:
            ret = self._store_one(spec, generators.item_id(spec.task_id, index), item)
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._report_items(spec, [(index, ret)]), loop)
            )
            index += 1

    async def _send_items(
        self, channel: ItemChannel, spec: TaskSpec, batch: list[tuple[int, tuple[Any, ...]]]
    ) -> None:
        """On the core loop: items over the owner's task channel; returns once it takes more."""
        if self._borrows.has_pending():  # borrows of refs inside the items are known before they are
            await self._borrows.flush_registrations()
        channel.send_items(spec.task_id, batch)
        await channel.drained()

    async def _report_items(self, spec: TaskSpec, batch: list[tuple[int, tuple[Any, ...]]]) -> None:
        """On the core loop: sends items to the owner; returns once the owner lets us go on."""
        if self._borrows.has_pending():  # borrows of refs inside the items are known before they are
            await self._borrows.flush_registrations()
        stub = self._runtime.channels.stub(spec.owner, pb.CoreWorkerStub)
        await stub.report_generator_item(pb.Blob(data=serialization.dumps_plain((spec.task_id, batch))))

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
        return [self._store_one(spec, oid, out) for oid, out in zip(spec.return_ids, outputs, strict=True)]

    def _store_one(self, spec: TaskSpec, oid: bytes, out: Any) -> tuple[Any, ...]:
        """One output as it travels to the owner: inline bytes, or where it was written to the store."""
        frame = serialization.serialize(out)
        inner = [(r.binary(), r.owner_address) for r in frame.contained_refs]
        if inner:
            self._borrows.lend_refs(inner, spec.owner)
        if frame.size <= self._inline_limit:
            return (task_spec.RET_INLINE, frame.to_bytes(), inner)
        self._write_to_store(oid, frame)
        return (task_spec.RET_STORE, self._node_id, frame.size, inner, self._runtime.raylet_address)

    def _error_result(self, spec: TaskSpec, err: RayTaskError, status: int) -> Outcome:
        frame = error_frame(err)
        return (spec.task_id, status, [(task_spec.RET_INLINE, frame, [])] * spec.num_returns)

    # -- actors --------------------------------------------------------------------------------
    async def create_actor(self, spec: ActorCreationSpec, gpu_ids: tuple[int, ...] = ()) -> bytes:
        """Runs the constructor on the task thread; b"" on success, else an error frame."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        self.actor_placement_group, self.actor_gpu_ids = spec.placement_group, gpu_ids
        self._show_gpus(gpu_ids)  # for the actor's whole life: its methods run in this process

        def construct() -> None:
            # The creation task's id is the actor's; its worker records how it ended (the GCS, not
            # the owner, hears of it first).
            task = (spec.actor_id, 0) if spec.events else None
            try:
                cls = self._load_function(spec.function_id)
                args, kwargs = self.resolve_args(spec.args, spec.kwarg_names, task)
                self.actor_id, self.actor_name = spec.actor_id, spec.class_name
                self.actor_job_id = spec.job_id
                if task is not None:
                    self.events.record(spec.actor_id, 0, te.RUNNING)
                self.actor = cls(*args, **kwargs)
                outcome = b""
            except (Exception, SystemExit) as e:
                if self.exit_reason is not None:
                    # exit_actor() in the constructor: the GCS kills this worker once it hears, so
                    # the atexit handlers run now.
                    self._run_exit_hooks(shutdown_method=False)
                    died = ActorDiedError(
                        f"the actor exited intentionally in its constructor: {self.exit_reason}"
                    )
                    outcome = serialization.serialize(died, is_error=True).to_bytes()
                elif isinstance(e, SystemExit):
                    raise
                else:
                    self.actor_id = None
                    outcome = error_frame(
                        RayTaskError(f"{spec.class_name}.__init__", user_traceback(e, __file__), e)
                    )
            if task is not None:
                if outcome:
                    self.events.record(spec.actor_id, 0, te.FAILED, te.error_fields(outcome))
                else:
                    self.events.record(spec.actor_id, 0, te.FINISHED)
            loop.call_soon_threadsafe(done.set_result, outcome)

        if spec.is_async:
            # An async actor's constructor runs on its event loop, as its methods do, so that it
            # can start asyncio tasks.
            self._actor_loop, self._actor_slots = self._new_actor_loop(spec.max_concurrency, "default")
            self._actor_loop.call_soon_threadsafe(construct)
        else:
            self._on_task_thread(construct)
        outcome = await done
        if not outcome:
            self._method_groups = dict(spec.method_groups)
            for name, size in spec.concurrency_groups.items():
                if spec.is_async:
                    self._group_loops[name] = self._new_actor_loop(size, name)
                else:
                    self._group_pools[name] = concurrent.futures.ThreadPoolExecutor(
                        size, thread_name_prefix=f"aioray-actor-{name}"
                    )
            if spec.max_concurrency > 1 and not spec.is_async:
                self._actor_pool = concurrent.futures.ThreadPoolExecutor(
                    spec.max_concurrency, thread_name_prefix="aioray-actor"
                )
        return outcome

    @property
    def hosts_async_actor(self) -> bool:
        return self._actor_loop is not None

    def _builtin_method(self, name: str) -> Callable[..., Any] | None:
        """The methods every actor has (as in Ray): `__ray_ready__`, `__ray_terminate__`, `__ray_call__`."""
        if name == "__ray_ready__":
            return _ready
        if name == "__ray_terminate__":
            return functools.partial(self.request_exit, "__ray_terminate__() was called", drain=False)
        if name == "__ray_call__":
            return functools.partial(_call_with_actor, self.actor)
        return None

    # -- graceful exit -------------------------------------------------------------------------
    def request_exit(self, reason: str, *, drain: bool, report: bool = True) -> None:
        """Any thread: the hosted actor exits gracefully: it runs `__ray_shutdown__` and the atexit
        handlers, then the process ends. With `drain`, the calls queued before this run first
        (the GCS asked, after the last handle went away); else (exit_actor(), __ray_terminate__)
        nothing more runs or is answered. With `report`, the GCS is told first, so that the actor
        is DEAD, not restarted, and its callers get `reason`."""
        with self._cv:
            if self._exit_requested:
                return
            self._exit_requested = True
            if not drain:
                self.exit_reason = reason
            job = functools.partial(self._exit, reason, report)
            if drain:
                self._queue.append(job)
            else:
                self._queue.appendleft(job)
            self._cv.notify()

    def _exit(self, reason: str, report: bool) -> None:
        """On the task thread: the end of this worker."""
        self.exit_reason = reason
        # Hooks that hang must not keep the worker: the GCS kills it too, after the same time.
        watchdog = threading.Timer(ACTOR_GRACEFUL_SHUTDOWN_TIMEOUT_S, os._exit, (1,))
        watchdog.daemon = True
        watchdog.start()
        if report and self.actor_id is not None:
            request = pb.KillActorRequest(actor_id=self.actor_id, no_restart=True, exit_reason=reason)
            stub = self._runtime.gcs(pb.ActorInfoGcsServiceStub)
            try:
                asyncio.run_coroutine_threadsafe(
                    stub.kill_actor(request, timeout=10), self._runtime.loop
                ).result(15)
            except Exception:
                log.warning("could not tell the GCS that actor %s exits", self.actor_id.hex(), exc_info=True)
        self._run_exit_hooks(shutdown_method=True)
        if self.flush_events is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.flush_events(), self._runtime.loop).result(5)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)

    def _run_exit_hooks(self, shutdown_method: bool) -> None:
        """`__ray_shutdown__` (sync or async), then the atexit handlers; once per process."""
        if self._exit_hooks_ran:
            return
        self._exit_hooks_ran = True
        hook = getattr(self.actor, "__ray_shutdown__", None) if shutdown_method else None
        if hook is not None:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    if self._actor_loop is None:
                        raise TypeError("__ray_shutdown__ is a coroutine, but the actor is not async")
                    asyncio.run_coroutine_threadsafe(_awaited(result), self._actor_loop).result()
            except Exception:
                log.exception("__ray_shutdown__ of %s raised", self.actor_name)
        try:
            atexit._run_exitfuncs()
        except Exception:
            log.exception("an atexit handler of %s raised", self.actor_name)

    def _new_actor_loop(
        self, max_concurrency: int, group: str
    ) -> tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]:
        """An event loop on a thread of its own, with a semaphore of `max_concurrency` slots."""
        loop = new_event_loop()
        ready = threading.Event()
        slots: list[asyncio.Semaphore] = []

        def quiet_exit(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # exit_actor() in an asyncio task nobody awaits: the exit is under way, not an error.
            if not isinstance(context.get("exception"), AsyncioActorExit):
                loop.default_exception_handler(context)

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.set_exception_handler(quiet_exit)
            slots.append(asyncio.Semaphore(max_concurrency))
            loop.call_soon(ready.set)
            loop.run_forever()

        threading.Thread(target=run, name=f"aioray-actor-loop-{group}", daemon=True).start()
        ready.wait()
        return loop, slots[0]

    def _run_async_method(self, spec: TaskSpec, reply: Reply, group: str) -> None:
        if group:
            loop, slots = self._group_loops[group]
        else:
            assert self._actor_loop is not None and self._actor_slots is not None
            loop, slots = self._actor_loop, self._actor_slots
        # Coroutines start in arrival order: call_soon_threadsafe keeps it.
        loop.call_soon_threadsafe(lambda: loop.create_task(self._async_method(spec, reply, slots)))

    async def _async_method(self, spec: TaskSpec, reply: Reply, slots: asyncio.Semaphore) -> None:
        current = asyncio.current_task()
        assert current is not None
        self._coros[spec.task_id] = current
        try:
            await self._async_method_body(spec, reply, slots)
        except asyncio.CancelledError:  # cancelled before it got a slot
            self._reply(reply, (*self._cancelled_result(spec), 0.0))
        finally:
            self._coros.pop(spec.task_id, None)
            self._item_channels.pop(spec.task_id, None)

    async def _async_method_body(self, spec: TaskSpec, reply: Reply, slots: asyncio.Semaphore) -> None:
        async with slots:
            start = time.perf_counter()
            ctx = self.context
            ctx.task_id, ctx.task_name = spec.task_id, self.actor_name
            if self.exit_reason is not None:
                return
            try:
                fn = self._target(spec)
                args, kwargs = self.resolve_args(spec.args, spec.kwarg_names, _task_of(spec))
            except Exception as e:
                outcome = self._error_result(
                    spec, RayTaskError(spec.name, traceback.format_exc(), e), task_spec.SYSTEM_ERROR
                )
            else:
                if spec.events:
                    self.events.record(spec.task_id, spec.attempt, te.RUNNING)
                try:
                    value = fn(*args, **kwargs)
                    if spec.streaming:
                        await self._stream_async(spec, value)
                        value = None
                    elif inspect.isawaitable(value):
                        value = await value
                    outcome = NO_REPLY if self.exit_reason is not None else self._finish(spec, value)
                except asyncio.CancelledError:
                    outcome = self._cancelled_result(spec)
                except (Exception, SystemExit) as e:
                    if self.exit_reason is not None:
                        outcome = NO_REPLY  # exit_actor(): the actor exits
                    elif isinstance(e, SystemExit):
                        raise
                    else:
                        outcome = self._error_result(
                            spec, RayTaskError(spec.name, user_traceback(e, __file__), e), task_spec.APP_ERROR
                        )
            if outcome is not NO_REPLY:
                if spec.events:
                    self._record_results(spec, outcome)
                self._reply(reply, (*outcome, time.perf_counter() - start))


def _task_of(spec: TaskSpec) -> tuple[bytes, int] | None:
    return (spec.task_id, spec.attempt) if spec.events else None


def _ready() -> bool:
    return True


def _call_with_actor(actor: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`actor.__ray_call__.remote(fn, *args)` runs ``fn(actor_instance, *args)`` in the actor."""
    return fn(actor, *args, **kwargs)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
