"""The owner's side of task execution: resolve dependencies, queue by shape, take results, keep lineage.

Tasks wait in one `LeasePool` per (resource shape, function), as Ray's
scheduling keys; actor calls go to the actor's queue (`actor_submitter`).
Results land in the owner's ownership table; an application error is retried
while `max_retries` and `retry_exceptions` allow. Finished tasks whose outputs
live in a store are kept as lineage, to be re-run if a node loses them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aioray._private.common import bundles, serialization, task_spec
from aioray._private.common import task_events as te
from aioray._private.common.lease_shape import LeaseShape
from aioray._private.core_worker.dependencies import DependencyResolver
from aioray._private.core_worker.functions import FunctionManager
from aioray._private.core_worker.generators import GeneratorStreams
from aioray._private.core_worker.lease_pool import (
    LeasedWorker,
    LeasePool,
    PendingTask,
    TaskUnschedulableError,
    data_raylet,
)
from aioray._private.core_worker.ownership import ObjectValue, OwnershipTable
from aioray._private.core_worker.runtime import Runtime, quietly
from aioray._private.core_worker.task_metrics import FAILED_BY_KIND, FINISHED_BY_KIND, RETRIED_BY_KIND
from aioray._proto.aioray import v1 as pb
from aioray.exceptions import ObjectLostError, TaskCancelledError

# A task whose store arguments were lost this many times fails with the ObjectLostError.
MAX_ARG_LOSSES = 5
# How long to wait for the GCS to declare an argument's node dead before resolving it again.
NODE_DEATH_WAIT_S = 15.0


class ActorCalls(Protocol):
    """The actor side of submission, for calls that are retried or cancelled before they left."""

    def retry(self, p: PendingTask) -> None: ...
    def unqueue(self, p: PendingTask) -> None: ...


StoreResult = Callable[[bytes, ObjectValue, tuple[tuple[bytes, str], ...]], None]
WaitValue = Callable[[bytes, str, float | None], Awaitable[ObjectValue]]


class GrpcRaylets:
    """The lease pools' way to the raylets: the NodeManager service over the core worker's channels."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def request_lease(self, address: str, request: pb.LeaseRequest) -> pb.LeaseReply:
        # Raylets release our leases when the GCS says this worker died, and refuse requests
        # that arrive after the news.
        request.owner_worker_id = self._runtime.worker_id
        return await self._runtime.channels.stub(address, pb.NodeManagerStub).request_worker_lease(request)

    def return_lease(self, address: str, lease_id: bytes) -> None:
        stub = self._runtime.channels.stub(address, pb.NodeManagerStub)
        request = pb.ReturnLeaseRequest(lease_id=lease_id)
        self._runtime.spawn(stub.return_worker_lease(request, timeout=10))

    def forget(self, address: str) -> None:
        self._runtime.channels.drop(address)

    def start_stream(self, lw: LeasedWorker) -> asyncio.Task[None]:
        return self._runtime.loop.create_task(lw.run(self._runtime.task_channels))


class TaskSubmitter:
    def __init__(
        self,
        runtime: Runtime,
        job_id: Callable[[], bytes],
        refs: OwnershipTable,
        functions: FunctionManager,
        dependencies: DependencyResolver,
        wait_value: WaitValue,
        store_result: StoreResult,
        note_node: Callable[[bytes, str], None],
        node_is_dead: Callable[[bytes], bool],
        events: te.TaskEventBuffer | None = None,
    ) -> None:
        self._runtime = runtime
        self._job_id = job_id
        self._refs = refs
        self._functions = functions
        self.dependencies = dependencies
        self._wait_value = wait_value
        self._store_result = store_result
        self._note_node = note_node
        self.actors: ActorCalls | None = None  # set by the core worker once its actor client exists
        self.raylets = GrpcRaylets(runtime)
        self.pools: dict[tuple[LeaseShape, bytes, str], LeasePool] = {}
        self.tasks: dict[bytes, PendingTask] = {}  # every unfinished task this process owns
        self.actor_tasks: set[bytes] = set()  # unfinished actor calls (force-cancel refuses them)
        # Finished tasks whose outputs live in a store, kept to re-run them if a node loses them.
        self.lineage: dict[bytes, PendingTask] = {}
        self._node_is_dead = node_is_dead
        self._rebuilt_from: dict[bytes, set[bytes]] = {}  # generator task -> nodes whose items it rebuilt
        self.events = events if events is not None else te.TaskEventBuffer(enabled=False)
        # Returns of tasks with events that live in a store: object id -> (task id, attempt), to
        # record RESULT_FREED when the owner frees them.
        self.stored_results: dict[bytes, tuple[bytes, int]] = {}
        self.generators = GeneratorStreams(refs, lambda: runtime.address, store_result, node_is_dead)

    # -- submission ----------------------------------------------------------------------------
    def submit_new(self, p: PendingTask, fid: bytes, pickled: bytes) -> None:
        """On the loop: a new task from the user; its function is exported first if it was not yet."""
        self.tasks[p.spec.task_id] = p  # cancellable from now on
        if not self._functions.is_exported(fid):
            self._functions.export(fid, pickled)
            if not p.deps:
                self._runtime.spawn(self._export_then_submit(p, fid))
                return
        self.submit(p)

    async def _export_then_submit(self, p: PendingTask, fid: bytes) -> None:
        try:
            await self._functions.wait_exported(fid)
        except Exception as e:
            self.fail_task(p, e)
            return
        if not p.cancelled:
            self.submit(p)

    def submit(self, p: PendingTask) -> None:
        """On the loop: resolve dependencies, then queue."""
        self.tasks[p.spec.task_id] = p
        p.remember_args()
        if p.deps:
            self._runtime.spawn(self._resolve_then_queue(p))
        else:
            self._queue(p)

    async def _resolve_then_queue(self, p: PendingTask) -> None:
        try:
            await self._functions.wait_exported(p.spec.function_id)
            failed = await self.dependencies.resolve(p.spec.args, p.deps)
        except Exception as e:
            self.fail_task(p, e)
            return
        if failed is not None:  # a failed dependency fails the task (see `failure_of`)
            failure = self.dependencies.failure_of(p.spec.name, failed)
            self.complete(p, [ObjectValue(failure)] * p.spec.num_returns, ())
        elif not p.cancelled:
            if p.spec.events:
                self.events.record(p.spec.task_id, p.spec.attempt, te.ARGS_RESOLVED)
            self._queue(p)

    def _pool(self, p: PendingTask) -> LeasePool | None:
        return self.pools.get((p.shape, p.spec.function_id, data_raylet(p.spec.args)))

    def _queue(self, p: PendingTask) -> None:
        # One queue per (shape, function, data node), as Ray's scheduling keys: run times differ by
        # function, and a lease near one task's data should not serve a task whose data is elsewhere.
        key = (p.shape, p.spec.function_id, data_raylet(p.spec.args))
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = LeasePool(
                self,
                self.raylets,
                p.shape,
                self._runtime.raylet_address,
                self._runtime.address,
                self._job_id(),
                key[2],
            )
        pool.queue.append(p)
        pool.pump()

    def retry(self, p: PendingTask) -> None:
        if p.spec.actor_id:
            assert self.actors is not None
            self.actors.retry(p)
        else:
            self._queue(p)

    # -- results -------------------------------------------------------------------------------
    def on_result(self, p: PendingTask, result: task_spec.Result) -> None:
        _, status, returns, _ = result
        if status == task_spec.SYSTEM_ERROR and self._lost_an_argument(p, returns[0]):
            p.arg_losses += 1
            self._runtime.spawn(self._resubmit_after_arg_loss(p))
            return
        retryable = status == task_spec.APP_ERROR and not p.cancelled and p.retries_left > 0
        if retryable and self._retryable(p, returns[0]):
            p.retries_left -= 1
            RETRIED_BY_KIND[bool(p.spec.actor_id)].inc()
            if p.spec.events:
                fields = te.error_fields(returns[0][1])
                self.note_retry(p, fields["error_type"], fields["error_message"])
            self.retry(p)
            return
        decoded = [self._decode_return(ret) for ret in returns]
        self.complete(p, [v for v, _ in decoded], [inner for _, inner in decoded])

    def _decode_return(self, ret: tuple[Any, ...]) -> tuple[ObjectValue, tuple[tuple[bytes, str], ...]]:
        if ret[0] == task_spec.RET_INLINE:
            return ObjectValue(ret[1]), tuple(ret[2])
        node_id, size, inner, raylet = ret[1], ret[2], ret[3], ret[4]
        self._note_node(node_id, raylet)
        return ObjectValue(None, node_id, raylet, size), tuple(inner)

    def on_generator_items(self, task_id: bytes, batch: list[tuple[int, tuple[Any, ...]]]) -> None:
        """Items of a generator task this process owns, from its task channel (no backpressure)."""
        for index, ret in batch:
            self.generators.accept(task_id, index, ret, self._decode_return)

    async def on_generator_item(self, task_id: bytes, index: int, ret: tuple[Any, ...]) -> None:
        """An item of a generator task this process owns; returns when its producer may go on."""
        await self.generators.on_item(task_id, index, ret, self._decode_return)

    @staticmethod
    def _lost_an_argument(p: PendingTask, ret: tuple[Any, ...]) -> bool:
        """The worker could not read a store argument: its copy died with its node after the
        task was dispatched. That is no failure of the task's: it runs again once the argument is
        rebuilt (as Ray's pull manager waits for a lost argument's reconstruction)."""
        if p.cancelled or p.original is None or p.arg_losses >= MAX_ARG_LOSSES:
            return False
        try:
            err, _ = serialization.deserialize(ret[1])
        except Exception:
            return False
        return isinstance(getattr(err, "cause", err), ObjectLostError)

    async def _resubmit_after_arg_loss(self, p: PendingTask) -> None:
        assert p.original is not None
        args, deps = p.original
        p.worker = None
        self.note_retry(p, "OBJECT_LOST", "an argument was lost with its node; it runs again once rebuilt")
        await self.dependencies.await_lost_copies(deps, NODE_DEATH_WAIT_S)
        if p.cancelled:  # cancel() failed it meanwhile
            return
        p.spec.args, p.deps = list(args), list(deps)
        if p.spec.actor_id:  # the actor's queue resolves them again, in order
            self.retry(p)
        else:
            self.submit(p)

    @staticmethod
    def _retryable(p: PendingTask, ret: tuple[Any, ...]) -> bool:
        if p.retry_exceptions is False:
            return False
        if p.retry_exceptions is True:
            return True
        try:
            err, _ = serialization.deserialize(ret[1])
        except Exception:
            return False
        cause = getattr(err, "cause", err)
        return isinstance(cause, p.retry_exceptions)

    def complete(
        self,
        p: PendingTask,
        values: list[ObjectValue],
        inner: list[tuple[tuple[bytes, str], ...]] | tuple[()],
        end_recorded: bool = False,
    ) -> None:
        if self.tasks.pop(p.spec.task_id, None) is None:
            return  # completed already (e.g. cancelled while its result was on the way)
        self.actor_tasks.discard(p.spec.task_id)
        first = values[0].inline if values else None
        failed = first is not None and serialization.peek_flags(first)[1]
        (FAILED_BY_KIND if failed else FINISHED_BY_KIND)[bool(p.spec.actor_id)].inc()
        if p.spec.events and not end_recorded:
            self._record_end(p, values)
        if p.spec.streaming:
            # Its items were recorded as they came: its result only says how the stream ended.
            error = first if failed else None
            self.generators.finish(p.spec.task_id, error, p.spec.return_ids[0])
            if not p.spec.actor_id:
                self.lineage[p.spec.task_id] = p  # to re-run it if a node loses an item
            if p.arg_refs:
                self._refs.remove_submitted(p.arg_refs)
            return
        if not p.spec.actor_id and any(v.inline is None for v in values):
            self.lineage[p.spec.task_id] = p
        if p.spec.events:
            for oid, value in zip(p.spec.return_ids, values, strict=True):
                if value.inline is None:
                    self.stored_results[oid] = (p.spec.task_id, p.spec.attempt)
        for i, (oid, value) in enumerate(zip(p.spec.return_ids, values, strict=True)):
            self._store_result(oid, value, inner[i] if inner else ())
        if p.arg_refs:
            self._refs.remove_submitted(p.arg_refs)

    def fail_task(self, p: PendingTask, err: BaseException) -> None:
        frame = serialization.serialize(err, is_error=True).to_bytes()
        recorded = p.spec.num_returns == 0 and p.spec.events and p.spec.task_id in self.tasks
        if recorded:  # no return carries the error: record it from the exception itself
            fields = {"error_type": te.error_type_of(err), "error_message": str(err)[:2000]}
            kind = te.CANCELLED if fields["error_type"] == "TASK_CANCELLED" else te.FAILED
            self.events.record(p.spec.task_id, p.spec.attempt, kind, fields)
        self.complete(p, [ObjectValue(frame)] * p.spec.num_returns, (), end_recorded=recorded)

    # -- task events ---------------------------------------------------------------------------
    def _record_end(self, p: PendingTask, values: list[ObjectValue]) -> None:
        """A failure ends the attempt here; a success was recorded (FINISHED) by its worker."""
        first = values[0].inline if values else None
        if first is not None and serialization.peek_flags(first)[1]:
            fields = te.error_fields(first)
            kind = te.CANCELLED if fields["error_type"] == "TASK_CANCELLED" else te.FAILED
            self.events.record(p.spec.task_id, p.spec.attempt, kind, fields)

    def note_retry(self, p: PendingTask, error_type: str, message: str) -> None:
        """This attempt failed and the task runs again: RETRIED ends it, the next attempt begins."""
        spec = p.spec
        if spec.events:
            fields = {"error_type": error_type, "error_message": message[:2000]}
            self.events.record(spec.task_id, spec.attempt, te.RETRIED, fields)
        self.note_resubmit(p)

    def note_resubmit(self, p: PendingTask) -> None:
        spec = p.spec
        spec.attempt += 1
        if spec.events:
            self.events.record(spec.task_id, spec.attempt, te.SUBMITTED, p.info)

    def note_freed(self, oid: bytes, node_id: bytes | None) -> None:
        """On the loop: the owner freed a stored return of a task with events."""
        task = self.stored_results.pop(oid, None)
        if task is not None:
            self.events.record(
                task[0], task[1], te.RESULT_FREED, {"object_id": oid, "node_id": node_id or b""}
            )

    # -- lineage -------------------------------------------------------------------------------
    async def reconstruct(self, oid: bytes) -> None:
        """Re-runs the task that made `oid` (an object lost with its node) and waits for the new copy."""
        task_id = oid[: len(oid) - 4]
        p = self.lineage.get(task_id)
        if p is None or p.original is None:
            raise ObjectLostError(
                f"object {oid.hex()} was lost with its node and cannot be rebuilt: only the outputs of tasks "
                "can be reconstructed (objects made by put() cannot)"
            )
        current = self._refs.get(oid)
        node = current.value.node_id if current is not None and current.value is not None else None
        if p.spec.streaming and node is not None:
            # One re-run rebuilds every item of a lost node; a late request for an item it already
            # put on another (live) node must not run the generator once more.
            lost_nodes = self._rebuilt_from.setdefault(task_id, set())
            if lost_nodes and node not in lost_nodes and not self._node_is_dead(node):
                return
            lost_nodes.add(node)
        if task_id not in self.tasks:
            lost = [*p.spec.return_ids, oid]
            if p.spec.streaming:  # every item that was on the same node is lost too: one re-run for all
                for item in self.generators.items.get(task_id, ()):
                    item_entry = self._refs.get(item)
                    if (
                        item_entry is not None
                        and item_entry.value is not None
                        and item_entry.value.node_id == node
                    ):
                        lost.append(item)
            for rid in lost:
                entry = self._refs.get(rid)
                if entry is not None:
                    entry.value = None
            args, deps = p.original
            p.spec.args, p.deps = list(args), list(deps)
            p.worker, p.cancelled = None, False
            self.note_resubmit(p)  # a re-run from lineage is a new attempt
            self._refs.add_submitted([(dep_oid, owner) for _, dep_oid, owner in deps])
            p.arg_refs = [dep_oid for _, dep_oid, _ in deps]
            self.submit(p)
        await self._wait_value(oid, self._runtime.address, None)

    def forget_lineage(self, oid: bytes) -> None:
        p = self.lineage.get(oid[: len(oid) - 4])
        if p is None:
            return
        if p.spec.streaming:
            if not self.generators.item_alive(p.spec.task_id):
                del self.lineage[p.spec.task_id]
                self.generators.forget(p.spec.task_id)
                self._rebuilt_from.pop(p.spec.task_id, None)
        elif not any(rid in self._refs for rid in p.spec.return_ids):
            del self.lineage[p.spec.task_id]

    # -- cancellation --------------------------------------------------------------------------
    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        """On the loop: cancels a task this process owns (a no-op once it finished)."""
        p = self.tasks.get(task_id)
        if p is None:
            return
        p.cancelled = True
        lw = p.worker
        if lw is None:
            # Not pushed yet: queued here, waiting for its arguments, or behind other actor calls.
            if p.spec.actor_id:
                assert self.actors is not None
                self.actors.unqueue(p)
            else:
                pool = self._pool(p)
                if pool is not None:
                    pool.remove(p)
            self.fail_task(p, TaskCancelledError(f"{p.spec.name} was cancelled before it started"))
            return
        stub = self._runtime.channels.stub(lw.address, pb.CoreWorkerStub)
        request = pb.CancelRequest(task_id=task_id, force=force, recursive=recursive)
        self._runtime.spawn(quietly(stub.cancel_task(request, timeout=10)))

    async def return_leases(self, timeout: float) -> None:
        """Hands every lease back at once (a driver leaving a long-lived cluster): raylets learn of
        their own workers' deaths, not of a driver's, so its leases would stay held. A worker still
        running one of our tasks is not reused."""
        calls = [
            self._runtime.channels.stub(lw.raylet_address, pb.NodeManagerStub).return_worker_lease(
                pb.ReturnLeaseRequest(lease_id=lw.lease_id, worker_failed=bool(lw.in_flight)), timeout=timeout
            )
            for pool in self.pools.values()
            for lw in pool.leases
            if lw.raylet_address and lw.lease_id and not lw.dead
        ]
        if calls:
            await asyncio.gather(*calls, return_exceptions=True)

    def release_group_leases(self, pg_id: bytes) -> None:
        """A placement group this process removed: its idle leases go back now, so that no task
        sent after the removal runs on a worker of the group that its raylet is about to kill."""
        for (shape, _, _), pool in self.pools.items():
            if bundles.group_of(shape.resources.to_dict()) == pg_id:
                pool.release_idle()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


__all__ = ["PendingTask", "TaskSubmitter", "TaskUnschedulableError"]
