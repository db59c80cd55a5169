"""The core worker: the part of every driver and worker process that owns objects and submits tasks.

It runs on one asyncio loop (the driver starts it on a background thread; a
worker process runs it on its main thread) and serves the CoreWorker gRPC
service. User threads call in through the thread-safe methods here; values
that are already local (inline, or in this node's store) are read without a
hop through the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import mmap
import os
import threading
from collections.abc import Collection, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aioray._private import object_ref as object_ref_mod
from aioray._private import rpc, serialization, task_spec
from aioray._private.actor_submitter import ActorClient
from aioray._private.executor import Executor
from aioray._private.functions import FunctionManager
from aioray._private.ids import IdGenerator, object_id
from aioray._private.object_ref import ObjectRef
from aioray._private.ownership import ObjectValue, OwnershipTable, Released
from aioray._private.pubsub import NODE_CHANNEL
from aioray._private.resources import ResourceSet
from aioray._private.spill import SPILL_THRESHOLD
from aioray._private.submitter import PendingTask, TaskSubmitter
from aioray._proto.aioray import v1 as pb
from aioray._store import ObjectStore
from aioray.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    OwnerDiedError,
    RayTaskError,
)

log = logging.getLogger("aioray.core_worker")

T = TypeVar("T")
INLINE_LIMIT = 100 * 1024  # values up to this size travel inline and live in the owner's memory
PRESSURE_CHECK_BYTES = 1 << 20  # after writing an object this large, see whether the store needs spilling


def _map_file(path: str, offset: int, size: int) -> memoryview:
    """A read-only, zero-copy view of `size` bytes at `offset` of a spill file."""
    start = offset - offset % mmap.PAGESIZE
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), size + offset - start, offset=start, prot=mmap.PROT_READ)
    return memoryview(mm)[offset - start : offset - start + size]


async def _wait_some(futures: Collection[asyncio.Future[Any]], needed: int) -> None:
    """Waits until `needed` of the futures are done, with one callback each and no task per future."""
    waiting = [f for f in futures if not f.done()]
    remaining = needed - (len(futures) - len(waiting))
    if remaining <= 0:
        return
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def count_down(_: asyncio.Future[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not finished.done():
            finished.set_result(None)

    for f in waiting:
        f.add_done_callback(count_down)
    try:
        await finished
    finally:
        for f in waiting:  # leave the futures as we found them (removing a fired callback is a no-op)
            f.remove_done_callback(count_down)


class CoreWorker(pb.CoreWorkerBase):
    def __init__(
        self,
        *,
        is_driver: bool,
        worker_id: bytes,
        node: pb.NodeInfo,
        gcs_address: str,
        token: str,
        job_id: bytes,
        loop: asyncio.AbstractEventLoop,
        namespace: str = "",
    ) -> None:
        self.is_driver = is_driver
        self.worker_id = worker_id
        self.node_id = node.node_id
        self.raylet_address = node.address
        self.gcs_address = gcs_address
        self.token = token
        self.job_id = job_id
        self.namespace = namespace
        self.loop = loop
        self.loop_thread_id: int | None = None
        self.address = ""
        self.inline_limit = INLINE_LIMIT
        self.channels = rpc.ChannelPool(token)
        self.store = ObjectStore.attach(node.store_name)
        self.ids = IdGenerator(worker_id)
        self.refs = OwnershipTable("", self._on_release)
        self.functions = FunctionManager(self)
        self.submitter = TaskSubmitter(self)
        self.actors = ActorClient(self)
        self.actor_lifetimes: dict[bytes, bytes] = {}  # lifetime object id -> actor id (owned actors)
        self.actor_tasks: set[bytes] = set()  # unfinished actor calls we own (force-cancel refuses them)
        self.children: dict[bytes, list[bytes]] = {}  # running task id -> tasks it submitted (to cancel)
        self._awaiters: dict[bytes, int] = {}
        self._spill_hinted = False
        self.dead_nodes: set[bytes] = set()
        self.spill_dir = node.spill_dir  # object id -> coroutines awaiting it right now
        self.executor: Executor | None = None if is_driver else Executor(self)
        self.node_addresses: dict[bytes, str] = {node.node_id: node.address}
        self._futures: dict[bytes, asyncio.Future[ObjectValue]] = {}
        self._fetches: dict[bytes, asyncio.Task[ObjectValue]] = {}
        self._frees: dict[str, list[bytes]] = {}
        self._unborrows: dict[str, list[bytes]] = {}
        self._lends: dict[tuple[str, str], list[bytes]] = {}
        self._borrow_senders: dict[str, asyncio.Lock] = {}
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Any = None
        self.closed = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1") -> None:
        self.loop_thread_id = threading.get_ident()
        self._server, port = await rpc.start_server([self], host, 0, self.token)
        self.address = f"{host}:{port}"
        self.refs.address = self.address
        self.spawn(self._watch_nodes())

    async def _watch_nodes(self) -> None:
        """Learns of node deaths from the GCS, to rebuild lost objects before using them."""
        with contextlib.suppress(*rpc.CONNECTION_ERRORS, rpc.GRPCError):
            async for msg in self.gcs_stub().subscribe(pb.SubscribeRequest(channels=[NODE_CHANNEL])):
                node = pb.NodeInfo().parse(msg.data)
                if node.alive:
                    self.node_addresses[node.node_id] = node.address
                    self.dead_nodes.discard(node.node_id)
                else:
                    self.dead_nodes.add(node.node_id)

    async def close(self) -> None:
        self.closed = True
        self.submitter.close()
        self.actors.close()
        for t in list(self._tasks):
            t.cancel()
        if self._server is not None:
            self._server.close()
        self.channels.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self.closed:
            log.warning("background task failed: %r", task.exception())

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.loop_thread_id

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs `coro` on the core loop from another thread and waits for it."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(
                "a blocking aioray call was made on aioray's event loop; use `await` (e.g. `await ref`) instead"
            )
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.done():
                raise  # the coroutine's own timeout error
            fut.cancel()
            raise GetTimeoutError(f"timed out after {timeout}s") from None

    def gcs_stub(self) -> pb.GcsStub:
        """The GCS stub; only on the core loop (grpclib channels belong to their loop)."""
        return self.channels.stub(self.gcs_address, pb.GcsStub)

    def raylet_for(self, node_id: bytes) -> str:
        return self.node_addresses.get(node_id, self.raylet_address)

    # -- submission (any thread) -----------------------------------------------------------------
    def prepare_args(
        self, name: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[int, bytes, str]], list[tuple[bytes, str]]]:
        """(wire args, top-level ref dependencies, every ref the call keeps alive).

        The refs are counted as submitted here, before any temporary ObjectRef of
        this call can be dropped; the caller removes the count when the call is done.
        """
        wire_args: list[tuple[Any, ...]] = []
        deps: list[tuple[int, bytes, str]] = []
        arg_refs: list[tuple[bytes, str]] = []
        for i, arg in enumerate([*args, *kwargs.values()]):
            if isinstance(arg, ObjectRef):
                dep = (arg.binary(), arg.owner_address)
            else:
                try:
                    frame = serialization.serialize(arg)
                except serialization.SerializationError as e:
                    where = (
                        f"argument {i}"
                        if i < len(args)
                        else f"keyword argument {list(kwargs)[i - len(args)]!r}"
                    )
                    raise TypeError(f"{name}: {where} cannot be sent to a worker: {e}") from None
                inner = [(r.binary(), r.owner_address) for r in frame.contained_refs]
                self.refs.add_submitted(inner)
                arg_refs.extend(inner)
                if frame.size <= self.inline_limit:
                    wire_args.append((task_spec.ARG_INLINE, frame.to_bytes()))
                    continue
                # A large argument goes through the store like a put, kept alive by the call.
                ref = self._put_frame(frame)
                dep = (ref.binary(), self.address)
            self.refs.add_submitted([dep])
            arg_refs.append(dep)
            deps.append((i, *dep))
            wire_args.append((task_spec.ARG_INLINE, b""))
        return wire_args, deps, arg_refs

    def submit_task(
        self,
        fn: Any,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        num_returns: int,
        resources: ResourceSet,
        max_retries: int,
        retry_exceptions: bool | tuple[type[BaseException], ...],
    ) -> list[ObjectRef]:
        fid, pickled = self.functions.function_id(fn)
        task_id = self.ids.task_id()
        wire_args, deps, arg_refs = self.prepare_args(name, args, kwargs)
        return_ids = [object_id(task_id, i + 1) for i in range(num_returns)]
        refs = [ObjectRef(oid, self.address) for oid in return_ids]
        self._note_child(task_id)
        spec = task_spec.TaskSpec(
            task_id, fid, name, wire_args, tuple(kwargs), num_returns, self.address, self.job_id, return_ids
        )
        pending = PendingTask(
            spec, resources, max_retries, retry_exceptions, [oid for oid, _ in arg_refs], deps
        )
        self.loop.call_soon_threadsafe(self._submit_on_loop, pending, fid, pickled)
        return refs

    def submit_actor_task(
        self,
        actor_id: bytes,
        method: str,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        num_returns: int,
        max_task_retries: int,
    ) -> list[ObjectRef]:
        task_id = self.ids.task_id()
        wire_args, deps, arg_refs = self.prepare_args(name, args, kwargs)
        return_ids = [object_id(task_id, i + 1) for i in range(num_returns)]
        refs = [ObjectRef(oid, self.address) for oid in return_ids]
        self._note_child(task_id)
        spec = task_spec.TaskSpec(
            task_id, b"", name, wire_args, tuple(kwargs), num_returns, self.address, self.job_id, return_ids,
            actor_id, method,
        )  # fmt: skip
        pending = PendingTask(
            spec, ResourceSet(), max_task_retries, False, [oid for oid, _ in arg_refs], deps
        )
        self.actor_tasks.add(task_id)
        self.loop.call_soon_threadsafe(self.actors.submit, pending)
        return refs

    def start_actor(
        self,
        cls: type,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        request: pb.CreateActorRequest,
        *,
        max_concurrency: int,
        is_async: bool,
        wait: bool,
    ) -> tuple[bytes, ObjectRef | None, concurrent.futures.Future[pb.ActorInfo]]:
        """Registers an actor with the GCS; returns its id, its lifetime ref and the GCS's answer."""
        fid, pickled = self.functions.function_id(cls)
        wire_args, deps, arg_refs = self.prepare_args(f"{cls.__name__}.__init__", args, kwargs)
        spec = task_spec.ActorCreationSpec(
            request.actor_id, fid, cls.__name__, wire_args, tuple(kwargs), max_concurrency, is_async,
            self.address, self.job_id,
        )  # fmt: skip
        request.owner_address = self.address
        request.job_id = self.job_id
        # The actor lives while this object is referenced: by its handles here and wherever they are passed.
        lifetime: ObjectRef | None = None
        if not request.detached:
            lifetime = self.put(request.actor_id)
            self.actor_lifetimes[lifetime.binary()] = request.actor_id

        async def create() -> pb.ActorInfo:
            self.functions.export(fid, pickled)
            try:
                return await self.actors.create(request, deps, spec)
            finally:
                self.refs.remove_submitted([oid for oid, _ in arg_refs])

        fut = asyncio.run_coroutine_threadsafe(create(), self.loop)
        if wait:
            fut.result(60)
        return request.actor_id, lifetime, fut

    def _note_child(self, task_id: bytes) -> None:
        """Inside a running task, remembers what it submits, for recursive cancellation."""
        if self.executor is not None:
            parent = self.executor.context.task_id
            if parent is not None:
                self.children.setdefault(parent, []).append(task_id)

    # -- cancellation ----------------------------------------------------------------------------
    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None:
        """Cancels the task that makes `ref` (any thread; returns at once)."""
        task_id = ref.task_id()
        if ref.owner_address == self.address:
            self.loop.call_soon_threadsafe(self.submitter.cancel, task_id, force, recursive)
            return

        async def forward() -> None:
            stub = self.channels.stub(ref.owner_address, pb.CoreWorkerStub)
            await stub.cancel_task(
                pb.CancelRequest(task_id=task_id, force=force, recursive=recursive), timeout=10
            )

        asyncio.run_coroutine_threadsafe(_quietly(forward()), self.loop)

    async def await_ref(self, ref: ObjectRef, cancel_on_cancel: bool = True) -> Any:
        """``await ref``: the value; if the awaiting coroutine is cancelled, the task is cancelled too,
        unless something else still needs its result (see `_abandoned`)."""
        oid = ref.binary()
        self._awaiters[oid] = self._awaiters.get(oid, 0) + 1
        try:
            return await asyncio.wrap_future(self.get_future(ref))
        except asyncio.CancelledError:
            if cancel_on_cancel and self._abandoned(ref):
                self.cancel(ref, force=False, recursive=True)
            raise
        finally:
            left = self._awaiters[oid] - 1
            if left:
                self._awaiters[oid] = left
            else:
                del self._awaiters[oid]

    def _abandoned(self, ref: ObjectRef) -> bool:
        """Whether no one but the cancelled awaiter needs this result: we own it, no other
        coroutine awaits it, no other process borrows it, no pending task takes it as an
        argument and no object contains it."""
        if ref.owner_address != self.address or self._awaiters.get(ref.binary(), 0) > 1:
            return False
        entry = self.refs.get(ref.binary())
        if entry is None or entry.value is not None:
            return False
        return not (entry.borrowers or entry.submitted or entry.contained)

    def _submit_on_loop(self, pending: PendingTask, fid: bytes, pickled: bytes) -> None:
        self.submitter.tasks[pending.spec.task_id] = pending  # cancellable from now on
        if not self.functions.is_exported(fid):
            self.functions.export(fid, pickled)
            if not pending.deps:
                self.spawn(self._export_then_submit(pending, fid))
                return
        self.submitter.submit(pending)

    async def _export_then_submit(self, pending: PendingTask, fid: bytes) -> None:
        try:
            await self.functions.wait_exported(fid)
        except Exception as e:
            self.submitter.fail_task(pending, e)
            return
        if not pending.cancelled:
            self.submitter.submit(pending)

    # -- objects: put ----------------------------------------------------------------------------
    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed: pass the ref itself, or put its value")
        return self._put_frame(serialization.serialize(value))

    def _put_frame(self, frame: serialization.Frame) -> ObjectRef:
        oid = self.ids.put_id()
        ref = ObjectRef(oid, self.address)
        inner = tuple((r.binary(), r.owner_address) for r in frame.contained_refs)
        if frame.size <= self.inline_limit:
            value = ObjectValue(frame.to_bytes())
        else:
            self.write_to_store(oid, frame)
            value = ObjectValue(None, self.node_id, self.raylet_address, frame.size)
        self.refs.set_value(oid, value, inner)
        return ref

    def write_to_store(self, oid: bytes, frame: serialization.Frame) -> None:
        """Writes a primary copy into this node's store, pinned until the owner frees it.

        When the store is full the raylet first spills other primary copies to disk; an
        object that still does not fit goes straight to the spill directory."""
        try:
            buf = self.store.create(oid, frame.size)
        except ObjectStoreFullError:
            self._spill_for(frame.size)
            try:
                buf = self.store.create(oid, frame.size)
            except ObjectStoreFullError:
                self._write_to_spill_file(oid, frame)
                return
        try:
            frame.write_into(memoryview(buf))
        except BaseException:
            buf.release()
            self.store.delete(oid)
            raise
        self.store.seal(oid)
        self.store.pin(oid)
        buf.release()
        if frame.size >= PRESSURE_CHECK_BYTES:
            self._check_pressure()

    def _raylet_call(self, make: Any, timeout: float = 120) -> Any:
        """Calls the local raylet from a non-loop thread (the stub is built on the loop)."""

        async def call() -> Any:
            return await make(self.channels.stub(self.raylet_address, pb.RayletStub))

        return self.run_sync(call(), timeout=timeout)

    def _spill_for(self, nbytes: int) -> None:
        self._raylet_call(lambda r: r.spill_objects(pb.SpillRequest(nbytes=nbytes), timeout=110))

    def _check_pressure(self) -> None:
        used, total = self.store.usage()
        if used > SPILL_THRESHOLD * total and not self._spill_hinted:
            self._spill_hinted = True

            async def hint() -> None:
                try:
                    stub = self.channels.stub(self.raylet_address, pb.RayletStub)
                    await stub.spill_objects(pb.SpillRequest(nbytes=0), timeout=120)
                finally:
                    self._spill_hinted = False

            self.loop.call_soon_threadsafe(lambda: self.spawn(_quietly(hint())))

    def _write_to_spill_file(self, oid: bytes, frame: serialization.Frame) -> None:
        """An object the store cannot hold even after spilling: written to disk, mapped by readers."""
        os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.spill_dir, f"direct-{oid.hex()}.bin")
        try:
            with open(path, "w+b") as f:
                f.truncate(frame.size)
                with mmap.mmap(f.fileno(), frame.size) as mm:
                    view = memoryview(mm)
                    try:
                        frame.write_into(view)
                    finally:
                        view.release()
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(path)
            capacity = self.store.usage()[1]
            raise ObjectStoreFullError(
                f"cannot store an object of {frame.size} bytes: the object store ({capacity} bytes) is full of "
                f"pinned objects and the spill directory {self.spill_dir} failed too ({e})"
            ) from None
        spilled = pb.SpilledObject(object_id=oid, path=path, offset=0, size=frame.size)
        self._raylet_call(lambda r: r.register_spilled(spilled, timeout=30))

    async def restore(self, oid: bytes) -> Any:
        """On the loop: a read buffer of a spilled object of this node (None if it is nowhere)."""
        stub = self.channels.stub(self.raylet_address, pb.RayletStub)
        reply = await stub.restore_object(pb.RestoreRequest(object_id=oid), timeout=300)
        if not reply.found:
            return None
        if reply.in_store:
            return self.store.get(oid)
        return _map_file(reply.path, reply.offset, reply.size)

    def local_buffer(
        self, oid: bytes, node_id: bytes | None, source: str | None = None, size: int = 0
    ) -> Any:
        """A read buffer of a store object, restored from disk or fetched as needed (not on the loop)."""
        buf = self.store.get(oid)
        if buf is not None:
            return buf
        if not node_id or node_id == self.node_id:
            return self.run_sync(self.restore(oid))
        return self.fetch_to_local_store(oid, node_id, source, size)

    # -- objects: values -------------------------------------------------------------------------
    def set_result(self, oid: bytes, value: ObjectValue, inner: tuple[tuple[bytes, str], ...]) -> None:
        """On the loop: a task's return value arrived."""
        if not self.refs.set_value(oid, value, inner, inner_registered=True):
            # Nobody wants it any more: free it at once.
            self._released([(oid, self.address, value, True, False)])
            return
        fut = self._futures.pop(oid, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _value_future(self, oid: bytes) -> asyncio.Future[ObjectValue]:
        """On the loop: the future `set_result` completes when the value of owned `oid` arrives."""
        fut = self._futures.get(oid)
        if fut is None:
            fut = self._futures[oid] = self.loop.create_future()
        return fut

    async def wait_value(self, oid: bytes, owner: str, timeout: float | None) -> ObjectValue:
        """On the loop: the object's value (location), waiting for it to exist."""
        entry = self.refs.get(oid)
        if entry is not None and entry.value is not None:
            return entry.value
        if owner == self.address:
            if entry is None:
                raise ObjectLostError(f"object {oid.hex()} was freed: no reference to it was left")
            return await asyncio.wait_for(asyncio.shield(self._value_future(oid)), timeout)
        fetch = self._fetches.get(oid)
        if fetch is None:
            fetch = self._fetches[oid] = self.loop.create_task(self._fetch_from_owner(oid, owner))
            fetch.add_done_callback(lambda _: self._fetches.pop(oid, None))
        return await asyncio.wait_for(asyncio.shield(fetch), timeout)

    async def _fetch_from_owner(self, oid: bytes, owner: str, lost: bool = False) -> ObjectValue:
        stub = self.channels.stub(owner, pb.CoreWorkerStub)
        try:
            reply = await stub.get_object(pb.GetObjectRequest(object_id=oid, lost=lost))
        except rpc.CONNECTION_ERRORS as e:
            raise OwnerDiedError(f"the owner of object {oid.hex()} ({owner}) is unreachable: {e}") from None
        if reply.status == pb.GetObjectReplyStatus.FREED:
            raise ObjectLostError(f"object {oid.hex()} was already freed by its owner")
        if reply.status == pb.GetObjectReplyStatus.LOST:
            raise ObjectLostError(reply.message)
        if reply.inline_value:
            value = ObjectValue(reply.inline_value)
        else:
            self.node_addresses.setdefault(reply.node_id, reply.node_address)
            value = ObjectValue(None, reply.node_id, reply.node_address, reply.size)
        entry = self.refs.get(oid)
        if entry is not None:
            entry.value = value
        return value

    async def recover_lost(self, ref: ObjectRef) -> ObjectValue:
        """On the loop: the value of an object whose copy could not be read, rebuilt if its node died.

        The owner re-runs the task that made it (lineage); a borrower asks the owner to.
        """
        oid = ref.binary()
        if ref.owner_address == self.address:
            await self.submitter.reconstruct(oid)
            value = self.refs.value(oid)
            if value is None:
                raise ObjectLostError(f"object {oid.hex()} was freed while it was being rebuilt")
            return value
        return await self._fetch_from_owner(oid, ref.owner_address, lost=True)

    async def _node_is_gone(self, node_id: bytes) -> bool:
        if node_id in self.dead_nodes:
            return True
        with contextlib.suppress(*rpc.CONNECTION_ERRORS, rpc.GRPCError):
            view = await self.gcs_stub().get_cluster_view(pb.Empty(), timeout=10)
            return any(n.node_id == node_id and not n.alive for n in view.nodes)
        return False

    def materialize(self, oid: bytes, value: ObjectValue, buf: Any = None) -> Any:
        """The Python value; raises the stored error. Any thread but the loop, unless `buf` is given."""
        if value.inline is not None:
            result, is_error = serialization.deserialize(value.inline)
        else:
            if buf is None:
                buf = self.local_buffer(oid, value.node_id, value.node_address, value.size)
            if buf is None:
                raise ObjectLostError(
                    f"object {oid.hex()} is not in this node's store and no copy could be fetched"
                )
            result, is_error = serialization.deserialize(buf)
        if is_error:
            if isinstance(result, RayTaskError):
                raise result.as_instanceof_cause()
            raise result
        return result

    async def fetch(self, oid: bytes, node_id: bytes, source: str, size: int) -> Any:
        """On the loop: has this node's raylet pull the object from `source`; a read buffer of the copy."""
        stub = self.channels.stub(self.raylet_address, pb.RayletStub)
        for _ in range(3):  # the fresh copy is evictable: on a busy store it may be gone before we read it
            reply = await stub.fetch_object(
                pb.FetchRequest(object_id=oid, source_address=source, size=size), timeout=600
            )
            if not reply.ok:
                raise ObjectLostError(
                    f"object {oid.hex()} could not be fetched from node {node_id.hex()[:12]} ({source}): "
                    f"{reply.message}"
                )
            buf = self.store.get(oid)
            if buf is not None:
                return buf
        return None

    def fetch_to_local_store(self, oid: bytes, node_id: bytes, source: str | None, size: int) -> Any:
        """From a non-loop thread: a read buffer of an object held by another node's store."""
        if not source:
            source = self.node_addresses.get(node_id, "")
        if not source:
            raise ObjectLostError(
                f"object {oid.hex()} lives on node {node_id.hex()[:12]}, whose address is unknown"
            )
        return self.run_sync(self.fetch(oid, node_id, source, size))

    # -- objects: get / wait (blocking, any non-loop thread) ------------------------------------
    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        values: list[ObjectValue | None] = [self.refs.value(r.binary()) for r in refs]
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            blocked = self._set_blocked(True)
            try:
                fetched = self.run_sync(self._wait_values([refs[i] for i in missing], timeout), timeout=None)
            finally:
                if blocked:
                    self._set_blocked(False)
            for i, v in zip(missing, fetched, strict=True):
                values[i] = v
        out = []
        for r, v in zip(refs, values, strict=True):
            oid = r.binary()
            buf = None
            if v.inline is None:  # type: ignore[union-attr]
                # Only a copy that cannot be read counts as lost here: an ObjectLostError stored
                # as the value (a task's own failure) is raised by materialize, never rebuilt.
                try:
                    buf = self.local_buffer(oid, v.node_id, v.node_address, v.size)  # type: ignore[union-attr]
                    if buf is None:
                        raise ObjectLostError(f"object {oid.hex()} could not be read from any store")
                except ObjectLostError:
                    # Lost with its node: rebuilt from lineage (by us or by its owner), then read anew.
                    v = self.run_sync(self.recover_lost(r))
                    if v.inline is None:
                        buf = self.local_buffer(oid, v.node_id, v.node_address, v.size)
            out.append(self.materialize(oid, v, buf))  # type: ignore[arg-type]
        return out

    async def _wait_values(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[ObjectValue]:
        # Objects this process owns are waited for through one countdown over their futures, not a
        # task per ref: a get of 100k pending refs would otherwise cost seconds and ~2 KiB a ref.
        values: list[ObjectValue | None] = [None] * len(refs)
        owned: dict[bytes, asyncio.Future[ObjectValue]] = {}
        borrowed: list[int] = []
        for i, r in enumerate(refs):
            oid = r.binary()
            entry = self.refs.get(oid)
            if entry is not None and entry.value is not None:
                values[i] = entry.value
            elif r.owner_address != self.address:
                borrowed.append(i)
            elif entry is None:
                raise ObjectLostError(f"object {oid.hex()} was freed: no reference to it was left")
            elif oid not in owned:
                owned[oid] = self._value_future(oid)
        try:
            async with asyncio.timeout(timeout):
                if borrowed:
                    fetched = await asyncio.gather(
                        *(self.wait_value(refs[i].binary(), refs[i].owner_address, None) for i in borrowed)
                    )
                    for i, v in zip(borrowed, fetched, strict=True):
                        values[i] = v
                if owned:
                    await _wait_some(owned.values(), len(owned))
        except TimeoutError:
            raise GetTimeoutError(
                f"get timed out after {timeout}s waiting for {len(refs)} object(s)"
            ) from None
        for i, r in enumerate(refs):
            if values[i] is None:
                values[i] = owned[r.binary()].result()
        return values  # type: ignore[return-value]

    async def get_async(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        values = await self._wait_values(refs, timeout)
        out = []
        for r, v in zip(refs, values, strict=True):
            try:
                buf = await self._read_buffer(r.binary(), v)
                if buf is None and v.inline is None:
                    raise ObjectLostError(f"object {r.binary().hex()} could not be read from any store")
            except ObjectLostError:
                v = await self.recover_lost(r)  # lost with its node: rebuilt from lineage
                buf = await self._read_buffer(r.binary(), v)
            out.append(self.materialize(r.binary(), v, buf))
        return out

    async def _read_buffer(self, oid: bytes, v: ObjectValue) -> Any:
        """On the loop: a read buffer of a store object (restored or fetched as needed); None if inline."""
        if v.inline is not None:
            return None
        buf = self.store.get(oid)
        if buf is None and (not v.node_id or v.node_id == self.node_id):
            buf = await self.restore(oid)
        elif buf is None and v.node_id:
            source = v.node_address or self.node_addresses.get(v.node_id, "")
            buf = await self.fetch(oid, v.node_id, source, v.size)
        return buf

    def get_future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        out: concurrent.futures.Future[Any] = concurrent.futures.Future()
        value = self.refs.value(ref.binary())
        if value is not None:
            try:
                out.set_result(self.materialize(ref.binary(), value))
            except BaseException as e:
                out.set_exception(e)
            return out

        async def resolve() -> Any:
            return (await self.get_async([ref], None))[0]

        return asyncio.run_coroutine_threadsafe(resolve(), self.loop)

    async def wait_async(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        if num_returns < 0 or num_returns > len(refs):
            raise ValueError(
                f"num_returns={num_returns} must be between 0 and the number of refs ({len(refs)})"
            )
        if len(set(refs)) != len(refs):
            raise ValueError("wait() got the same ObjectRef more than once")
        # Owned objects are watched through their futures and borrowed ones through one fetch task
        # each; a single countdown then wakes us, so a wait over n refs costs O(n), not a task per ref.
        watched: dict[asyncio.Future[Any], bytes] = {}
        fetches: list[asyncio.Task[ObjectValue]] = []
        ready_ids: set[bytes] = set()
        for r in refs:
            oid = r.binary()
            entry = self.refs.get(oid)
            if entry is not None and entry.value is not None:
                ready_ids.add(oid)
            elif r.owner_address == self.address and entry is not None:
                watched[self._value_future(oid)] = oid
            else:  # borrowed, or owned and already freed (the fetch reports that as its error)
                task = self.loop.create_task(self.wait_value(oid, r.owner_address, None))
                fetches.append(task)
                watched[task] = oid
        try:
            needed = num_returns - len(ready_ids)
            if needed > 0 and watched:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await _wait_some(watched, min(needed, len(watched)))
            ready_ids.update(oid for f, oid in watched.items() if f.done())
        finally:
            for task in fetches:
                if task.done() and not task.cancelled():
                    task.exception()  # an error counts as ready; the caller's get will raise it
                task.cancel()
        ready = [r for r in refs if r.binary() in ready_ids][: max(num_returns, 0)]
        chosen = {r.binary() for r in ready}
        return ready, [r for r in refs if r.binary() not in chosen]

    def wait(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        blocked = self._set_blocked(True)
        try:
            return self.run_sync(self.wait_async(refs, num_returns, timeout))
        finally:
            if blocked:
                self._set_blocked(False)

    def _set_blocked(self, blocked: bool) -> bool:
        """Lends (or takes back) the running task's CPU while it blocks; True if it applied."""
        if self.executor is None:
            return False
        lease_id = self.executor.context.lease_id
        if lease_id is None:
            return False
        request = pb.BlockedRequest(lease_id=lease_id, blocked=blocked)

        async def notify() -> None:
            stub = self.channels.stub(self.raylet_address, pb.RayletStub)
            await stub.notify_blocked(request, timeout=10)

        with contextlib.suppress(Exception):
            self.run_sync(notify(), timeout=15)
        return True

    # -- reference counting: releases and borrows ------------------------------------------------
    def _on_release(self, released: list[Released]) -> None:
        if self.closed:
            return
        # Primary copies in this node's store go at once, from this thread: the next
        # put then reuses memory whose pages are already faulted in.
        local = self.node_id
        for oid, _, value, owned, _ in released:
            if owned and value is not None and value.inline is None and value.node_id == local:
                with contextlib.suppress(Exception):
                    self.store.delete(oid)
        if self.in_loop_thread():
            self._released(released)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed at exit
                self.loop.call_soon_threadsafe(self._released, released)

    def _released(self, released: Iterable[Released]) -> None:
        for oid, owner, value, owned, registered in released:
            self._futures.pop(oid, None)
            if owned and self.submitter.lineage:
                self.submitter.forget_lineage(oid)
            actor_id = self.actor_lifetimes.pop(oid, None)
            if actor_id is not None:  # the last handle of an actor we own is gone
                self.spawn(self.actors.kill(actor_id, no_restart=True, only_if_not_detached=True))
            if owned and value is not None and value.inline is None and value.node_address:
                # Local ones left the store already; the raylet still drops any spilled copy.
                self._frees.setdefault(value.node_address, []).append(oid)
            elif registered:
                self._unborrows.setdefault(owner, []).append(oid)
        self._schedule_flush()

    def lend_refs(self, inner: list[tuple[bytes, str]], borrower: str) -> None:
        """Refs inside a value sent to `borrower`: register it as their borrower (task thread)."""
        mine = [oid for oid, owner in inner if owner == self.address]
        if mine:
            self.refs.add_borrower(mine, borrower)
        others = [(oid, owner) for oid, owner in inner if owner != self.address and owner != borrower]
        if others:
            with self.refs._lock:
                for oid, owner in others:
                    self._lends.setdefault((owner, borrower), []).append(oid)

    def has_pending_registrations(self) -> bool:
        return bool(self._lends) or bool(self.refs._pending_registrations)

    async def flush_registrations(self) -> None:
        """Sends borrow registrations and waits until every owner acknowledged them."""
        sends = []
        for owner, oids in self.refs.take_registrations().items():
            sends.append(self._send_borrow(owner, self.address, add=oids))
        with self.refs._lock:
            lends, self._lends = self._lends, {}
        for (owner, borrower), oids in lends.items():
            sends.append(self._send_borrow(owner, borrower, add=oids))
        if sends:
            await asyncio.gather(*sends, return_exceptions=True)

    async def _send_borrow(
        self,
        owner: str,
        borrower: str,
        add: list[bytes] = (),
        remove: list[bytes] = (),  # type: ignore[assignment]
    ) -> None:
        # One sender per owner keeps adds and removes of the same ref in order.
        lock = self._borrow_senders.setdefault(owner, asyncio.Lock())
        async with lock:
            stub = self.channels.stub(owner, pb.CoreWorkerStub)
            update = pb.BorrowerUpdate(borrower_address=borrower, add=list(add), remove=list(remove))
            try:
                await stub.update_borrowers(update, timeout=30)
            except rpc.CONNECTION_ERRORS:
                pass  # the owner is gone, and its objects with it

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        frees, self._frees = self._frees, {}
        for raylet, oids in frees.items():
            stub = self.channels.stub(raylet, pb.RayletStub)
            self.spawn(_quietly(stub.free_objects(pb.ObjectIds(ids=oids), timeout=30)))
        unborrows, self._unborrows = self._unborrows, {}
        for owner, oids in unborrows.items():
            self.spawn(self._send_borrow(owner, self.address, remove=oids))

    # -- the CoreWorker service ------------------------------------------------------------------
    async def get_object(self, get_object_request: pb.GetObjectRequest) -> pb.GetObjectReply:
        oid = get_object_request.object_id
        if oid not in self.refs:
            return pb.GetObjectReply(status=pb.GetObjectReplyStatus.FREED)
        timeout = get_object_request.timeout or None
        if get_object_request.lost:
            value = self.refs.value(oid)
            if value is not None and value.node_id and await self._node_is_gone(value.node_id):
                try:
                    await self.submitter.reconstruct(oid)
                except ObjectLostError as e:
                    return pb.GetObjectReply(status=pb.GetObjectReplyStatus.LOST, message=str(e))
        try:
            value = await self.wait_value(oid, self.address, timeout)
        except TimeoutError:
            return pb.GetObjectReply(status=pb.GetObjectReplyStatus.TIMEOUT)
        except ObjectLostError:
            return pb.GetObjectReply(status=pb.GetObjectReplyStatus.FREED)
        if value.inline is not None:
            return pb.GetObjectReply(status=pb.GetObjectReplyStatus.READY, inline_value=value.inline)
        return pb.GetObjectReply(
            status=pb.GetObjectReplyStatus.READY,
            node_id=value.node_id or b"",
            node_address=value.node_address or "",
            size=value.size,
        )

    async def update_borrowers(self, borrower_update: pb.BorrowerUpdate) -> pb.Empty:
        if borrower_update.add:
            self.refs.add_borrower(borrower_update.add, borrower_update.borrower_address)
        if borrower_update.remove:
            self.refs.remove_borrower(borrower_update.remove, borrower_update.borrower_address)
        return pb.Empty()

    async def push_tasks(self, blob_iterator: Any) -> Any:
        executor = self.executor
        if executor is None:
            raise GRPCError(Status.FAILED_PRECONDITION, "a driver does not execute tasks")
        outbox: asyncio.Queue[task_spec.Result | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for blob in blob_iterator:
                    lease_id, wire_specs = serialization.loads_plain(blob.data)
                    specs = [task_spec.TaskSpec.from_wire(t) for t in wire_specs]
                    executor.submit(specs, lease_id, outbox.put_nowait)
            finally:
                outbox.put_nowait(None)

        # The owner ends its side only once every result arrived (it returns the lease
        # when nothing is in flight), so the end of its stream is the end of ours.
        reader = self.loop.create_task(read())
        try:
            while (item := await outbox.get()) is not None:
                batch = [item]
                while not outbox.empty():
                    nxt = outbox.get_nowait()
                    if nxt is None:
                        yield pb.Blob(data=serialization.dumps_plain(batch))
                        return
                    batch.append(nxt)
                yield pb.Blob(data=serialization.dumps_plain(batch))
        finally:
            reader.cancel()

    async def create_actor(self, blob: pb.Blob) -> pb.Blob:  # the CoreWorker.CreateActor RPC
        if self.executor is None:
            raise GRPCError(Status.FAILED_PRECONDITION, "a driver does not host actors")
        spec = task_spec.ActorCreationSpec(*serialization.loads_plain(blob.data))
        outcome = await self.executor.create_actor(spec)
        if self.has_pending_registrations():
            await self.flush_registrations()
        return pb.Blob(data=outcome)

    async def cancel_task(self, cancel_request: pb.CancelRequest) -> pb.Empty:
        req = cancel_request
        # Running (or queued) here? Else it is one of ours, asked by a non-owner.
        if self.executor is None or not self.executor.cancel(req.task_id, req.force, req.recursive):
            self.submitter.cancel(req.task_id, req.force, req.recursive)
        return pb.Empty()

    async def exit(self, empty: pb.Empty) -> pb.Empty:
        self.loop.call_later(0.05, _exit_process)
        return pb.Empty()


def _exit_process() -> None:
    import os

    os._exit(0)


async def _quietly(coro: Coroutine[Any, Any, Any]) -> None:
    with contextlib.suppress(Exception):
        await coro


def connect(core: CoreWorker) -> None:
    object_ref_mod.set_global_worker(core)


__all__ = ["INLINE_LIMIT", "CoreWorker", "connect"]
