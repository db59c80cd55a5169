"""The GCS placement group manager: the group table, named groups, and placing bundles on nodes.

A group is PENDING from its creation until every bundle is reserved, then CREATED. Bundles are
reserved in two phases (seed 002): the policy (`placement_policy`) picks a node per bundle from
the live nodes' free resources; every chosen raylet prepares its bundles (sets their resources
aside), and only if all of them succeeded are they committed (the group's resources appear on
those nodes). If any prepare or commit fails, every raylet of the round cancels, and the group is
tried again later (backing off). A group that does not fit stays PENDING with a message saying
why, and is tried again whenever a node joins or reports resources freed.

When a node dies, the bundles it held go back to unplaced and their group is RESCHEDULING (the
others stay where they are) until they are placed again. Removing a group (REMOVED) cancels its
bundles on their raylets, which kill the work leased under them; a group that is not detached is
removed when its job finishes.

Each group is stored at every change (a GCS-internal copy of its info). A restarted GCS reloads
them and, before placing anything, asks every live raylet which bundles it holds: those its table
does not record on that node (a round that the restart interrupted, a removal half done) are
cancelled; the rest stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from aioray._private.common import bundles, proto_enums, rpc
from aioray._private.common.resources import ResourceSet
from aioray._private.gcs import placement_policy as policy
from aioray._private.gcs.storage import Tables
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.gcs")
State = pb.PlacementGroupInfoState
TABLE = "placement_groups"
BUNDLE_RPC_TIMEOUT_S = 10.0
RECONCILE_TIMEOUT_S = 5.0
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
IDLE_ROUND_S = 1.0  # a pending group is looked at again at least this often
MAX_REMOVED_KEPT = 1000  # removed groups stay listed (as in Ray), the oldest forgotten first
WAITING = (State.PENDING, State.RESCHEDULING)
_BUNDLE_METHODS = {
    "prepare": "prepare_bundle_resources",
    "commit": "commit_bundle_resources",
    "cancel": "cancel_resource_reserve",
    "reserve": "reserve_bundle_groups",
}


@dataclass(eq=False)
class Group:
    info: pb.PlacementGroupInfo
    shapes: list[ResourceSet]
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one round or removal at a time
    retry_delay: float = 0.0
    next_try: float = 0.0  # monotonic time before which no round starts (backoff)
    unfit_at: int = -1  # the manager's view version when it last did not fit
    created: float = 0.0  # info.create_time as a plain float (a message field read costs ~5 us)

    @property
    def pg_id(self) -> bytes:
        return self.info.placement_group_id

    def placed(self) -> dict[int, bytes]:
        return {b.bundle_index: b.node_id for b in self.info.bundles if b.node_id}

    def announce(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def _debited(
    candidates: list[policy.Candidate], group: Group, assignment: dict[int, bytes]
) -> list[policy.Candidate]:
    taken: dict[bytes, ResourceSet] = {}
    for index, node_id in assignment.items():
        taken[node_id] = taken.get(node_id, ResourceSet()) + group.shapes[index]
    return [
        policy.Candidate(c.node_id, c.available - taken[c.node_id], c.total, c.labels)
        if c.node_id in taken
        else c
        for c in candidates
    ]


class PlacementGroupManager(pb.PlacementGroupGcsServiceBase):
    def __init__(
        self,
        channels: rpc.ChannelPool,
        nodes: Callable[[], Iterable[pb.NodeInfo]],
        update_node: Callable[[pb.NodeInfo], None],
        tables: Tables | None = None,
    ) -> None:
        self.channels = channels
        self._nodes = nodes
        self._update_node = update_node  # a raylet's fresh totals (with its bundles) into the node table
        self._tables = tables if tables is not None else Tables()
        self.groups: dict[bytes, Group] = {}
        # The groups PENDING or RESCHEDULING, and the REMOVED ones oldest first: kept apart so that
        # placing and forgetting look at those only, not at every group ever made.
        self._waiting: dict[bytes, Group] = {}
        self._removed: dict[bytes, None] = {}
        self.named: dict[tuple[str, str], bytes] = {}
        self._node_locks: dict[bytes, asyncio.Lock] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._reconciled: asyncio.Event | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._to_cancel: dict[bytes, list[pb.Bundle]] = {}  # by node: bundles the next cancel takes
        # By node: the groups (bundles, and the future their round awaits) the next reserve takes.
        self._to_reserve: dict[bytes, list[tuple[list[pb.Bundle], asyncio.Future[pb.BundleReply]]]] = {}
        # Bumped whenever room may have been made; a group that did not fit is planned again
        # only after that, so creating a group does not re-plan every pending one.
        self._view_version = 0

    # -- the PlacementGroupGcsService --------------------------------------------------------------
    async def create_placement_group(
        self, create_placement_group_request: pb.CreatePlacementGroupRequest
    ) -> pb.Empty:
        req = create_placement_group_request
        if req.placement_group_id in self.groups:
            return pb.Empty()  # the creator retried: the same group
        if not req.bundles or any(not ResourceSet(b.amounts).to_dict() for b in req.bundles):
            raise rpc.GRPCError(rpc.Status.INVALID_ARGUMENT, "a placement group needs non-empty bundles")
        if req.name:
            existing = self.named.get((req.namespace, req.name))
            if existing is not None:
                raise rpc.GRPCError(
                    rpc.Status.ALREADY_EXISTS,
                    f"a placement group named {req.name!r} already exists in namespace {req.namespace!r}",
                )
        info = pb.PlacementGroupInfo(
            placement_group_id=req.placement_group_id,
            name=req.name,
            namespace=req.namespace,
            strategy=req.strategy,
            state=proto_enums.PG_PENDING,
            bundles=[
                pb.Bundle(placement_group_id=req.placement_group_id, bundle_index=i, resources=b)
                for i, b in enumerate(req.bundles)
            ],
            detached=req.detached,
            job_id=req.job_id,
            creator_address=req.creator_address,
            create_time=time.time(),
            bundle_label_selector=req.bundle_label_selector,
            stats=pb.PlacementGroupStats(scheduling_state="QUEUED"),
        )
        group = Group(info, [ResourceSet(b.amounts) for b in req.bundles], created=info.create_time)
        self.groups[group.pg_id] = group
        self._waiting[group.pg_id] = group
        if req.name:
            self.named[(req.namespace, req.name)] = group.pg_id
        self._save(group)
        await self._tables.flush()  # stored before any raylet hears of it
        self._wake_up()  # only this group is new: those that did not fit still do not
        return pb.Empty()

    async def remove_placement_group(self, placement_group_id: pb.PlacementGroupId) -> pb.Empty:
        group = self.groups.get(placement_group_id.placement_group_id)
        if group is not None:
            # Carried through even if the caller stops waiting (its timeout, its process ending):
            # it asked for the removal, which would otherwise stop halfway.
            await asyncio.shield(self.remove(group))
        return pb.Empty()

    async def get_placement_group(
        self, get_placement_group_request: pb.GetPlacementGroupRequest
    ) -> pb.PlacementGroupInfo:
        req = get_placement_group_request
        pg_id = req.placement_group_id or self.named.get((req.namespace, req.name), b"")
        group = self.groups.get(pg_id)
        if group is None:
            what = (
                f"id {pg_id.hex()}"
                if req.placement_group_id
                else f"name {req.name!r} in namespace {req.namespace!r}"
            )
            raise rpc.GRPCError(rpc.Status.NOT_FOUND, f"no placement group with {what}")
        return group.info

    async def wait_placement_group_ready(
        self, wait_placement_group_request: pb.WaitPlacementGroupRequest
    ) -> pb.PlacementGroupStateReply:
        req = wait_placement_group_request
        group = self.groups.get(req.placement_group_id)
        if group is None:
            raise rpc.GRPCError(
                rpc.Status.NOT_FOUND, f"no placement group with id {req.placement_group_id.hex()}"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, req.timeout_s)
        while group.info.state not in (State.CREATED, State.REMOVED):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(group.changed.wait(), remaining)
        return pb.PlacementGroupStateReply(state=group.info.state)

    async def list_placement_groups(self, empty: pb.Empty) -> pb.PlacementGroupList:
        return pb.PlacementGroupList(groups=[g.info for g in self.groups.values()])

    # -- for the rest of the GCS -----------------------------------------------------------------
    async def wait_for_shape(self, shape: ResourceSet) -> str | None:
        """For work asking for `shape`: waits while its group is not placed; None once it is (or
        for a shape in no group), else why the work can never run."""
        pg_id = bundles.group_of(shape.to_dict())
        if pg_id is None:
            return None
        group = self.groups.get(pg_id)
        if group is None:
            return f"its placement group {pg_id.hex()} does not exist"
        while group.info.state != State.CREATED:
            if group.info.state == State.REMOVED:
                return f"its placement group {pg_id.hex()} was removed"
            await group.changed.wait()
        return None

    def on_node_death(self, node_id: bytes) -> None:
        """The bundles on the dead node go back to unplaced; their groups are rescheduled."""
        for group in self.groups.values():
            if group.pg_id in self._removed:
                continue
            lost = [b for b in group.info.bundles if b.node_id == node_id]
            if not lost:
                continue
            for b in lost:
                b.node_id = b""
            if group.info.state == State.CREATED:
                group.info.state = proto_enums.PG_RESCHEDULING
                self._waiting[group.pg_id] = group
            group.info.message = (
                f"rescheduling {len(lost)} bundle(s) of node {node_id.hex()[:12]}, which died"
            )
            group.info.stats.scheduling_state = "QUEUED"
            group.next_try = 0.0
            self._save(group)
            group.announce()
            log.info("placement group %s: %s", group.pg_id.hex(), group.info.message)
        self._node_locks.pop(node_id, None)
        self.kick()

    def on_job_finished(self, job_id: bytes) -> None:
        """A job's groups that are not detached go with it."""
        for group in list(self.groups.values()):
            if group.pg_id in self._removed:
                continue
            if group.info.job_id == job_id and not group.info.detached:
                self._track(self.remove(group))

    def kick(self) -> None:
        """Something may have made room (a node joined, resources freed): look at pending groups."""
        self._view_version += 1
        self._wake_up()

    def _wake_up(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    # -- removal ---------------------------------------------------------------------------------
    async def remove(self, group: Group) -> None:
        """Marks the group REMOVED (stored before this returns); its bundles are released on their
        raylets after, as Ray does: the resources come back a moment later."""
        async with group.lock:  # waits out a round in flight, so its bundles are known
            if group.info.state == State.REMOVED:
                return
            held = [b for b in group.info.bundles if b.node_id]  # the group gets bundles of no node
            group.info.bundles = [
                pb.Bundle(
                    placement_group_id=b.placement_group_id,
                    bundle_index=b.bundle_index,
                    resources=b.resources,
                )
                for b in group.info.bundles
            ]
            group.info.state = proto_enums.PG_REMOVED
            self._waiting.pop(group.pg_id, None)
            self._removed[group.pg_id] = None
            group.info.message = ""
            group.info.stats.scheduling_state = "REMOVED"
            if self.named.get((group.info.namespace, group.info.name)) == group.pg_id:
                del self.named[(group.info.namespace, group.info.name)]
            self._save(group)
            self._forget_old_removed()
            await self._tables.flush()
            group.announce()
        if held:
            self._track(self._release(held))

    async def _release(self, held: list[pb.Bundle]) -> None:
        """Cancels `held` on their raylets. Removals that come while a node's cancel is under way
        join its next one: removing many groups costs a few calls, not one each."""
        for node, bundle_list in self._by_node(held):
            queued = self._to_cancel.get(node.node_id)
            if queued is not None:
                queued.extend(bundle_list)  # its drain, running, sends them next
                continue
            self._to_cancel[node.node_id] = list(bundle_list)
            self._track(self._drain_cancels(node))

    async def _drain_cancels(self, node: pb.NodeInfo) -> None:
        try:
            while self._to_cancel.get(node.node_id):
                batch, self._to_cancel[node.node_id] = self._to_cancel[node.node_id], []
                await self._bundle_call(node, "cancel", batch)
        finally:
            self._to_cancel.pop(node.node_id, None)
        self.kick()  # what it held may let another group fit

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _forget_old_removed(self) -> None:
        while len(self._removed) > MAX_REMOVED_KEPT:
            oldest = next(iter(self._removed))
            del self._removed[oldest]
            self.groups.pop(oldest, None)
            self._tables.delete(TABLE, oldest)

    # -- placing ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        if self._reconciled is not None:
            await self._reconciled.wait()  # never place before stale bundles are cleared
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            waiting = sorted(self._waiting.values(), key=lambda g: g.created)
            rounds = self._plan(waiting, loop.time())
            for outcome in await asyncio.gather(*rounds, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("placing a placement group failed", exc_info=outcome)
            now = loop.time()
            sleep = min([max(0.0, g.next_try - now) for g in waiting if g.next_try > now] + [IDLE_ROUND_S])
            if not waiting:
                sleep = 3600.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), sleep)
            self._wake.clear()

    def _plan(self, waiting: list[Group], now: float) -> list[Coroutine[Any, Any, None]]:
        """Assigns nodes to as many waiting groups as fit, oldest first, against one view of the
        nodes that each assignment debits; returns the rounds that reserve them (run together:
        the raylets' calls overlap)."""
        candidates, live = self._candidates()
        rounds = []
        for group in waiting:
            info = group.info
            if group.lock.locked() or now < group.next_try:
                continue  # a round or a removal is under way, or it backs off
            if group.unfit_at == self._view_version:
                continue  # it did not fit, and no room was made since
            selectors = [s.constraints for s in info.bundle_label_selector]
            outcome = policy.place(group.shapes, info.strategy, candidates, group.placed(), selectors)
            if outcome.assignment is None:
                group.unfit_at = self._view_version
                state = "INFEASIBLE" if outcome.infeasible else "NO_RESOURCES"
                if info.message != outcome.reason or info.stats.scheduling_state != state:
                    info.message, info.stats.scheduling_state = outcome.reason, state
                    self._save(group)
                continue
            candidates = _debited(candidates, group, outcome.assignment)
            rounds.append(self._round(group, outcome.assignment, live))
        return rounds

    def _candidates(self) -> tuple[list[policy.Candidate], dict[bytes, pb.NodeInfo]]:
        live = {n.node_id: n for n in self._nodes() if n.alive}
        candidates = [
            policy.Candidate(
                n.node_id,
                ResourceSet.from_wire(n.available.amounts),
                ResourceSet.from_wire(n.total.amounts),
                dict(n.labels),
            )
            for n in live.values()
        ]
        return candidates, live

    async def _round(
        self, group: Group, assignment: dict[int, bytes], live: dict[bytes, pb.NodeInfo]
    ) -> None:
        """Reserves the group's bundles where `_plan` assigned them."""
        async with group.lock:
            info = group.info
            if info.state not in WAITING:
                return
            loop = asyncio.get_running_loop()
            started = time.time()
            info.stats.scheduling_attempts += 1
            placed_now, problem = await self._two_phase(group, assignment, live)
            if problem:
                group.retry_delay = min(RETRY_MAX_S, max(RETRY_MIN_S, group.retry_delay * 2))
                group.next_try = loop.time() + group.retry_delay
                info.stats.highest_retry_delay_s = max(info.stats.highest_retry_delay_s, group.retry_delay)
                info.stats.scheduling_state = "FAILED_TO_COMMIT_RESOURCES"
                info.message = f"reserving the bundles failed, retrying: {problem}"
                self._save(group)
                self._view_version += 1  # what was cancelled is free again
                return
            for b in info.bundles:
                if b.bundle_index in placed_now:
                    b.node_id = placed_now[b.bundle_index]
            group.retry_delay = 0.0
            if len(group.placed()) == len(info.bundles):
                now = time.time()
                info.state = proto_enums.PG_CREATED
                self._waiting.pop(group.pg_id, None)
                info.message = ""
                info.stats.scheduling_state = "FINISHED"
                info.stats.creation_latency_s = now - info.create_time
                info.stats.scheduling_latency_s = now - started
            self._save(group)
            await self._tables.flush()  # stored before anyone hears it is placed
            group.announce()

    async def _two_phase(
        self, group: Group, assignment: dict[int, bytes], live: dict[bytes, pb.NodeInfo]
    ) -> tuple[dict[int, bytes], str]:
        """Prepares, then commits, the assigned bundles; returns (what is placed now, problem)."""
        by_node: dict[bytes, list[pb.Bundle]] = {}
        for index, node_id in assignment.items():
            b = group.info.bundles[index]
            by_node.setdefault(node_id, []).append(
                pb.Bundle(
                    placement_group_id=group.pg_id, bundle_index=index, resources=b.resources, node_id=node_id
                )
            )
        nodes = {node_id: live[node_id] for node_id in by_node}
        if len(by_node) == 1:
            # One raylet reserves all of them or none: the two phases are one call.
            [(node_id, bundle_list)] = by_node.items()
            reply = await self._reserve_group(nodes[node_id], bundle_list)
            problems = [] if reply.success else [reply.message]
        else:
            prepared = await asyncio.gather(
                *(self._bundle_call(nodes[n], "prepare", bs) for n, bs in by_node.items())
            )
            problems = [r.message for r in prepared if not r.success]
            if not problems:
                committed = await asyncio.gather(
                    *(self._bundle_call(nodes[n], "commit", bs) for n, bs in by_node.items())
                )
                problems = [r.message for r in committed if not r.success]
        if problems:
            # Everywhere, even where the call failed: it may have arrived, only its answer got lost.
            await asyncio.gather(*(self._bundle_call(nodes[n], "cancel", bs) for n, bs in by_node.items()))
            return {}, problems[0]
        # A node that died during the round took its bundles with it; the rest stand.
        alive = {n.node_id for n in self._nodes() if n.alive}
        return {i: n for i, n in assignment.items() if n in alive}, ""

    def _by_node(self, held: list[pb.Bundle]) -> list[tuple[pb.NodeInfo, list[pb.Bundle]]]:
        nodes = {n.node_id: n for n in self._nodes() if n.alive}
        out: dict[bytes, list[pb.Bundle]] = {}
        for b in held:
            if b.node_id in nodes:
                out.setdefault(b.node_id, []).append(b)
        return [(nodes[n], bs) for n, bs in out.items()]

    async def _reserve_group(self, node: pb.NodeInfo, bundle_list: list[pb.Bundle]) -> pb.BundleReply:
        """Prepares and commits one group's bundles on the one node it is placed on. The rounds
        that start while the node's call is under way join its next one: placing many groups
        costs a few calls, not one each."""
        reserved = asyncio.get_running_loop().create_future()
        queued = self._to_reserve.get(node.node_id)
        if queued is not None:
            queued.append((bundle_list, reserved))
        else:
            self._to_reserve[node.node_id] = [(bundle_list, reserved)]
            self._track(self._drain_reserves(node))
        reply: pb.BundleReply = await reserved
        return reply

    async def _drain_reserves(self, node: pb.NodeInfo) -> None:
        batch: list[tuple[list[pb.Bundle], asyncio.Future[pb.BundleReply]]] = []
        try:
            while self._to_reserve.get(node.node_id):
                batch, self._to_reserve[node.node_id] = self._to_reserve[node.node_id], []
                request = pb.BundleGroups(groups=[pb.BundleRequest(bundles=b) for b, _ in batch])
                reply = await self._node_call(node, "reserve", request)
                for (_, reserved), outcome in zip(batch, reply.groups, strict=True):
                    if not reserved.done():
                        reserved.set_result(outcome)
                batch = []
        except Exception as e:  # the node is gone or stuck: its health check will tell
            problem = pb.BundleReply(
                success=False, message=f"the raylet at {node.address} did not answer reserve: {e!r}"
            )
            for _, reserved in batch + self._to_reserve.get(node.node_id, []):
                if not reserved.done():
                    reserved.set_result(problem)
        finally:
            for _, reserved in batch + self._to_reserve.pop(node.node_id, []):
                reserved.cancel()  # only when this drain itself was cancelled (the GCS closing)

    async def _bundle_call(
        self, node: pb.NodeInfo, call: str, bundle_list: list[pb.Bundle]
    ) -> pb.BundleReply:
        """One bundle RPC (prepare, commit or cancel) to a raylet; a failure is an unsuccessful reply."""
        try:
            reply: pb.BundleReply = await self._node_call(node, call, pb.BundleRequest(bundles=bundle_list))
        except Exception as e:  # the node is gone or stuck: its health check will tell
            return pb.BundleReply(
                success=False, message=f"the raylet at {node.address} did not answer {call}: {e!r}"
            )
        return reply

    async def _node_call(self, node: pb.NodeInfo, call: str, request: Any) -> Any:
        """One RPC to a raylet; the node's totals in its reply go into the node table (one call
        per node at a time, so the last totals stored are the newest)."""
        lock = self._node_locks.setdefault(node.node_id, asyncio.Lock())
        async with lock:
            stub = self.channels.stub(node.address, pb.NodeManagerStub)
            method = getattr(stub, _BUNDLE_METHODS[call])
            reply = await method(request, timeout=BUNDLE_RPC_TIMEOUT_S)
            self._update_node(pb.NodeInfo(node_id=node.node_id, total=reply.total, available=reply.available))
            return reply

    # -- storage ---------------------------------------------------------------------------------
    def _save(self, group: Group) -> None:
        info = group.info
        self._tables.put(TABLE, group.pg_id, info.__bytes__)  # serialized as it is when written

    async def recover(self) -> int:
        """Loads the stored groups; placing waits until the raylets' bundles are reconciled."""
        for key, value in (await self._tables.load(TABLE)).items():
            info = pb.PlacementGroupInfo().parse(value)
            group = Group(
                info, [ResourceSet(b.resources.amounts) for b in info.bundles], created=info.create_time
            )
            self.groups[key] = group
            if info.state in WAITING:
                self._waiting[key] = group
            if info.name and info.state != State.REMOVED:
                self.named[(info.namespace, info.name)] = key
        for removed in sorted(
            (g for g in self.groups.values() if g.info.state == State.REMOVED), key=lambda g: g.created
        ):
            self._removed[removed.pg_id] = None
        if self.groups:
            self._reconciled = asyncio.Event()
            self._track(self._reconcile(self._reconciled))
            self.kick()
        return len(self.groups) - len(self._removed)

    async def _reconcile(self, done: asyncio.Event) -> None:
        """Cancels the bundles raylets hold that the table does not place on them."""
        try:
            nodes = [n for n in self._nodes() if n.alive]
            held = await asyncio.gather(
                *(
                    self.channels.stub(n.address, pb.NodeManagerStub).get_bundles(
                        pb.Empty(), timeout=RECONCILE_TIMEOUT_S
                    )
                    for n in nodes
                ),
                return_exceptions=True,
            )
            stale: list[tuple[pb.NodeInfo, list[pb.Bundle]]] = []
            for node, reply in zip(nodes, held, strict=True):
                if isinstance(reply, BaseException):
                    continue  # unreachable: if it is dead, the health check reschedules its bundles
                extra = [b for b in reply.bundles if not self._records(b, node.node_id)]
                if extra:
                    stale.append((node, extra))
            await asyncio.gather(*(self._bundle_call(n, "cancel", bs) for n, bs in stale))
            if stale:
                log.info(
                    "cancelled %d stale bundle(s) on %d node(s)", sum(len(bs) for _, bs in stale), len(stale)
                )
        finally:
            done.set()

    def _records(self, bundle: pb.Bundle, node_id: bytes) -> bool:
        group = self.groups.get(bundle.placement_group_id)
        return (
            group is not None
            and group.info.state != State.REMOVED
            and group.placed().get(bundle.bundle_index) == node_id
        )

    def close(self) -> None:
        for task in [self._task, *self._background]:
            if task is not None:
                task.cancel()


__all__ = ["PlacementGroupManager"]
