"""The core worker: the part of every driver and worker process that owns objects and submits tasks.

It runs on one asyncio loop (the driver starts it on a background thread; a
worker process runs it on its main thread) and serves the CoreWorker gRPC
service. This module wires the parts together and is the facade the public
API calls; each part receives only the collaborators it uses:

- `runtime`     the loop bridge and channels       - `nodes`      node addresses, dead nodes
- `ownership`   reference counts and values        - `borrowing`  the borrow protocol, frees
- `reader`      get / await / wait                 - `writer`     put, store writes, spilling
- `dependencies` argument packing and resolution   - `task_submitter` + `lease_pool` normal tasks
- `actor_submitter` actor creation and calls       - `executor`   running tasks, hosting an actor
- `functions`   the function table                 - `service`    the CoreWorker gRPC service
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from grpclib.client import Channel

from aioray._private.common import rpc, serialization, task_spec
from aioray._private.common import task_events as te
from aioray._private.common.config import INLINE_LIMIT
from aioray._private.common.ids import IdGenerator, object_id
from aioray._private.common.lease_shape import ACTOR_CALL_SHAPE, Placement
from aioray._private.core_worker import memory, task_channel, task_metrics
from aioray._private.core_worker import object_ref as object_ref_mod
from aioray._private.core_worker.actor_submitter import ActorClient, death_error
from aioray._private.core_worker.borrowing import BorrowProtocol
from aioray._private.core_worker.dependencies import Dependency, DependencyResolver
from aioray._private.core_worker.executor import Executor
from aioray._private.core_worker.functions import FunctionManager
from aioray._private.core_worker.generators import ObjectRefGenerator
from aioray._private.core_worker.lease_pool import PendingTask
from aioray._private.core_worker.log_dedup import LogDeduplicator
from aioray._private.core_worker.log_printer import LogPrinter
from aioray._private.core_worker.metrics_reporter import MetricsReporter
from aioray._private.core_worker.nodes import NodeDirectory
from aioray._private.core_worker.object_ref import ObjectRef
from aioray._private.core_worker.ordered_calls import OrderedCalls
from aioray._private.core_worker.ownership import ObjectValue, OwnershipTable, Released
from aioray._private.core_worker.reader import ObjectReader, is_error, report_unhandled_error
from aioray._private.core_worker.runtime import Runtime, quietly
from aioray._private.core_worker.service import CoreWorkerService
from aioray._private.core_worker.task_submitter import TaskSubmitter
from aioray._private.core_worker.writer import ObjectWriter
from aioray._proto.aioray import v1 as pb
from aioray._store import ObjectStore

T = TypeVar("T")
StubT = TypeVar("StubT")
GROUP_CHANGES_FLUSH_S = 2.0


class CoreWorker:
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
        self.metrics_export_port = node.metrics_export_port  # its node's /metrics
        self.token = token
        self.job_id = job_id
        self.namespace = namespace
        self.loop = loop
        self.runtime = runtime = Runtime(loop, token, gcs_address, node.address)
        runtime.worker_id = worker_id
        self.channels = runtime.channels
        self.store = ObjectStore.attach(node.store_name)
        self.nodes = NodeDirectory(runtime, node.node_id, node.address)
        # Placement group creations and removals not waited for, and the reads that wait for them.
        self.group_changes = OrderedCalls(runtime)
        # Task events (common.task_events): recorded here, sent to the GCS by `event_flusher`.
        self.task_events = te.TaskEventBuffer()
        self.event_flusher = te.EventFlusher(self.task_events, self._event_source, self._send_events)
        self.refs = OwnershipTable("", self._on_release)
        self.borrows = BorrowProtocol(runtime, self.refs, self.store, node.node_id, self._on_freed)
        self.functions = FunctionManager(runtime)
        self.writer = ObjectWriter(
            runtime, self.refs, self.store, IdGenerator(worker_id), node.node_id, node.spill_dir
        )
        self.ids = self.writer.ids
        self.reader = ObjectReader(
            runtime,
            self.refs,
            self.store,
            self.nodes,
            node.node_id,
            reconstruct=lambda oid: self.submitter.reconstruct(oid),
            blocking=self._set_blocked,
            cancel=lambda ref: self.cancel(ref, force=False, recursive=True),
        )
        self.dependencies = DependencyResolver(
            self.refs,
            self.writer.put_frame,
            self.reader.wait_value,
            reconstruct=lambda oid: self.submitter.reconstruct(oid),
            dead_nodes=self.nodes.dead,
            own_address=lambda: runtime.address,
            inline_limit=INLINE_LIMIT,
        )
        self.submitter = TaskSubmitter(
            runtime,
            lambda: self.job_id,
            self.refs,
            self.functions,
            self.dependencies,
            self.reader.wait_value,
            self._store_result,
            self.nodes.note,
            lambda node_id: node_id in self.nodes.dead,
            self.task_events,
        )
        self.actors = ActorClient(runtime, self.submitter, self.functions, self.nodes.address_of)
        self.submitter.actors = self.actors
        self.actor_lifetimes: dict[bytes, bytes] = {}  # lifetime object id -> actor id (owned actors)
        self.executor: Executor | None = None
        if not is_driver:
            self.executor = Executor(
                runtime,
                self.borrows,
                self.functions.load,
                self.reader.read_buffer_blocking,
                self.writer.write_to_store,
                self.submitter.cancel,
                node.node_id,
                INLINE_LIMIT,
                self.task_events,
            )
        if self.executor is not None:
            self.executor.flush_events = self.flush_events
        self._server: Any = None
        self._task_server: asyncio.Server | None = None
        self._task_port = 0
        self.metrics = MetricsReporter(runtime, worker_id)
        submitter = self.submitter
        task_metrics.register_owner(
            lambda: submitter.tasks.values(),
            lambda: sum(len(pool.queue) for pool in submitter.pools.values()),
        )
        if self.executor is not None:
            task_metrics.register_worker(self.executor.running)
        self.log_printer: LogPrinter | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.runtime.address

    @property
    def spill_dir(self) -> str:
        return self.writer.spill_dir

    @spill_dir.setter
    def spill_dir(self, path: str) -> None:
        self.writer.spill_dir = path

    @property
    def actor_tasks(self) -> set[bytes]:
        return self.submitter.actor_tasks

    def _event_source(self) -> te.Source:
        return (self.node_id, self.worker_id, os.getpid(), "driver" if self.is_driver else "worker")

    async def _send_events(self, payload: bytes) -> None:
        stub = self.runtime.gcs(pb.TaskInfoGcsServiceStub, reconnect_timeout_s=te.SEND_TIMEOUT_S)
        await stub.add_task_events(pb.Blob(data=payload), timeout=te.SEND_TIMEOUT_S)

    async def flush_events(self, timeout: float = 2.0) -> None:
        """Sends the recorded task events now (before this process exits)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.event_flusher.flush(), timeout)

    def objects_info(self) -> bytes:
        """The GetObjectsInfo answer: this process's objects (see `core_worker.memory`)."""
        process = {
            "type": "DRIVER" if self.is_driver else "WORKER",
            "pid": os.getpid(),
            "ip": rpc.split_address(self.address)[0] if self.address else "",
        }
        rows = memory.rows(self.refs.snapshot(), self.submitter.tasks, self.actor_lifetimes, process)
        return serialization.dumps_plain(rows)

    def note_nodes(self, nodes: Sequence[pb.NodeInfo]) -> None:
        for n in nodes:
            self.nodes.addresses[n.node_id] = n.address

    async def start(self, host: str = "127.0.0.1") -> None:
        self.runtime.bind_loop_thread()
        service = CoreWorkerService(
            self.refs,
            self.reader,
            self.borrows,
            self.submitter,
            self.executor,
            self.nodes.is_gone,
            lambda: self.runtime.address,
            lambda: self._task_port,
            self.objects_info,
            self.flush_events,
        )
        if self.executor is not None:
            self._task_server, self._task_port = await task_channel.serve(self.executor, self.token, host)
        component = "driver" if self.is_driver else "worker"
        self._server, port = await rpc.start_server([service], host, 0, self.token, component)
        self.runtime.address = f"{host}:{port}"
        self.refs.address = self.borrows.address = self.runtime.address
        self.runtime.spawn(self.nodes.follow())
        if self.metrics.enabled:
            self.runtime.spawn(self.metrics.run())
        self.event_flusher.start()

    async def print_worker_logs(self) -> None:
        """A driver prints its job's worker output from every node (`log_printer`); returns once
        subscribed."""
        nodes = self.nodes

        def live_raylets() -> list[str]:
            return [a for n, a in nodes.addresses.items() if n not in nodes.dead and a]

        self.log_printer = LogPrinter(
            self.runtime, self.job_id, self.node_id, live_raylets, LogDeduplicator.from_env()
        )
        await self.log_printer.start()

    async def drain_worker_logs(self) -> None:
        if self.log_printer is not None:
            await self.log_printer.drain()
            self.log_printer = None

    async def close(self) -> None:
        # Placement group changes not waited for go out first (`shutdown` gave them longer already):
        # a detached group would otherwise outlive the script that removed it.
        await self.group_changes.flush(GROUP_CHANGES_FLUSH_S)
        if self.metrics.enabled and self.is_driver:
            # Its last counts (a script that ends right after its tasks did) reach its node.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.metrics.send(), 1.0)
        await self.event_flusher.close()  # while the channels are open: the last events go out
        if self.is_driver:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.submitter.return_leases(1.0), 1.5)
        self.runtime.closed = True
        self.submitter.close()
        self.actors.close()
        if self._server is not None:
            self._server.close()
        if self._task_server is not None:
            self._task_server.close()
        self.runtime.close()
        # The lease pools' requests and streams were cancelled too: let them unwind with the rest.
        pool_tasks = [
            t
            for pool in self.submitter.pools.values()
            for t in [*pool.requests, *(lw.task for lw in pool.leases if lw.task is not None)]
        ]
        await self.runtime.drain(1.0, pool_tasks)

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.runtime.run_sync(coro, timeout)

    def gcs(self, service: Callable[[Channel], StubT], reconnect_timeout_s: float | None = None) -> StubT:
        """A stub of one of the GCS's services; on the core loop only (see `Runtime.gcs`)."""
        return self.runtime.gcs(service, reconnect_timeout_s)

    # -- submission (any thread) -----------------------------------------------------------------
    def _note_child(self, task_id: bytes) -> None:
        if self.executor is not None:
            self.executor.note_child(task_id)

    def _new_call(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        num_returns: int,
        function_id: bytes,
        actor_id: bytes = b"",
        method: str = "",
        events: bool = True,
    ) -> tuple[task_spec.TaskSpec, list[Dependency], list[bytes], list[ObjectRef]]:
        """A new task's spec, its dependencies, the refs it keeps alive and the refs of its returns."""
        task_id = self.ids.task_id()
        packed = self.dependencies.pack(name, args, kwargs)
        # Inside a task, what it submits belongs to its job (whose driver prints their output).
        job_id = self.job_id or (self.executor.current_job_id() if self.executor is not None else b"")
        return_ids = [object_id(task_id, i + 1) for i in range(num_returns)]
        refs = [ObjectRef(oid, self.address) for oid in return_ids]
        self._note_child(task_id)
        spec = task_spec.TaskSpec(
            task_id, function_id, name, packed.args, tuple(kwargs), num_returns, self.address, job_id,
            return_ids, actor_id, method,
        )  # fmt: skip
        spec.events = events and self.task_events.enabled
        return spec, packed.deps, [oid for oid, _ in packed.kept_alive], refs

    def _submitted(self, p: PendingTask, func_name: str, kind: str, placement: Placement | None) -> None:
        """Records a new task's SUBMITTED event (on the submitting thread: one tuple, one append)."""
        spec = p.spec
        parent = self.executor.context.task_id if self.executor is not None else None
        group = placement.placement_group[0] if placement is not None and placement.placement_group else b""
        p.info = (
            spec.name, func_name, kind, spec.job_id, spec.actor_id, parent or b"",
            te.plain_resources(p.shape.resources), group, bool(p.deps),
        )  # fmt: skip
        self.task_events.record(spec.task_id, 0, te.SUBMITTED, p.info)

    def submit_task(
        self,
        fn: Any,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        num_returns: int,
        placement: Placement,
        max_retries: int,
        retry_exceptions: bool | tuple[type[BaseException], ...],
        enable_task_events: bool = True,
    ) -> list[ObjectRef]:
        fid, pickled = self.functions.function_id(fn)
        spec, deps, kept, refs = self._new_call(
            name, args, kwargs, num_returns, fid, events=enable_task_events
        )
        spec.num_cpus, spec.placement_group = placement.num_cpus, placement.placement_group
        pending = PendingTask(spec, placement.shape, max_retries, retry_exceptions, kept, deps)
        if spec.events:
            self._submitted(pending, getattr(fn, "__qualname__", name), te.NORMAL_TASK, placement)
        self.runtime.call_soon(self.submitter.submit_new, pending, fid, pickled)
        return refs

    def submit_generator_task(
        self,
        fn: Any,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        placement: Placement,
        max_retries: int,
        retry_exceptions: bool | tuple[type[BaseException], ...],
        backpressure: int = 0,
        dynamic: bool = False,
        enable_task_events: bool = True,
    ) -> tuple[ObjectRefGenerator, ObjectRef]:
        """Submits a generator task: the generator of its items' refs (a retried attempt or a re-run
        yields them again; the owner keeps the first of each), and the ref of its end. With
        `dynamic` (Ray's ``num_returns="dynamic"``) that ref's value is, once the task ended, a
        DynamicObjectRefGenerator of all the items' refs."""
        fid, pickled = self.functions.function_id(fn)
        spec, deps, kept, (end,) = self._new_call(name, args, kwargs, 1, fid, events=enable_task_events)
        spec.streaming = True
        spec.num_cpus, spec.placement_group = placement.num_cpus, placement.placement_group
        spec.backpressure = backpressure
        pending = PendingTask(spec, placement.shape, max_retries, retry_exceptions, kept, deps)
        if spec.events:
            self._submitted(pending, getattr(fn, "__qualname__", name), te.NORMAL_TASK, placement)
        self.runtime.call_soon(self._open_stream, pending, backpressure, fid, pickled, dynamic)
        return ObjectRefGenerator(spec.task_id, self), end

    def _open_stream(
        self,
        p: PendingTask,
        backpressure: int,
        fid: bytes | None,
        pickled: bytes | None,
        dynamic: bool = False,
    ) -> None:
        """On the loop: the stream exists before any item can be reported, then the task goes."""
        self.submitter.generators.open(p.spec.task_id, p.spec.name, backpressure, dynamic)
        if fid is None:
            self.actors.submit(p)
        else:
            assert pickled is not None
            self.submitter.submit_new(p, fid, pickled)

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
        concurrency_group: str = "",
        enable_task_events: bool = True,
    ) -> list[ObjectRef]:
        pending, refs = self._actor_call(
            actor_id, method, name, args, kwargs, num_returns, max_task_retries, concurrency_group,
            enable_task_events,
        )  # fmt: skip
        self.runtime.call_soon(self.actors.submit, pending)
        return refs

    def _actor_call(
        self,
        actor_id: bytes,
        method: str,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        num_returns: int,
        max_task_retries: int,
        concurrency_group: str,
        enable_task_events: bool = True,
    ) -> tuple[PendingTask, list[ObjectRef]]:
        spec, deps, kept, refs = self._new_call(
            name, args, kwargs, num_returns, b"", actor_id, method, events=enable_task_events
        )
        spec.concurrency_group = concurrency_group
        self.submitter.actor_tasks.add(spec.task_id)
        pending = PendingTask(spec, ACTOR_CALL_SHAPE, max_task_retries, False, kept, deps)
        if spec.events:
            self._submitted(pending, name, te.ACTOR_TASK, None)
        return pending, refs

    def submit_actor_generator_task(
        self,
        actor_id: bytes,
        method: str,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        max_task_retries: int,
        concurrency_group: str = "",
        backpressure: int = 0,
        enable_task_events: bool = True,
    ) -> ObjectRefGenerator:
        """An actor method that yields: the generator of its items' refs."""
        pending, _ = self._actor_call(
            actor_id, method, name, args, kwargs, 1, max_task_retries, concurrency_group, enable_task_events
        )
        pending.spec.streaming = True
        pending.spec.backpressure = backpressure
        self.runtime.call_soon(self._open_stream, pending, backpressure, None, None)
        return ObjectRefGenerator(pending.spec.task_id, self)

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
        concurrency_groups: dict[str, int] | None = None,
        method_groups: dict[str, str] | None = None,
        placement_group: tuple[bytes, int, bool] | None = None,
        enable_task_events: bool = True,
    ) -> tuple[bytes, ObjectRef | None, concurrent.futures.Future[pb.ActorInfo]]:
        """Registers an actor with the GCS; returns its id, its lifetime ref and the GCS's answer."""
        fid, pickled = self.functions.function_id(cls)
        packed = self.dependencies.pack(f"{cls.__name__}.__init__", args, kwargs)
        spec = task_spec.ActorCreationSpec(
            request.actor_id, fid, cls.__name__, packed.args, tuple(kwargs), max_concurrency, is_async,
            self.address, self.job_id or (self.executor.current_job_id() if self.executor is not None else b""),
            concurrency_groups or {}, method_groups or {}, placement_group,
            enable_task_events and self.task_events.enabled,
        )  # fmt: skip
        if spec.events:  # the creation task's id is the actor's (its worker records how it ends)
            parent = self.executor.context.task_id if self.executor is not None else None
            info: te.TaskInfo = (
                f"{cls.__name__}.__init__", f"{cls.__name__}.__init__", te.ACTOR_CREATION_TASK, self.job_id,
                request.actor_id, parent or b"", dict(request.resources.amounts),
                placement_group[0] if placement_group else b"", bool(packed.deps),
            )  # fmt: skip
            self.task_events.record(request.actor_id, 0, te.SUBMITTED, info)
        request.owner_address = self.address
        request.job_id = self.job_id
        # The actor lives while this object is referenced: by its handles here and wherever they are passed.
        lifetime: ObjectRef | None = None
        if not request.detached:
            lifetime = self.put(request.actor_id)
            self.actor_lifetimes[lifetime.binary()] = request.actor_id

        kept = [oid for oid, _ in packed.kept_alive]

        async def create() -> pb.ActorInfo:
            self.functions.export(fid, pickled)
            try:
                info = await self.actors.create(request, packed.deps, spec)
            except BaseException:
                self.refs.remove_submitted(kept)
                raise
            if kept and info.actor_id == request.actor_id:  # (get_if_exists may find another one)
                self.runtime.spawn(
                    self._hold_creation_args(request.actor_id, kept, request.max_restarts != 0)
                )
            else:
                self.refs.remove_submitted(kept)
            return info

        fut = self.runtime.submit(create())
        if wait:
            fut.result(60)
        return request.actor_id, lifetime, fut

    async def _hold_creation_args(self, actor_id: bytes, kept: list[bytes], restartable: bool) -> None:
        """Keeps the refs inside an actor's constructor arguments alive until its constructor ran
        (the actor borrows what it keeps by then: a handle passed in, say), and for an actor that may
        restart until it is dead, since each restart runs the constructor again with them (Ray keeps
        them as long). The GCS answers CreateActor before the constructor runs."""
        try:
            restarts = 0
            while True:
                try:
                    info = await self.actors.wait_settled(actor_id, restarts)
                except Exception:  # the GCS is away for a moment (a restart): ask again
                    await asyncio.sleep(1.0)
                    continue
                if info is None:
                    continue  # not settled within the GCS's wait: wait again
                if info.state == pb.ActorInfoState.DEAD or not restartable:
                    return
                restarts = info.num_restarts + 1
        finally:
            self.refs.remove_submitted(kept)

    async def wait_actor_started(self, actor_id: bytes) -> None:
        """On the loop: returns once the actor is alive; raises the error its calls would raise if it died."""
        info = await self.actors.wait_settled(actor_id)
        if info is not None and info.state == pb.ActorInfoState.DEAD:
            raise death_error(info.death_cause)

    async def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        await self.actors.kill(actor_id, no_restart)
        # Its worker is gone: calls made from now on wait for the restart (or fail with the death).
        self.actors.worker_killed(actor_id)

    # -- cancellation ----------------------------------------------------------------------------
    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None:
        """Cancels the task that makes `ref` (any thread; returns at once)."""
        task_id = ref.task_id()
        if ref.owner_address == self.address:
            self.runtime.call_soon(self.submitter.cancel, task_id, force, recursive)
            return

        async def forward() -> None:
            stub = self.channels.stub(ref.owner_address, pb.CoreWorkerStub)
            await stub.cancel_task(
                pb.CancelRequest(task_id=task_id, force=force, recursive=recursive), timeout=10
            )

        self.runtime.submit(quietly(forward()))

    # -- objects ---------------------------------------------------------------------------------
    def put(self, value: Any) -> ObjectRef:
        return self.writer.put(value)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        return self.reader.get(refs, timeout)

    async def get_async(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        return await self.reader.get_async(refs, timeout)

    def get_future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        return self.reader.get_future(ref)

    async def await_ref(self, ref: ObjectRef, cancel_on_cancel: bool = True) -> Any:
        return await self.reader.await_ref(ref, cancel_on_cancel)

    def ready_future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        return self.reader.ready_future(ref)

    def wait(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        return self.reader.wait(refs, num_returns, timeout)

    async def wait_async(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        return await self.reader.wait_async(refs, num_returns, timeout)

    def _store_result(self, oid: bytes, value: ObjectValue, inner: tuple[tuple[bytes, str], ...]) -> None:
        """On the loop: a task's return value arrived."""
        if not self.reader.set_result(oid, value, inner):
            # Nobody wants it any more: free it at once.
            self.borrows.released([(oid, self.address, value, True, False)])

    def current_placement_group(self) -> tuple[bytes, int, bool] | None:
        """(group id, bundle index, capture) of the running task or actor; None in a driver."""
        return None if self.executor is None else self.executor.current_placement_group()

    def current_gpu_ids(self) -> tuple[int, ...]:
        return () if self.executor is None else self.executor.current_gpu_ids()

    def _set_blocked(self, blocked: bool) -> bool:
        """Lends (or takes back) the running task's CPU while it blocks; True if it applied."""
        if self.executor is None:
            return False
        lease_id = self.executor.context.lease_id
        if lease_id is None:
            return False
        request = pb.BlockedRequest(lease_id=lease_id, blocked=blocked)

        async def notify() -> None:
            await self.runtime.raylet(pb.NodeManagerStub).notify_blocked(request, timeout=10)

        with contextlib.suppress(Exception):
            self.run_sync(notify(), timeout=15)
        return True

    # -- releases --------------------------------------------------------------------------------
    def _on_release(self, released: list[Released]) -> None:
        self.borrows.on_release(released)

    def _on_freed(self, released: list[Released]) -> None:
        """On the loop, for released objects: forget what only mattered while they lived."""
        self.reader.forget(oid for oid, *_ in released)
        lineage, lifetimes = self.submitter.lineage, self.actor_lifetimes
        stored = self.submitter.stored_results
        for oid, _, value, owned, _ in released:
            if stored and oid in stored:
                self.submitter.note_freed(oid, value.node_id if value is not None else None)
            if owned and value is not None and not value.accessed and is_error(value):
                report_unhandled_error(value)
            if owned and lineage:
                self.submitter.forget_lineage(oid)
            actor_id = lifetimes.pop(oid, None) if lifetimes else None
            if actor_id is not None:  # the last handle of an actor we own is gone
                self.runtime.spawn(self.actors.release(actor_id))


def connect(core: CoreWorker) -> None:
    object_ref_mod.set_global_worker(core)


__all__ = ["CoreWorker", "connect"]
