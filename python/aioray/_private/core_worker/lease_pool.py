"""Worker leases (seed 000, protocol b): one queue per resource shape, the workers leased for it.

For each queue the pool asks the local raylet for worker leases (following
spillback to other nodes), then streams batches of task specs straight to each
leased worker, several in flight per worker once tasks are known to be short,
and reuses the lease until the queue is empty; a lease idle for a moment is
returned. A worker that dies takes its in-flight tasks with it: they are
queued again while `retries_left` allows, else fail with WorkerCrashedError, or
with OutOfMemoryError when the raylet says its memory monitor killed the worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioray._private.common import rpc, task_spec
from aioray._private.common.lease_shape import LeaseShape
from aioray._private.core_worker import task_channel
from aioray._private.core_worker.task_metrics import RETRIED_BY_KIND
from aioray._proto.aioray import v1 as pb
from aioray.exceptions import (
    OutOfMemoryError,
    RayError,
    RuntimeEnvSetupError,
    TaskCancelledError,
    WorkerCrashedError,
)

log = logging.getLogger("aioray.submitter")

PIPELINE_DEPTH = 16  # tasks in flight per leased worker, once tasks are known to be short
SHORT_TASK_S = 0.005  # pipelining only pays for tasks shorter than this; longer ones would queue
MAX_LEASE_REQUESTS = 8  # outstanding lease requests per queue
LEASE_IDLE_S = 0.05  # keep an idle lease this long for the next task
MAX_BATCH = 256
LEASE_RETRY_S = 60.0  # how long to keep asking for a worker while raylets come and go
MAX_SPILLBACK_HOPS = 8
FAILURE_CAUSE_TIMEOUT_S = 2.0  # how long to ask a raylet why a worker died before assuming a crash


class TaskUnschedulableError(RayError):
    """No node of the cluster can ever provide the resources the task asks for."""


@dataclass(eq=False)
class PendingTask:
    spec: task_spec.TaskSpec
    shape: LeaseShape
    retries_left: int
    retry_exceptions: bool | tuple[type[BaseException], ...]
    arg_refs: list[bytes]  # refs this task keeps alive (submitted counts) until it finishes
    deps: list[tuple[int, bytes, str]] = field(default_factory=list)  # (arg index, oid, owner)
    worker: LeasedWorker | None = None  # where it was pushed, once it was
    cancelled: bool = False
    # The args and dependencies before resolution, kept to re-run the task from lineage.
    original: tuple[list[tuple[Any, ...]], list[tuple[int, bytes, str]]] | None = None
    arg_losses: int = 0  # times a worker could not read its store arguments (their node died)
    info: Any = None  # its SUBMITTED event's TaskInfo (common.task_events), recorded again per attempt

    def remember_args(self) -> None:
        """Keeps the args and dependencies as submitted, before resolution fills them in: to run the
        task again from lineage, or after a worker could not read an argument."""
        if self.original is None:
            self.original = (list(self.spec.args), list(self.deps))


class StreamSink(Protocol):
    def on_results(self, lw: LeasedWorker, results: list[task_spec.Result]) -> None: ...
    def on_worker_gone(self, lw: LeasedWorker) -> None: ...
    def on_items(self, task_id: bytes, batch: task_channel.Batch) -> None: ...


class TaskOwner(Protocol):
    """What a lease pool reports to the submitter that owns its tasks."""

    def on_result(self, p: PendingTask, result: task_spec.Result) -> None: ...
    def fail_task(self, p: PendingTask, err: BaseException) -> None: ...
    def on_generator_items(self, task_id: bytes, batch: task_channel.Batch) -> None: ...
    def note_retry(self, p: PendingTask, error_type: str, message: str) -> None: ...


async def failure_cause(
    channels: rpc.ChannelPool, raylet_address: str, lease_id: bytes, worker_address: str
) -> pb.WorkerFailureCause | None:
    """Why a worker died, as its raylet recorded it; None if the raylet cannot say."""
    request = pb.WorkerFailureCauseRequest(lease_id=lease_id, worker_address=worker_address)
    try:
        stub = channels.stub(raylet_address, pb.NodeManagerStub)
        return await stub.get_worker_failure_cause(request, timeout=FAILURE_CAUSE_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the raylet died too, or is older: a plain crash then
        log.debug("raylet %s cannot say why worker %s died: %r", raylet_address, worker_address, e)
        return None


def oom_message(cause: pb.WorkerFailureCause | None) -> str | None:
    """The memory monitor's account, if it killed the worker."""
    if cause is not None and cause.kind == pb.WorkerFailureCauseKind.OUT_OF_MEMORY:
        return cause.message
    return None


class Outbox:
    """Batches for a worker: written to its task channel at once while it is open, kept until then
    (None ends the channel)."""

    def __init__(self, lw: LeasedWorker) -> None:
        self._lw = lw
        self._pending: collections.deque[list[PendingTask] | None] = collections.deque()
        self._end: task_channel.OwnerEnd | None = None

    def put_nowait(self, batch: list[PendingTask] | None) -> None:
        if self._end is None:
            self._pending.append(batch)
        else:
            self._write(batch)

    def attach(self, end: task_channel.OwnerEnd) -> None:
        self._end = end
        while self._pending:
            self._write(self._pending.popleft())

    def _write(self, batch: list[PendingTask] | None) -> None:
        assert self._end is not None
        if batch is None:
            self._end.end()
            return
        lw = self._lw
        for p in batch:
            p.spec.gpu_ids = lw.gpu_ids
        self._end.send(task_spec.encode_batch(lw.lease_id, [p.spec for p in batch]))

    def get_nowait(self) -> list[PendingTask] | None:
        """The oldest batch not written yet (for tests that run without a worker)."""
        return self._pending.popleft()

    def empty(self) -> bool:
        return not self._pending


def data_raylet(args: list[tuple[Any, ...]]) -> str:
    """The raylet of the node holding most bytes of a task's store arguments ("" if none). Tasks
    queue per data node too (as Ray's scheduling keys include the dependencies): a lease near one
    task's data is not reused for a task whose data is elsewhere."""
    sizes: dict[str, int] = {}
    for arg in args:
        if arg[0] == task_spec.ARG_STORE and arg[4]:
            sizes[arg[4]] = sizes.get(arg[4], 0) + arg[3]
    return max(sizes, key=sizes.__getitem__) if sizes else ""


class LeasedWorker:
    """One open task channel to a worker: a leased one, or an actor's."""

    def __init__(
        self,
        sink: StreamSink,
        lease_id: bytes,
        address: str,
        raylet_address: str,
        gpu_ids: tuple[int, ...] = (),
    ) -> None:
        self.sink = sink
        self.gpu_ids = gpu_ids  # the lease's GPUs: every task pushed to it runs with them visible
        self.lease_id = lease_id
        self.address = address
        self.raylet_address = raylet_address
        self.in_flight: dict[bytes, PendingTask] = {}
        self.outbox = Outbox(self)
        self.idle_timer: asyncio.TimerHandle | None = None
        self.dead = False
        self.task: asyncio.Task[None] | None = None
        self.failure: pb.WorkerFailureCause | None = None  # why it died, if its raylet said
        self._closed: asyncio.Future[None] | None = None

    async def run(self, channels: task_channel.TaskChannels) -> None:
        """Sends batches to the worker and takes results back until closed or broken."""
        self._closed = asyncio.get_running_loop().create_future()
        end: task_channel.OwnerEnd | None = None
        try:
            end = await channels.open(self.address, self)
            self.outbox.attach(end)
            # Returns when the worker closes the channel after we ended ours; raises when the
            # connection breaks, e.g. because the worker died.
            await self._closed
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the worker died or the connection broke
            log.debug("lease %s broke: %r", self.lease_id.hex()[:8], e)
            channels.forget(self.address)
            self.dead = True  # no more tasks for it while we ask its raylet why it died
            if self.raylet_address and self.in_flight:
                self.failure = await failure_cause(
                    channels.channels, self.raylet_address, self.lease_id, self.address
                )
        finally:
            self.dead = True
            if end is not None and end.transport is not None:
                end.transport.close()
            self.sink.on_worker_gone(self)

    # -- task_channel.ResultSink ---------------------------------------------------------------
    def on_frame(self, results: list[task_spec.Result]) -> None:
        self.sink.on_results(self, results)

    def on_items(self, task_id: bytes, batch: task_channel.Batch) -> None:
        self.sink.on_items(task_id, batch)

    def on_closed(self, error: BaseException | None) -> None:
        if self._closed is not None and not self._closed.done():
            if error is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(error)


class RayletClient(Protocol):
    """How a lease pool talks to raylets (the NodeManager service); faked in unit tests."""

    async def request_lease(self, address: str, request: pb.LeaseRequest) -> pb.LeaseReply: ...
    def return_lease(self, address: str, lease_id: bytes) -> None: ...
    def forget(self, address: str) -> None: ...
    def start_stream(self, lw: LeasedWorker) -> asyncio.Task[None]: ...


class LeasePool:
    """The queue of one resource shape and the workers leased for it."""

    def __init__(
        self,
        owner: TaskOwner,
        raylets: RayletClient,
        shape: LeaseShape,
        local_raylet: str,
        own_address: str,
        job_id: bytes,
        data_raylet: str = "",
    ) -> None:
        self.owner = owner
        self.raylets = raylets
        self.shape = shape
        self.data_raylet = data_raylet  # where this queue's tasks' store arguments mostly are
        self.local_raylet = local_raylet
        self.own_address = own_address
        self.job_id = job_id
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
        # The n-th request in flight is asked for the n-th queued task (its events name it).
        task = asyncio.get_running_loop().create_task(self._lease(len(self.requests)))
        self.requests.add(task)
        task.add_done_callback(self.requests.discard)

    async def _lease(self, index: int = 0) -> None:
        """Leases a worker: from the local raylet (or the one holding the next task's arguments),
        following spillback; a raylet that is gone or shutting down sends us back to the local
        raylet to try again, for up to LEASE_RETRY_S."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASE_RETRY_S
        last_error = ""
        address = self._preferred_raylet()
        while loop.time() < deadline:
            queue = self.queue
            head = queue[index] if index < len(queue) else queue[0] if queue else None
            request = self.shape.lease_request(
                self.own_address,
                self.job_id,
                # Lets the memory monitor kill retriable work first (a queued task stands for it).
                retriable=head is not None and head.retries_left > 0,
            )
            if head is not None and head.spec.events:  # the raylets record its scheduling events
                request.task_id, request.attempt = head.spec.task_id, head.spec.attempt
            for _ in range(MAX_SPILLBACK_HOPS):
                try:
                    reply = await self.raylets.request_lease(address, request)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self.raylets.forget(address)
                    last_error = f"raylet {address} is unreachable: {e}"
                    break
                if reply.status == pb.LeaseReplyStatus.GRANTED:
                    lw = LeasedWorker(
                        self, reply.lease_id, reply.worker_address, address, tuple(reply.gpu_ids)
                    )
                    self.leases.append(lw)
                    lw.task = self.raylets.start_stream(lw)
                    current = asyncio.current_task()
                    if current is not None:
                        self.requests.discard(current)
                    self.pump()
                    return
                if reply.status == pb.LeaseReplyStatus.SPILLBACK:
                    address = reply.retry_address
                    request.no_spillback = True
                    continue
                if reply.status == pb.LeaseReplyStatus.RUNTIME_ENV_FAILED:
                    self._fail_queue(RuntimeEnvSetupError(reply.message))
                    return
                if reply.status == pb.LeaseReplyStatus.INFEASIBLE:
                    self._fail_queue(TaskUnschedulableError(f"task cannot be scheduled: {reply.message}"))
                    return
                last_error = f"raylet {address}: {reply.message or 'too many spillback hops'}"
                break
            address = self.local_raylet
            await asyncio.sleep(0.2)
        self._fail_queue(
            WorkerCrashedError(f"could not lease a worker within {LEASE_RETRY_S:.0f}s: {last_error}")
        )

    def _preferred_raylet(self) -> str:
        """Where to ask for a lease: the raylet of the node holding most bytes of this queue's
        tasks' store arguments (Ray's locality-aware leasing, for the DEFAULT strategy), else ours."""
        if self.data_raylet and not self.shape.strategy:
            return self.data_raylet
        return self.local_raylet

    def _fail_queue(self, err: BaseException) -> None:
        while self.queue:
            self.owner.fail_task(self.queue.popleft(), err)

    def _return(self, lw: LeasedWorker) -> None:
        lw.idle_timer = None
        if lw.in_flight or lw.dead or self.queue:
            return
        self._drop(lw)
        lw.outbox.put_nowait(None)
        self.raylets.return_lease(lw.raylet_address, lw.lease_id)

    def release_idle(self) -> None:
        """Hands back the leases running nothing now (while no task waits for one)."""
        for lw in list(self.leases):
            if lw.in_flight or lw.dead or self.queue:
                continue
            if lw.idle_timer is not None:
                lw.idle_timer.cancel()
            self._return(lw)

    def _drop(self, lw: LeasedWorker) -> None:
        with contextlib.suppress(ValueError):
            self.leases.remove(lw)

    def remove(self, p: PendingTask) -> bool:
        """Takes a task that was not pushed yet off the queue."""
        if p in self.queue:
            self.queue.remove(p)
            return True
        return False

    # -- StreamSink ----------------------------------------------------------------------------
    def on_items(self, task_id: bytes, batch: task_channel.Batch) -> None:
        self.owner.on_generator_items(task_id, batch)

    def on_results(self, lw: LeasedWorker, results: list[task_spec.Result]) -> None:
        for result in results:
            duration = result[3]
            self.avg_exec_s = duration if self.avg_exec_s is None else 0.8 * self.avg_exec_s + 0.2 * duration
            p = lw.in_flight.pop(result[0], None)
            if p is not None:
                self.owner.on_result(p, result)
        self.pump()

    def on_worker_gone(self, lw: LeasedWorker) -> None:
        self._drop(lw)
        if lw.idle_timer is not None:
            lw.idle_timer.cancel()
        crashed, lw.in_flight = list(lw.in_flight.values()), {}
        oom = oom_message(lw.failure)
        for p in crashed:
            p.worker = None
            if p.cancelled:
                self.owner.fail_task(
                    p, TaskCancelledError(f"{p.spec.name} was cancelled (its worker was killed)")
                )
            elif p.retries_left > 0:
                p.retries_left -= 1
                RETRIED_BY_KIND[0].inc()
                self.owner.note_retry(
                    p,
                    "OUT_OF_MEMORY" if oom is not None else "WORKER_DIED",
                    oom or f"the worker running {p.spec.name} died",
                )
                self.queue.appendleft(p)
                if oom is not None:
                    log.warning("%s is retried (%d retries left): %s", p.spec.name, p.retries_left, oom)
            elif oom is not None:
                self.owner.fail_task(
                    p, OutOfMemoryError(f"{p.spec.name} ran out of memory and has no retries left: {oom}")
                )
            else:
                self.owner.fail_task(
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
