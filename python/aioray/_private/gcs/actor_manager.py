"""The GCS actor manager: actor table, named-actor registry, scheduling, restarts and kills.

Creating an actor leases a dedicated worker from a raylet whose node fits the
actor's resources, then asks that worker to run the constructor. When the
worker dies, the actor restarts elsewhere (a new lease, the constructor again)
while `max_restarts` allows; else, or when killed, it is DEAD with a cause
that every later call raises.

Each actor is stored (`ActorRecord`: its info, its creation request and its
current lease) at every change of state or lease. Creations and kills are
stored before the caller hears back. A restarted GCS reloads them: ALIVE and
DEAD actors stay as they were (named actors are found by name again), actors
that were PENDING or RESTARTING give back the lease they may have held and are
scheduled again, without that counting as a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import betterproto

from aioray._private.common import proto_enums, rpc, serialization
from aioray._private.common.config import ACTOR_GRACEFUL_SHUTDOWN_TIMEOUT_S
from aioray._private.common.resources import ResourceSet
from aioray._private.gcs.storage import Tables
from aioray._proto.aioray import v1 as pb
from aioray.exceptions import ActorDiedError, RayActorError, RuntimeEnvSetupError

log = logging.getLogger("aioray.gcs")
State = pb.ActorInfoState
CREATE_TIMEOUT_S = 300.0
LEASE_RETRY_S = 30.0
LEASE_RETRY_PAUSE_S = 0.2
TABLE = "actors"


@dataclass(eq=False, repr=False)
class ActorRecord(betterproto.Message):
    """How the actor table stores one actor (a GCS-internal record, not part of any RPC; betterproto
    fields are dataclass fields, hence the noqa)."""

    info: pb.ActorInfo = betterproto.message_field(1)  # noqa: RUF009
    request: pb.CreateActorRequest = betterproto.message_field(2)  # noqa: RUF009
    raylet_address: str = betterproto.string_field(3)  # of the current lease
    lease_id: bytes = betterproto.bytes_field(4)
    killed: bool = betterproto.bool_field(5)


@dataclass(eq=False)
class Actor:
    info: pb.ActorInfo
    request: pb.CreateActorRequest
    resources: ResourceSet
    raylet_address: str = ""
    lease_id: bytes = b""
    killed: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def set_state(self, state: pb.ActorInfoState) -> None:
        self.info.state = state
        self.changed.set()
        self.changed = asyncio.Event()


class ActorManager(pb.ActorInfoGcsServiceBase):
    def __init__(
        self,
        channels: rpc.ChannelPool,
        nodes: Callable[[], Iterable[pb.NodeInfo]],
        tables: Tables | None = None,
    ) -> None:
        self.channels = channels
        self._nodes = nodes
        self._tables = tables if tables is not None else Tables()
        self.actors: dict[bytes, Actor] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        # Callers may ask about an actor before its creator's request arrived (a handle
        # passed on at once): they wait here for the registration.
        self._registered: dict[bytes, asyncio.Event] = {}
        self._killed_early: dict[bytes, str] = {}  # actor id -> reason, for kills that beat the creation
        # Set by the GCS: waits while the placement group an actor's resources name is not placed;
        # None once it is, else why the actor can never be scheduled.
        self.wait_for_placement: Callable[[ResourceSet], Awaitable[str | None]] | None = None

    # -- the ActorInfoGcsService ---------------------------------------------------------------
    async def create_actor(self, create_actor_request: pb.CreateActorRequest) -> pb.ActorInfo:
        return await self.create(create_actor_request)

    async def get_actor_info(self, get_actor_info_request: pb.GetActorInfoRequest) -> pb.ActorInfo:
        return await self.get_info(get_actor_info_request)

    async def get_named_actor(self, named_actor_request: pb.NamedActorRequest) -> pb.ActorInfo:
        return self.named_actor(named_actor_request)

    async def kill_actor(self, kill_actor_request: pb.KillActorRequest) -> pb.Empty:
        req = kill_actor_request
        actor = self.actors.get(req.actor_id)
        if actor is None:
            if req.no_restart and not req.only_if_not_detached:
                # Killed before its creator's request arrived (kill right after `.remote()`):
                # the creation, when it comes, finds the actor dead.
                self._killed_early[req.actor_id] = "it was killed by `kill()` before it was created"
        elif req.exit_reason:
            self.exit_gracefully(actor, f"it exited intentionally: {req.exit_reason}", notify=False)
        elif req.only_if_not_detached and actor.info.detached:
            pass
        elif req.graceful:
            await self.exit_gracefully(actor, "all references to it (its handles) were dropped", notify=True)
        else:
            stop = self.kill(actor, "it was killed by `kill()`", no_restart=req.no_restart)
            if stop is not None:
                await stop  # the worker is gone when the caller hears back
            await self._tables.flush()
        return pb.Empty()

    async def list_actors(self, empty: pb.Empty) -> pb.ActorList:
        out = []
        for a in self.actors.values():
            info = pb.ActorInfo().parse(bytes(a.info))
            info.job_id, info.required_resources = a.request.job_id, a.request.resources
            out.append(info)
        return pb.ActorList(actors=out)

    # -- creation and scheduling ---------------------------------------------------------------
    async def create(self, request: pb.CreateActorRequest) -> pb.ActorInfo:
        known = self.actors.get(request.actor_id)
        if known is not None:
            return known.info  # the creator retried (its first call's answer was lost): the same actor
        if request.name:
            key = (request.namespace, request.name)
            existing = self.named.get(key)
            if existing is not None and self.actors[existing].info.state != State.DEAD:
                if request.get_if_exists:
                    return self.actors[existing].info
                raise rpc.GRPCError(
                    rpc.Status.ALREADY_EXISTS,
                    f"an actor named {request.name!r} already exists in namespace {request.namespace!r}; "
                    "pass get_if_exists=True to reuse it",
                )
            self.named[key] = request.actor_id
        info = pb.ActorInfo(
            actor_id=request.actor_id,
            state=proto_enums.ACTOR_PENDING,
            name=request.name,
            namespace=request.namespace,
            handle_meta=request.handle_meta,
            detached=request.detached,
            owner_address=request.owner_address,
        )
        actor = Actor(info, request, ResourceSet(request.resources.amounts))
        self.actors[request.actor_id] = actor
        waiting = self._registered.pop(request.actor_id, None)
        if waiting is not None:
            waiting.set()
        early_kill = self._killed_early.pop(request.actor_id, None)
        if early_kill is not None:
            actor.killed = True
            self._mark_dead(actor, ActorDiedError(f"the actor {self._describe(actor)} is dead: {early_kill}"))
        self._save(actor)
        await self._tables.flush()  # stored before any worker is leased for it
        if info.state == State.PENDING and actor.task is None:  # not killed meanwhile
            actor.task = asyncio.get_running_loop().create_task(self._schedule(actor))
        return info

    def _candidates(self, actor: Actor) -> list[pb.NodeInfo]:
        nodes = [
            n
            for n in self._nodes()
            if n.alive and actor.resources.fits_in(ResourceSet.from_wire(n.total.amounts))
        ]
        # Nodes with the resources free right now first.
        nodes.sort(key=lambda n: not actor.resources.fits_in(ResourceSet.from_wire(n.available.amounts)))
        return nodes

    async def _schedule(self, actor: Actor) -> None:
        try:
            await self._try_schedule(actor)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("scheduling actor %s failed", actor.info.actor_id.hex())
            self._mark_dead(actor, RayActorError(f"the actor could not be scheduled: {e}"))

    async def _try_schedule(self, actor: Actor) -> None:
        if self.wait_for_placement is not None:
            problem = await self.wait_for_placement(actor.resources)
            if problem is not None:
                self._mark_dead(actor, RayActorError(f"the actor cannot be scheduled: {problem}"))
                return
        request = pb.LeaseRequest(
            resources=pb.ResourceMap(amounts=actor.resources.to_dict()),
            owner_address="gcs",
            job_id=actor.request.job_id,
            # For the memory monitor, which kills workers it may restart first (as Ray does).
            retriable=actor.request.max_restarts == -1
            or actor.info.num_restarts < actor.request.max_restarts,
            strategy=actor.request.strategy,
            runtime_env=actor.request.runtime_env,
        )
        leased = await self._lease_worker(actor, request)
        if leased is None:
            return
        address, reply = leased
        if reply.status == pb.LeaseReplyStatus.RUNTIME_ENV_FAILED:
            # As in Ray: the actor is dead, and its calls raise the set-up error.
            self._mark_dead(actor, RuntimeEnvSetupError(reply.message))
            return
        if reply.status != pb.LeaseReplyStatus.GRANTED:
            self._mark_dead(actor, RayActorError(f"the actor could not get a worker: {reply.message}"))
            return
        if actor.killed:
            await self._return_lease(address, reply.lease_id, failed=False)
            return
        actor.raylet_address, actor.lease_id = address, reply.lease_id
        actor.info.worker_id = reply.worker_id
        actor.info.node_id = reply.node_id
        self._save(actor)  # a restarted GCS gives this lease back if the constructor did not finish
        worker = self.channels.stub(reply.worker_address, pb.CoreWorkerStub)
        try:
            creation = pb.ActorCreation(spec=actor.request.spec, gpu_ids=reply.gpu_ids)
            result = await worker.create_actor(creation, timeout=CREATE_TIMEOUT_S)
        except Exception:
            # The worker died while constructing: the death report decides about a restart.
            return
        if result.data:
            cause, _ = serialization.deserialize(result.data)
            actor.killed = True
            self._mark_dead(actor, cause, frame=result.data)
            await self._return_lease(address, reply.lease_id, failed=True)
            return
        actor.info.address = reply.worker_address
        actor.set_state(proto_enums.ACTOR_ALIVE)
        self._save(actor)
        if actor.killed:
            await self._return_lease(address, reply.lease_id, failed=True)

    async def _lease_worker(self, actor: Actor, request: pb.LeaseRequest) -> tuple[str, pb.LeaseReply] | None:
        """Asks a raylet for the actor's worker, following spillback. A raylet that cannot be
        reached (its node just died, and the view that sent us there did not know yet) means
        trying again from the live nodes, for up to LEASE_RETRY_S; None if the actor is dead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASE_RETRY_S
        while True:
            nodes = self._candidates(actor)
            if not nodes:
                problem = f"no node has {actor.resources.to_dict()}"
                self._mark_dead(actor, RayActorError(f"the actor cannot be scheduled: {problem}"))
                return None
            address = nodes[0].address
            request.no_spillback = False
            try:
                for _ in range(8):
                    stub = self.channels.stub(address, pb.NodeManagerStub)
                    reply = await stub.request_worker_lease(request)
                    if reply.status != pb.LeaseReplyStatus.SPILLBACK:
                        return address, reply
                    address = reply.retry_address
                    request.no_spillback = True  # the node it was sent to decides no further
                return address, reply
            except rpc.CONNECTION_ERRORS as e:
                if loop.time() > deadline:
                    raise
                log.info(
                    "raylet %s unreachable while leasing for actor %s: %r",
                    address,
                    actor.info.actor_id.hex(),
                    e,
                )
                self.channels.drop(address)
                await asyncio.sleep(LEASE_RETRY_PAUSE_S)

    async def _return_lease(self, raylet: str, lease_id: bytes, failed: bool) -> None:
        with contextlib.suppress(Exception):
            await self.channels.stub(raylet, pb.NodeManagerStub).return_worker_lease(
                pb.ReturnLeaseRequest(lease_id=lease_id, worker_failed=failed), timeout=10
            )

    def _mark_dead(self, actor: Actor, cause: BaseException, frame: bytes | None = None) -> None:
        if actor.info.state == State.DEAD:
            return
        if frame is None:
            try:
                frame = serialization.serialize(cause, is_error=True).to_bytes()
            except serialization.SerializationError:
                frame = serialization.serialize(RayActorError(str(cause)), is_error=True).to_bytes()
        actor.info.death_cause = frame
        actor.info.address = ""
        actor.set_state(proto_enums.ACTOR_DEAD)
        self._save(actor)
        if actor.info.name:
            key = (actor.info.namespace, actor.info.name)
            if self.named.get(key) == actor.info.actor_id:
                del self.named[key]

    # -- deaths, kills and owners --------------------------------------------------------------
    def on_worker_death(self, death: pb.WorkerDeath) -> None:
        for actor in list(self.actors.values()):
            if actor.info.worker_id == death.worker_id and actor.info.state != State.DEAD:
                self._on_actor_worker_died(actor, death.exit_code, death.cause)
            elif actor.info.owner_address == death.address and not actor.info.detached:
                self.kill(actor, "its owner died")

    def on_node_death(self, node_id: bytes) -> None:
        # `node_id` is the node of the actor's current lease (cleared when that worker dies): a
        # constructor running there now never answers, and a dead raylet reports no worker death.
        for actor in list(self.actors.values()):
            if actor.info.node_id == node_id and actor.info.state in (
                State.ALIVE,
                State.PENDING,
                State.RESTARTING,
            ):
                if actor.info.state != State.ALIVE and actor.task is not None:
                    actor.task.cancel()  # its cancellation marks nothing (see `_schedule`)
                self._on_actor_worker_died(actor, -1)

    def _on_actor_worker_died(self, actor: Actor, exit_code: int, cause: str = "") -> None:
        actor.lease_id = b""
        actor.info.address = ""
        limit = actor.request.max_restarts
        if not actor.killed and (limit == -1 or actor.info.num_restarts < limit):
            # No worker until the next lease: a late death report of the old worker, or the old
            # node's death, must not restart it a second time.
            actor.info.worker_id = b""
            actor.info.node_id = b""
            actor.info.num_restarts += 1
            actor.set_state(proto_enums.ACTOR_RESTARTING)
            self._save(actor)
            actor.task = asyncio.get_running_loop().create_task(self._schedule(actor))
            return
        reason = "it was killed" if actor.killed else f"its worker process died (exit code {exit_code})"
        if cause and not actor.killed:
            reason += f": {cause}"
        if not actor.killed and limit:
            reason += (
                f" and it was restarted {actor.info.num_restarts} time(s) already (max_restarts={limit})"
            )
        self._mark_dead(actor, ActorDiedError(f"the actor {self._describe(actor)} is dead: {reason}"))

    def _save(self, actor: Actor) -> None:
        record = ActorRecord(
            info=actor.info,
            request=actor.request,
            raylet_address=actor.raylet_address,
            lease_id=actor.lease_id,
            killed=actor.killed,
        )
        self._tables.put(TABLE, actor.info.actor_id, bytes(record))

    async def recover(self) -> int:
        """Loads the stored actors; those that were being (re)started are scheduled again."""
        for key, value in (await self._tables.load(TABLE)).items():
            record = ActorRecord().parse(value)
            actor = Actor(
                record.info,
                record.request,
                ResourceSet(record.request.resources.amounts),
                raylet_address=record.raylet_address,
                lease_id=record.lease_id,
                killed=record.killed,
            )
            self.actors[key] = actor
            if actor.info.name and actor.info.state != State.DEAD:
                self.named[(actor.info.namespace, actor.info.name)] = key
        loop = asyncio.get_running_loop()
        for actor in self.actors.values():
            if actor.info.state in (State.PENDING, State.RESTARTING):
                actor.task = loop.create_task(self._reschedule(actor))
        return sum(a.info.state != State.DEAD for a in self.actors.values())

    async def _reschedule(self, actor: Actor) -> None:
        """Schedules an actor whose creation a GCS restart interrupted."""
        if actor.lease_id:
            # Its constructor may be running on that worker, or done unseen: give the worker back.
            raylet, lease = actor.raylet_address, actor.lease_id
            actor.lease_id, actor.info.worker_id, actor.info.node_id = b"", b"", b""
            self._save(actor)
            await self._return_lease(raylet, lease, failed=True)
        if actor.killed or actor.info.state == State.DEAD:
            return
        await self._schedule(actor)

    def _describe(self, actor: Actor) -> str:
        name = f" {actor.info.name!r}" if actor.info.name else ""
        return f"{actor.info.actor_id.hex()[:12]}{name}"

    def kill(self, actor: Actor, reason: str, no_restart: bool = True) -> asyncio.Task[None] | None:
        """Kills the actor's worker; with `no_restart` the actor is DEAD from now on.

        Returns the task that takes the worker down (await it to know it is gone)."""
        if actor.info.state == State.DEAD:
            return None
        stop = None
        if actor.lease_id:
            raylet, lease = actor.raylet_address, actor.lease_id
            if no_restart:
                actor.lease_id = b""
            stop = asyncio.get_running_loop().create_task(self._return_lease(raylet, lease, failed=True))
            self._save(actor)
        if no_restart:
            actor.killed = True
            if actor.task is not None and actor.info.state in (State.PENDING, State.RESTARTING):
                actor.task.cancel()
            self._mark_dead(actor, ActorDiedError(f"the actor {self._describe(actor)} is dead: {reason}"))
        return stop

    def exit_gracefully(self, actor: Actor, reason: str, notify: bool) -> asyncio.Future[None]:
        """The actor is DEAD from now on; its worker exits by itself, after its shutdown hooks.

        With `notify`, the worker is asked to (else it told us it is exiting). Its lease is
        returned, which kills the worker, once the graceful-shutdown timeout has passed.
        An actor without a worker, or whose worker is still in its constructor, is killed at once."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        done.set_result(None)
        if actor.info.state == State.DEAD:
            return done
        address = actor.info.address
        if not actor.lease_id or (notify and not address):
            self.kill(actor, reason)  # no worker, or one still constructing: nothing to wait for
            return done
        if actor.task is not None and actor.info.state != State.ALIVE:
            actor.task.cancel()  # the constructor returned, its answer is in flight: it is moot
        raylet, lease = actor.raylet_address, actor.lease_id
        actor.lease_id = b""
        actor.killed = True
        self._mark_dead(actor, ActorDiedError(f"the actor {self._describe(actor)} is dead: {reason}"))
        loop.call_later(
            ACTOR_GRACEFUL_SHUTDOWN_TIMEOUT_S,
            lambda: loop.create_task(self._return_lease(raylet, lease, failed=True)),
        )
        if not notify:
            return done
        return loop.create_task(self._ask_to_exit(actor.info.actor_id, address, reason, raylet, lease))

    async def _ask_to_exit(
        self, actor_id: bytes, address: str, reason: str, raylet: str, lease: bytes
    ) -> None:
        try:
            await self.channels.stub(address, pb.CoreWorkerStub).exit_actor(
                pb.ExitActorRequest(actor_id=actor_id, reason=reason), timeout=10
            )
        except Exception:  # unreachable: no shutdown hooks to wait for
            await self._return_lease(raylet, lease, failed=True)

    def on_job_finished(self, driver_address: str) -> None:
        for actor in list(self.actors.values()):
            if actor.info.owner_address == driver_address and not actor.info.detached:
                self.kill(actor, "its owner (the driver) exited")

    # -- queries -------------------------------------------------------------------------------
    async def get_info(self, request: pb.GetActorInfoRequest) -> pb.ActorInfo:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout if request.timeout else None
        actor = self.actors.get(request.actor_id)
        early_kill = self._killed_early.get(request.actor_id)
        if actor is None and early_kill is not None:
            cause = ActorDiedError(f"the actor {request.actor_id.hex()[:12]} is dead: {early_kill}")
            frame = serialization.serialize(cause, is_error=True).to_bytes()
            return pb.ActorInfo(actor_id=request.actor_id, state=proto_enums.ACTOR_DEAD, death_cause=frame)
        if actor is None and request.wait_settled:
            event = self._registered.setdefault(request.actor_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), request.timeout or None)
            actor = self.actors.get(request.actor_id)
        if actor is None:
            raise rpc.GRPCError(rpc.Status.NOT_FOUND, f"no actor {request.actor_id.hex()}")
        if request.wait_settled:
            while not (
                actor.info.state == State.DEAD
                or (actor.info.state == State.ALIVE and actor.info.num_restarts >= request.min_restarts)
            ):
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(actor.changed.wait(), remaining)
        return actor.info

    def named_actor(self, request: pb.NamedActorRequest) -> pb.ActorInfo:
        actor_id = self.named.get((request.namespace, request.name))
        if actor_id is None:
            raise rpc.GRPCError(
                rpc.Status.NOT_FOUND, f"no actor named {request.name!r} in namespace {request.namespace!r}"
            )
        return self.actors[actor_id].info


class WorkerTable(pb.WorkerInfoGcsServiceBase):
    """Raylets report their workers' and drivers' deaths here; the actor manager restarts or buries
    their actors, a driver's job finishes, and every raylet is told (see `server`).

    It keeps no table of its own: what a death changes is stored (in the actor and
    job tables) before the raylet hears back. A report of a worker no actor knows of
    (one from before a GCS restart, or reported twice) changes no table."""

    def __init__(
        self, on_worker_death: Callable[[pb.WorkerDeath], None], tables: Tables | None = None
    ) -> None:
        self._on_worker_death = on_worker_death
        self._tables = tables if tables is not None else Tables()

    async def report_worker_death(self, worker_death: pb.WorkerDeath) -> pb.Empty:
        self._on_worker_death(worker_death)
        await self._tables.flush()
        return pb.Empty()
