"""The caller's side of actors: creation through the GCS, then method calls straight to the actor.

Each actor a process calls has one queue here. Calls leave in submission
order: a call whose ObjectRef arguments are not ready holds back the calls
behind it (so one caller's calls run in order), then batches go over one
PushTasks stream to the actor's worker. When the stream breaks, the GCS says
whether the actor restarted (calls in flight are retried while
`max_task_retries` allows, else fail with RayActorError) or is dead (every
call fails with the death cause). When the actor's raylet says its memory
monitor killed the worker, the error says so (OutOfMemoryError for a call
lost to a restart, ActorDiedError naming the memory monitor for a dead actor).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from aioray._private.common import rpc, serialization, task_spec
from aioray._private.common import task_events as te
from aioray._private.core_worker.dependencies import DependencyResolver
from aioray._private.core_worker.functions import FunctionManager
from aioray._private.core_worker.lease_pool import (
    LeasedWorker,
    PendingTask,
    failure_cause,
    oom_message,
)
from aioray._private.core_worker.ownership import ObjectValue
from aioray._private.core_worker.runtime import Runtime
from aioray._private.core_worker.task_metrics import RETRIED_BY_KIND
from aioray._proto.aioray import v1 as pb
from aioray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    TaskCancelledError,
)

State = pb.ActorInfoState
SETTLE_TIMEOUT_S = 60.0


def death_error(frame: bytes) -> BaseException:
    """The error calls to a dead actor raise: an ActorDiedError carrying the constructor's error if it raised."""
    err, _ = serialization.deserialize(frame)
    if isinstance(err, RayTaskError):
        died = ActorDiedError(f"the actor died: its constructor raised.\n{err}")
        died.cause = err.cause  # type: ignore[attr-defined]
        return died
    if not isinstance(err, BaseException):
        return ActorDiedError(f"the actor died with a cause that is not an exception: {err!r}")
    return err


class CallOwner(Protocol):
    """The task submitter, as the actor client sees it: where calls are registered and end."""

    tasks: dict[bytes, PendingTask]
    dependencies: DependencyResolver
    events: te.TaskEventBuffer

    def on_result(self, p: PendingTask, result: task_spec.Result) -> None: ...
    def fail_task(self, p: PendingTask, err: BaseException) -> None: ...
    def on_generator_items(self, task_id: bytes, batch: list[tuple[int, tuple[Any, ...]]]) -> None: ...
    def note_retry(self, p: PendingTask, error_type: str, message: str) -> None: ...
    def complete(
        self,
        p: PendingTask,
        values: list[ObjectValue],
        inner: list[tuple[tuple[bytes, str], ...]] | tuple[()],
    ) -> None: ...


class ActorQueue:
    def __init__(self, client: ActorClient, actor_id: bytes) -> None:
        self.client = client
        self.actor_id = actor_id
        self.pending: collections.deque[PendingTask] = collections.deque()
        self.in_flight: dict[bytes, PendingTask] = {}
        self.lost: list[PendingTask] = []  # in flight when the stream broke
        self.stream: LeasedWorker | None = None
        self.restarts_seen = 0
        self.need_restart = False
        self.dead: BaseException | None = None
        self.node_id = b""  # of the actor's current worker
        self.broken: tuple[bytes, str] | None = None  # (node, address) of the worker whose stream broke
        self.oom: str | None = None  # the memory monitor's account, if it killed that worker
        self.wake = asyncio.Event()
        self.runner: asyncio.Task[None] | None = None

    def push(self, p: PendingTask) -> None:
        stream = self.stream
        if not self.pending and not self.lost and not p.deps and stream is not None and self.dead is None:
            # Nothing ahead of it and nothing to resolve: straight onto the channel, as the runner
            # would, without waking it (a task switch per call).
            p.worker = stream
            self.in_flight[p.spec.task_id] = p
            stream.outbox.put_nowait([p])
            return
        self.pending.append(p)
        self.wake.set()
        if self.runner is None or self.runner.done():
            self.runner = self.client.runtime.spawn(self.run())

    async def run(self) -> None:
        submitter = self.client.owner
        while True:
            if not self.pending and not self.lost:
                self.wake.clear()
                await self.wake.wait()
                continue
            if self.stream is None and self.dead is None:
                await self._connect()
            if self.lost:
                self._settle_lost()
            if self.dead is not None:
                while self.pending:
                    submitter.fail_task(self.pending.popleft(), self.dead)
                continue
            if self.stream is None:
                continue
            batch = await self._next_batch()
            if not batch or self.stream is None:  # `_next_batch` takes no call once the stream broke
                continue
            for p in batch:
                p.worker = self.stream
                self.in_flight[p.spec.task_id] = p
            self.stream.outbox.put_nowait(batch)

    async def _next_batch(self) -> list[PendingTask]:
        """Takes the calls at the head of the queue that are ready to go, in order: those without
        dependencies, up to the first one with dependencies, which is resolved (when it is first).

        Resolving may take long (an argument lost with its node is rebuilt from lineage first), and
        meanwhile the stream may break and retried calls may be put in front: a call leaves the queue
        only once it is ready and at its head, never by position after an await.
        """
        batch: list[PendingTask] = []
        while self.pending and self.stream is not None:
            p = self.pending[0]
            if p.deps:
                if batch:
                    break
                if not await self._resolve(p) or p.cancelled:  # it failed, or was cancelled meanwhile
                    with contextlib.suppress(ValueError):
                        self.pending.remove(p)
                continue  # p has no deps now: it is taken when it is at the head
            batch.append(self.pending.popleft())
        return batch

    async def _resolve(self, p: PendingTask) -> bool:
        submitter = self.client.owner
        try:
            failed = await submitter.dependencies.resolve(p.spec.args, p.deps)
        except Exception as e:
            submitter.fail_task(p, e)
            return False
        if failed is not None:
            failure = submitter.dependencies.failure_of(p.spec.name, failed)
            submitter.complete(p, [ObjectValue(failure)] * p.spec.num_returns, ())
            return False
        p.deps = []
        if p.spec.events:
            submitter.events.record(p.spec.task_id, p.spec.attempt, te.ARGS_RESOLVED)
        return True

    async def _connect(self) -> None:
        min_restarts = self.restarts_seen + 1 if self.need_restart else 0
        broken, self.broken = self.broken, None
        self.oom = await self.client.oom_cause(*broken) if broken is not None else None
        try:
            info = None
            while info is None:
                # Not settled within the GCS's wait: still pending (e.g. queued behind other actors'
                # worker starts) or restarting. As in Ray, calls wait for it until it is alive or dead.
                try:
                    info = await self.client.wait_settled(self.actor_id, min_restarts)
                except TimeoutError:
                    # The question itself waited past its deadline for a stream: a connection serves
                    # 100 calls at once, and 500 actors created at once ask 500 of them. Ask again.
                    continue
        except Exception as e:
            self.dead = RayActorError(f"the actor {self.actor_id.hex()[:12]} cannot be reached: {e}")
            return
        if info.state == State.DEAD:
            self.dead = (
                death_error(info.death_cause) if info.death_cause else ActorDiedError("the actor is dead")
            )
            if self.oom is not None:
                self.dead = ActorDiedError(
                    f"{self.dead}; its worker was killed by the memory monitor: {self.oom}"
                )
            return
        self.need_restart = False
        self.node_id = info.node_id
        self.restarts_seen = info.num_restarts
        lw = LeasedWorker(self, b"", info.address, "")
        lw.task = self.client.runtime.spawn(lw.run(self.client.runtime.task_channels))
        self.stream = lw

    def _settle_lost(self) -> None:
        lost, self.lost = sorted(self.lost, key=lambda p: p.spec.task_id), []
        retry = []
        for p in lost:
            p.worker = None
            if p.cancelled:
                self.client.owner.fail_task(p, TaskCancelledError(f"{p.spec.name} was cancelled"))
            elif self.dead is None and p.retries_left > 0:
                p.retries_left -= 1
                RETRIED_BY_KIND[1].inc()
                self.client.owner.note_retry(
                    p, "ACTOR_UNAVAILABLE", f"the actor's worker died while running {p.spec.name}"
                )
                retry.append(p)
            elif self.dead is None and self.oom is not None:
                self.client.owner.fail_task(
                    p,
                    OutOfMemoryError(
                        f"{p.spec.name} ran out of memory; the actor restarted, but the call was not "
                        f"retried (set max_task_retries to retry): {self.oom}"
                    ),
                )
            else:
                err = self.dead or ActorUnavailableError(
                    f"the actor's worker died while running {p.spec.name}; the actor restarted, but the "
                    "call was not retried (set max_task_retries to retry)"
                )
                self.client.owner.fail_task(p, err)
        self.pending.extendleft(reversed(retry))

    # -- StreamSink ----------------------------------------------------------------------------
    def on_items(self, task_id: bytes, batch: list[tuple[int, tuple[Any, ...]]]) -> None:
        self.client.owner.on_generator_items(task_id, batch)

    def on_results(self, lw: LeasedWorker, results: list[task_spec.Result]) -> None:
        submitter = self.client.owner
        for result in results:
            p = self.in_flight.pop(result[0], None)
            if p is not None:
                submitter.on_result(p, result)

    def on_worker_gone(self, lw: LeasedWorker) -> None:
        if self.stream is lw:
            self.stream = None
            self.need_restart = True
            self.broken = (self.node_id, lw.address)
            self.lost.extend(self.in_flight.values())
            self.in_flight.clear()
            self.wake.set()

    def retry(self, p: PendingTask) -> None:
        self.pending.appendleft(p)
        self.wake.set()


class ActorClient:
    def __init__(
        self,
        runtime: Runtime,
        owner: CallOwner,
        functions: FunctionManager,
        raylet_of: Callable[[bytes], str],
    ) -> None:
        """`raylet_of(node_id)` is the raylet address of a node ("" if unknown)."""
        self.runtime = runtime
        self.owner = owner
        self.functions = functions
        self.raylet_of = raylet_of
        self.queues: dict[bytes, ActorQueue] = {}

    def queue(self, actor_id: bytes) -> ActorQueue:
        q = self.queues.get(actor_id)
        if q is None:
            q = self.queues[actor_id] = ActorQueue(self, actor_id)
        return q

    def submit(self, p: PendingTask) -> None:
        """On the core loop."""
        self.owner.tasks[p.spec.task_id] = p
        if p.deps:  # to resolve them again if the actor's worker cannot read one
            p.remember_args()
        self.queue(p.spec.actor_id).push(p)

    def unqueue(self, p: PendingTask) -> None:
        q = self.queues.get(p.spec.actor_id)
        if q is not None and p in q.pending:
            q.pending.remove(p)

    def retry(self, p: PendingTask) -> None:
        self.queue(p.spec.actor_id).retry(p)

    async def wait_settled(self, actor_id: bytes, min_restarts: int = 0) -> pb.ActorInfo | None:
        """The actor's info once ALIVE (after at least `min_restarts` restarts) or DEAD; None on timeout."""
        request = pb.GetActorInfoRequest(
            actor_id=actor_id, wait_settled=True, min_restarts=min_restarts, timeout=SETTLE_TIMEOUT_S
        )
        info = await self.runtime.gcs(pb.ActorInfoGcsServiceStub).get_actor_info(
            request, timeout=SETTLE_TIMEOUT_S + 10
        )
        if info.state == State.DEAD or (info.state == State.ALIVE and info.num_restarts >= min_restarts):
            return info
        return None

    async def oom_cause(self, node_id: bytes, worker_address: str) -> str | None:
        """The memory monitor's account if it killed the actor worker at `worker_address` (asked of
        the raylet of `node_id`); None if it did not, or nobody can say."""
        raylet = self.raylet_of(node_id)
        if not raylet:
            return None
        return oom_message(await failure_cause(self.runtime.channels, raylet, b"", worker_address))

    async def create(
        self,
        request: pb.CreateActorRequest,
        deps: list[tuple[int, bytes, str]],
        spec: task_spec.ActorCreationSpec,
    ) -> pb.ActorInfo:
        await self.functions.wait_exported(spec.function_id)
        failed = await self.owner.dependencies.resolve(spec.args, deps)
        if failed is not None:
            error, _ = serialization.deserialize(failed)
            raise error.as_instanceof_cause() if isinstance(error, RayTaskError) else error
        request.spec = spec.encode()
        try:
            return await self.runtime.gcs(pb.ActorInfoGcsServiceStub).create_actor(request, timeout=30)
        except rpc.GRPCError as e:
            if e.status == rpc.Status.ALREADY_EXISTS:
                raise ValueError(e.message) from None
            raise

    async def kill(self, actor_id: bytes, no_restart: bool, only_if_not_detached: bool = False) -> None:
        request = pb.KillActorRequest(
            actor_id=actor_id, no_restart=no_restart, only_if_not_detached=only_if_not_detached
        )
        with contextlib.suppress(*rpc.CONNECTION_ERRORS):
            await self.runtime.gcs(pb.ActorInfoGcsServiceStub).kill_actor(request, timeout=10)

    def worker_killed(self, actor_id: bytes) -> None:
        """This process killed the actor's worker: its stream is dead even if it has not broken yet."""
        q = self.queues.get(actor_id)
        if q is not None and q.stream is not None:
            q.on_worker_gone(q.stream)

    async def release(self, actor_id: bytes) -> None:
        """The last handle of an actor this process owns is gone: unless it is detached, it exits
        gracefully (its queued calls, `__ray_shutdown__`, atexit handlers), as in Ray."""
        request = pb.KillActorRequest(
            actor_id=actor_id, no_restart=True, only_if_not_detached=True, graceful=True
        )
        with contextlib.suppress(*rpc.CONNECTION_ERRORS):
            await self.runtime.gcs(pb.ActorInfoGcsServiceStub).kill_actor(request, timeout=10)

    def close(self) -> None:
        for q in self.queues.values():
            if q.runner is not None:
                q.runner.cancel()
            if q.stream is not None and q.stream.task is not None:
                q.stream.task.cancel()


__all__ = ["ActorClient", "death_error"]
