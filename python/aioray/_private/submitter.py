"""The owner's side of task execution: resolve dependencies, lease workers, push tasks, take results.

Tasks wait in one queue per resource shape. For each queue the submitter asks
the local raylet for worker leases (following spillback to other nodes), then
streams batches of task specs straight to each leased worker, several in
flight per worker, and reuses the lease until the queue is empty; a lease idle
for a moment is returned. A worker that dies takes its in-flight tasks with
it: they are retried while `max_retries` allows, else fail with
WorkerCrashedError.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from grpclib.const import Cardinality

from aioray._private import rpc, serialization, task_spec
from aioray._private.ownership import ObjectValue
from aioray._private.resources import ResourceSet
from aioray._proto.aioray import v1 as pb
from aioray.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    RayError,
    TaskCancelledError,
    WorkerCrashedError,
)

if TYPE_CHECKING:
    from aioray._private.core_worker import CoreWorker

log = logging.getLogger("aioray.submitter")

PIPELINE_DEPTH = 16  # tasks in flight per leased worker, once tasks are known to be short
SHORT_TASK_S = 0.005  # pipelining only pays for tasks shorter than this; longer ones would queue
MAX_LEASE_REQUESTS = 8  # outstanding lease requests per queue
LEASE_IDLE_S = 0.05  # keep an idle lease this long for the next task
MAX_BATCH = 256
LEASE_RETRY_S = 60.0  # how long to keep asking for a worker while raylets come and go


class TaskUnschedulableError(RayError):
    """No node of the cluster can ever provide the resources the task asks for."""


@dataclass(eq=False)
class PendingTask:
    spec: task_spec.TaskSpec
    shape: ResourceSet
    retries_left: int
    retry_exceptions: bool | tuple[type[BaseException], ...]
    arg_refs: list[bytes]  # refs this task keeps alive (submitted counts) until it finishes
    deps: list[tuple[int, bytes, str]] = field(default_factory=list)  # (arg index, oid, owner)
    worker: LeasedWorker | None = None  # where it was pushed, once it was
    cancelled: bool = False
    original: tuple[list[tuple[Any, ...]], list[tuple[int, bytes, str]]] | None = (
        None  # args before resolution
    )


class StreamSink(Protocol):
    def on_results(self, lw: LeasedWorker, results: list[task_spec.Result]) -> None: ...
    def on_worker_gone(self, lw: LeasedWorker) -> None: ...


class LeasedWorker:
    """One open PushTasks stream to a worker: a leased one, or an actor's."""

    def __init__(self, pool: StreamSink, lease_id: bytes, address: str, raylet_address: str) -> None:
        self.pool = pool
        self.lease_id = lease_id
        self.address = address
        self.raylet_address = raylet_address
        self.in_flight: dict[bytes, PendingTask] = {}
        self.outbox: asyncio.Queue[list[PendingTask] | None] = asyncio.Queue()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.dead = False
        self.task: asyncio.Task[None] | None = None

    async def run(self, channels: rpc.ChannelPool) -> None:
        """Streams batches to the worker and results back until closed or broken."""
        channel = channels.channel(self.address)
        try:
            async with channel.request(
                "/aioray.v1.CoreWorker/PushTasks", Cardinality.STREAM_STREAM, pb.Blob, pb.Blob
            ) as stream:
                await stream.send_request()
                sender = asyncio.get_running_loop().create_task(self._send(stream))
                try:
                    # Returns when the worker ends the stream (after we ended ours); raises
                    # when the connection breaks, e.g. because the worker died.
                    await self._read(stream)
                finally:
                    sender.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the worker died or the connection broke
            log.debug("lease %s broke: %r", self.lease_id.hex()[:8], e)
            channels.drop(self.address)
        finally:
            self.dead = True
            self.pool.on_worker_gone(self)

    async def _send(self, stream: Any) -> None:
        with contextlib.suppress(*rpc.CONNECTION_ERRORS):  # the reader sees the same break
            while (batch := await self.outbox.get()) is not None:
                payload = (self.lease_id, [p.spec.to_wire() for p in batch])
                await stream.send_message(pb.Blob(data=serialization.dumps_plain(payload)))
            await stream.end()

    async def _read(self, stream: Any) -> None:
        while (msg := await stream.recv_message()) is not None:
            self.pool.on_results(self, serialization.loads_plain(msg.data))


class LeasePool:
    """The queue of one resource shape and the workers leased for it."""

    def __init__(self, submitter: TaskSubmitter, shape: ResourceSet) -> None:
        self.submitter = submitter
        self.shape = shape
        self.avg_exec_s: float | None = None  # moving average of the function's run time
        self.queue: collections.deque[PendingTask] = collections.deque()
        self.leases: list[LeasedWorker] = []
        self.requests: set[asyncio.Task[None]] = set()

    def pump(self) -> None:
        """Pushes queued tasks to leased workers and asks for more leases as needed."""
        queue = self.queue
        # Keep one queued task per lease on its way, so a new lease gets work at once
        # instead of everything piling up on the first worker.
        reserve = len(self.requests)
        batches: dict[LeasedWorker, list[PendingTask]] = {}
        while len(queue) > 0:
            live = [lw for lw in self.leases if not lw.dead]
            if not live:
                break
            lw = min(live, key=lambda w: len(w.in_flight))
            short = self.avg_exec_s is not None and self.avg_exec_s < SHORT_TASK_S
            depth = PIPELINE_DEPTH if short and len(queue) > reserve else 1
            if len(lw.in_flight) >= depth:
                break
            p = queue.popleft()
            p.worker = lw
            lw.in_flight[p.spec.task_id] = p
            batches.setdefault(lw, []).append(p)
        for lw, batch in batches.items():
            if lw.idle_timer is not None:
                lw.idle_timer.cancel()
                lw.idle_timer = None
            for i in range(0, len(batch), MAX_BATCH):
                lw.outbox.put_nowait(batch[i : i + MAX_BATCH])
        wanted = min(len(queue), MAX_LEASE_REQUESTS) - len(self.requests)
        for _ in range(wanted):
            self._request_lease()
        if not queue:
            for t in list(self.requests):
                t.cancel()
            for lw in self.leases:
                if not lw.in_flight and lw.idle_timer is None and not lw.dead:
                    lw.idle_timer = asyncio.get_running_loop().call_later(LEASE_IDLE_S, self._return, lw)

    def _request_lease(self) -> None:
        task = asyncio.get_running_loop().create_task(self._lease())
        self.requests.add(task)
        task.add_done_callback(self.requests.discard)

    async def _lease(self) -> None:
        """Leases a worker: from the local raylet, following spillback; a raylet that is gone or
        shutting down sends us back to the local raylet to try again, for up to LEASE_RETRY_S."""
        core = self.submitter.core
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASE_RETRY_S
        last_error = ""
        while loop.time() < deadline:
            address = core.raylet_address
            request = pb.LeaseRequest(
                resources=pb.ResourceMap(amounts=self.shape.to_dict()),
                owner_address=core.address,
                job_id=core.job_id,
            )
            for _ in range(8):  # spillback hops
                stub = core.channels.stub(address, pb.RayletStub)
                try:
                    reply = await stub.request_worker_lease(request)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    core.channels.drop(address)
                    last_error = f"raylet {address} is unreachable: {e}"
                    break
                if reply.status == pb.LeaseReplyStatus.GRANTED:
                    lw = LeasedWorker(self, reply.lease_id, reply.worker_address, address)
                    self.leases.append(lw)
                    lw.task = loop.create_task(lw.run(core.channels))
                    self.requests.discard(asyncio.current_task())  # type: ignore[arg-type]
                    self.pump()
                    return
                if reply.status == pb.LeaseReplyStatus.SPILLBACK:
                    address = reply.retry_address
                    request.no_spillback = True
                    continue
                if reply.status == pb.LeaseReplyStatus.INFEASIBLE:
                    self._fail_queue(TaskUnschedulableError(f"task cannot be scheduled: {reply.message}"))
                    return
                last_error = f"raylet {address}: {reply.message or 'too many spillback hops'}"
                break
            await asyncio.sleep(0.2)
        self._fail_queue(
            WorkerCrashedError(f"could not lease a worker within {LEASE_RETRY_S:.0f}s: {last_error}")
        )

    def _fail_queue(self, err: BaseException) -> None:
        while self.queue:
            self.submitter.fail_task(self.queue.popleft(), err)

    def _return(self, lw: LeasedWorker) -> None:
        lw.idle_timer = None
        if lw.in_flight or lw.dead or self.queue:
            return
        self._drop(lw)
        lw.outbox.put_nowait(None)
        core = self.submitter.core
        stub = core.channels.stub(lw.raylet_address, pb.RayletStub)
        core.spawn(stub.return_worker_lease(pb.ReturnLeaseRequest(lease_id=lw.lease_id), timeout=10))

    def _drop(self, lw: LeasedWorker) -> None:
        with contextlib.suppress(ValueError):
            self.leases.remove(lw)

    def on_results(self, lw: LeasedWorker, results: list[task_spec.Result]) -> None:
        for result in results:
            duration = result[3]
            self.avg_exec_s = duration if self.avg_exec_s is None else 0.8 * self.avg_exec_s + 0.2 * duration
            p = lw.in_flight.pop(result[0], None)
            if p is not None:
                self.submitter.on_result(p, result)
        self.pump()

    def on_worker_gone(self, lw: LeasedWorker) -> None:
        self._drop(lw)
        if lw.idle_timer is not None:
            lw.idle_timer.cancel()
        crashed, lw.in_flight = list(lw.in_flight.values()), {}
        for p in crashed:
            p.worker = None
            if p.cancelled:
                self.submitter.fail_task(
                    p, TaskCancelledError(f"{p.spec.name} was cancelled (its worker was killed)")
                )
            elif p.retries_left > 0:
                p.retries_left -= 1
                self.queue.appendleft(p)
            else:
                self.submitter.fail_task(
                    p,
                    WorkerCrashedError(
                        f"the worker running {p.spec.name} died (it crashed or was killed); "
                        "no retries left (set max_retries to retry)"
                    ),
                )
        self.pump()

    def close(self) -> None:
        for t in list(self.requests):
            t.cancel()
        for lw in list(self.leases):
            if lw.task is not None:
                lw.task.cancel()


class TaskSubmitter:
    def __init__(self, core: CoreWorker) -> None:
        self.core = core
        self.pools: dict[tuple[ResourceSet, bytes], LeasePool] = {}
        self.tasks: dict[bytes, PendingTask] = {}  # every unfinished task this process owns
        # Finished tasks whose outputs live in a store, kept to re-run them if a node loses them.
        self.lineage: dict[bytes, PendingTask] = {}

    def submit(self, p: PendingTask) -> None:
        """On the core loop: resolve dependencies, then queue."""
        self.tasks[p.spec.task_id] = p
        if p.original is None:
            p.original = (list(p.spec.args), list(p.deps))
        if p.deps:
            self.core.spawn(self._resolve_then_queue(p))
        else:
            self._queue(p)

    async def resolve_dependencies(
        self, args: list[tuple[Any, ...]], deps: list[tuple[int, bytes, str]]
    ) -> bytes | None:
        """Waits for the ref arguments and fills them into `args` (inline values, or where in which
        store). Returns the error frame of a dependency that failed, if one did."""
        core = self.core
        for index, oid, owner in deps:
            value = await core.wait_value(oid, owner, timeout=None)
            if value.inline is None and owner == core.address and value.node_id in core.dead_nodes:
                await self.reconstruct(oid)  # its node died: rebuild it first
                value = await core.wait_value(oid, owner, timeout=None)
            if value.inline is not None:
                if serialization.peek_flags(value.inline)[1]:
                    return value.inline
                args[index] = (task_spec.ARG_INLINE, value.inline)
            else:
                args[index] = (task_spec.ARG_STORE, oid, value.node_id, value.size, value.node_address)
        return None

    async def _resolve_then_queue(self, p: PendingTask) -> None:
        try:
            await self.core.functions.wait_exported(p.spec.function_id)
            failed = await self.resolve_dependencies(p.spec.args, p.deps)
        except Exception as e:
            self.fail_task(p, e)
            return
        if failed is not None:  # a failed dependency fails the task with the same error
            self.complete(p, [ObjectValue(failed)] * p.spec.num_returns, ())
        elif not p.cancelled:
            self._queue(p)

    def retry(self, p: PendingTask) -> None:
        if p.spec.actor_id:
            self.core.actors.retry(p)
        else:
            self._queue(p)

    def _queue(self, p: PendingTask) -> None:
        # One queue per (shape, function), as Ray's scheduling keys: run times differ by function.
        key = (p.shape, p.spec.function_id)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = LeasePool(self, p.shape)
        pool.queue.append(p)
        pool.pump()

    def on_result(self, p: PendingTask, result: task_spec.Result) -> None:
        _, status, returns, _ = result
        retryable = status == task_spec.APP_ERROR and not p.cancelled and p.retries_left > 0
        if retryable and self._retryable(p, returns[0]):
            p.retries_left -= 1
            self.retry(p)
            return
        values = []
        inner_all: list[tuple[tuple[bytes, str], ...]] = []
        for ret in returns:
            if ret[0] == task_spec.RET_INLINE:
                values.append(ObjectValue(ret[1]))
                inner_all.append(tuple(ret[2]))
            else:
                node_id, size, inner, raylet = ret[1], ret[2], ret[3], ret[4]
                self.core.node_addresses.setdefault(node_id, raylet)
                values.append(ObjectValue(None, node_id, raylet, size))
                inner_all.append(tuple(inner))
        self.complete(p, values, inner_all)

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

    def complete(self, p: PendingTask, values: list[ObjectValue], inner: Any) -> None:
        core = self.core
        if self.tasks.pop(p.spec.task_id, None) is None:
            return  # completed already (e.g. cancelled while its result was on the way)
        core.actor_tasks.discard(p.spec.task_id)
        if not p.spec.actor_id and any(v.inline is None for v in values):
            self.lineage[p.spec.task_id] = p
        for i, (oid, value) in enumerate(zip(p.spec.return_ids, values, strict=True)):
            refs_inside = inner[i] if inner else ()
            core.set_result(oid, value, refs_inside)
        if p.arg_refs:
            core.refs.remove_submitted(p.arg_refs)

    async def reconstruct(self, oid: bytes) -> None:
        """Re-runs the task that made `oid` (an object lost with its node) and waits for the new copy."""
        core = self.core
        task_id = oid[: len(oid) - 4]
        p = self.lineage.get(task_id)
        if p is None or p.original is None:
            raise ObjectLostError(
                f"object {oid.hex()} was lost with its node and cannot be rebuilt: only the outputs of tasks "
                "can be reconstructed (objects made by put() cannot)"
            )
        if task_id not in self.tasks:
            for rid in p.spec.return_ids:
                entry = core.refs.get(rid)
                if entry is not None:
                    entry.value = None
            args, deps = p.original
            p.spec.args, p.deps = list(args), list(deps)
            p.worker, p.cancelled = None, False
            core.refs.add_submitted([(dep_oid, owner) for _, dep_oid, owner in deps])
            p.arg_refs = [dep_oid for _, dep_oid, _ in deps]
            self.submit(p)
        await core.wait_value(oid, core.address, None)

    def forget_lineage(self, oid: bytes) -> None:
        p = self.lineage.get(oid[: len(oid) - 4])
        if p is not None and not any(rid in self.core.refs for rid in p.spec.return_ids):
            del self.lineage[p.spec.task_id]

    def fail_task(self, p: PendingTask, err: BaseException) -> None:
        frame = serialization.serialize(err, is_error=True).to_bytes()
        self.complete(p, [ObjectValue(frame)] * p.spec.num_returns, ())

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        """On the core loop: cancels a task this process owns (a no-op once it finished)."""
        p = self.tasks.get(task_id)
        if p is None:
            return
        p.cancelled = True
        lw = p.worker
        if lw is None:
            # Not pushed yet: queued here, waiting for its arguments, or behind other actor calls.
            if p.spec.actor_id:
                self.core.actors.unqueue(p)
            else:
                pool = self.pools.get((p.shape, p.spec.function_id))
                if pool is not None and p in pool.queue:
                    pool.queue.remove(p)
            self.fail_task(p, TaskCancelledError(f"{p.spec.name} was cancelled before it started"))
            return
        stub = self.core.channels.stub(lw.address, pb.CoreWorkerStub)
        request = pb.CancelRequest(task_id=task_id, force=force, recursive=recursive)
        self.core.spawn(_ignore_errors(stub.cancel_task(request, timeout=10)))

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


async def _ignore_errors(coro: Any) -> None:
    with contextlib.suppress(Exception):
        await coro


__all__ = ["GetTimeoutError", "PendingTask", "TaskSubmitter", "TaskUnschedulableError"]
