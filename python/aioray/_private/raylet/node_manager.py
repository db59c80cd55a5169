"""The node manager (seed 000, protocol b): worker leases on this node.

Owners lease workers here for a resource shape (``RequestWorkerLease``). The
scheduling policy (`scheduling`) decides whether the request is infeasible,
goes on to another node (spillback) or queues here; queued requests are
granted in order as resources and workers free up, starting workers on
demand. A lease ends when its owner returns it, its worker dies, or its owner
dies (`owners`: its worker is killed, and its queued requests are dropped); a
leased worker blocked in get/wait lends its resources back meanwhile.

Recent worker deaths are kept with their cause (`deaths`): an owner whose
connection to a worker broke asks why (``GetWorkerFailureCause``), which is
how a task killed by the memory monitor fails with OutOfMemoryError.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aioray._private.common import metrics, proto_enums, rpc
from aioray._private.common import task_events as te
from aioray._private.common.ids import random_id
from aioray._private.common.resources import ResourceSet
from aioray._private.raylet import policy, scheduling
from aioray._private.raylet.accelerators import GpuAllocator, gpus_in
from aioray._private.raylet.bundles import BundleTable
from aioray._private.raylet.cluster_view import ClusterView
from aioray._private.raylet.memory_monitor import Candidate
from aioray._private.raylet.owners import DeadOwners, DriverWatch, owned_by
from aioray._private.raylet.runtime_env_agent import RuntimeEnvAgent, RuntimeEnvSetupFailed, WorkerEnv
from aioray._private.raylet.worker_pool import WorkerPool, WorkerProc
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.raylet")
_WithTotals = TypeVar("_WithTotals", pb.BundleReply, pb.BundleGroupsReply)

REPLAN_SETTLE_S = 0.2

MAX_DEATH_RECORDS = 1000  # recent worker deaths kept for owners asking why their worker died

LEASES_GRANTED = metrics.REGISTRY.counter("aioray_leases_granted_total", "Worker leases granted by this node")
LEASES_SPILLED_BACK = metrics.REGISTRY.counter(
    "aioray_leases_spilled_back_total", "Lease requests this node sent on to another node (spillback)"
)
LEASES_INFEASIBLE = metrics.REGISTRY.counter(
    "aioray_leases_infeasible_total", "Lease requests no node of the cluster can satisfy"
)
Cause = pb.WorkerFailureCauseKind


@dataclass(eq=False)
class Lease:
    lease_id: bytes
    worker: WorkerProc
    resources: ResourceSet
    owner: str
    owner_id: bytes = b""  # the owner's worker id (b"": the GCS, for an actor)
    blocked: bool = False
    retriable: bool = False  # the owner's work has retries left (the memory monitor kills it first)
    granted_at: float = field(default_factory=time.monotonic)
    gpu_ids: tuple[int, ...] = ()


@dataclass(eq=False)
class LeaseWaiter:
    request: pb.LeaseRequest
    resources: ResourceSet
    future: asyncio.Future[pb.LeaseReply]
    queued_at: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    allowed: frozenset[bytes] | None = None  # the nodes a re-plan may move it to (None: any)


class NodeManager(pb.NodeManagerBase):
    def __init__(
        self,
        node_id: bytes,
        total: ResourceSet,
        view: ClusterView,
        pool: WorkerPool,
        node_info: Callable[[], pb.NodeInfo],
        resources_changed: Callable[[], None],
        gcs_address: str,
        on_shutdown: Callable[[], None],
        gpu_ids: list[int] | None = None,
        labels: dict[str, str] | None = None,
        events: te.TaskEventBuffer | None = None,
    ) -> None:
        self.node_id = node_id
        self.events = events if events is not None else te.TaskEventBuffer(enabled=False)
        self.labels = labels or {}
        self.gpus = GpuAllocator(gpu_ids or [])
        self.spread = policy.SpreadCursor()
        self.total = total
        self.available = total
        self.view = view
        self.pool = pool
        self._node_info = node_info
        self._resources_changed = resources_changed
        self._gcs_address = gcs_address
        self._on_shutdown = on_shutdown
        self.bundles = BundleTable(self)  # placement-group bundles held on this node
        self.runtime_envs: RuntimeEnvAgent | None = None  # set by the raylet
        self.leases: dict[bytes, Lease] = {}
        self.waiting: list[LeaseWaiter] = []
        self.stopping = False
        # Recent worker deaths by worker id, oldest first, with their cause.
        self.deaths: collections.OrderedDict[bytes, pb.WorkerFailureCause] = collections.OrderedDict()
        self._death_keys: dict[bytes, tuple[bytes, str]] = {}  # worker id -> (lease id, address)
        self.dead_owners = DeadOwners()
        self.drivers = DriverWatch(node_id, self._driver_exited)
        # Sends a death of this node's processes to the GCS (set by the raylet).
        self.report_death: Callable[[pb.WorkerDeath], None] = lambda death: None

    # -- leases ----------------------------------------------------------------------------------
    async def request_worker_lease(self, lease_request: pb.LeaseRequest) -> pb.LeaseReply:
        if self.stopping:
            return pb.LeaseReply(status=proto_enums.LEASE_REJECTED, message="the raylet is shutting down")
        shape = ResourceSet(lease_request.resources.amounts)
        if lease_request.task_id:
            self.events.record(lease_request.task_id, lease_request.attempt, te.LEASE_REQUESTED)
        # Work for a placement group that is not placed yet waits for it (as in Ray); for one that
        # was removed, it can never run.
        gone = await self.bundles.wait_for_group(shape)
        if gone is not None:
            return pb.LeaseReply(status=proto_enums.LEASE_INFEASIBLE, message=gone)
        decision = self._decide(shape, lease_request)
        if decision.action == policy.INFEASIBLE:
            # The view may predate a node that just joined: look again before saying no.
            await self.view.refresh_now()
            decision = self._decide(shape, lease_request)
        if decision.action == policy.INFEASIBLE:
            LEASES_INFEASIBLE.inc()
            return pb.LeaseReply(
                status=proto_enums.LEASE_INFEASIBLE,
                message=f"{decision.message} (this node has {self.total.to_dict()})",
            )
        if decision.action == policy.SPILL:
            LEASES_SPILLED_BACK.inc()
            self.view.debit(decision.address, shape)
            self._record_spillback(lease_request, decision.address)
            return pb.LeaseReply(status=proto_enums.LEASE_SPILLBACK, retry_address=decision.address)
        if lease_request.runtime_env.hash:
            # Set up here, once per node, before it queues: its workers start in it.
            failed = await self._ensure_runtime_env(lease_request.runtime_env)
            if failed is not None:
                return failed
        if lease_request.owner_worker_id in self.dead_owners:
            return self._owner_dead_reply()
        waiter = LeaseWaiter(lease_request, shape, asyncio.get_running_loop().create_future())
        waiter.allowed = policy.allowed_nodes(lease_request.strategy, self._nodes())
        self.waiting.append(waiter)
        self.dispatch()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            # The owner gave up (its call was cancelled): hand a granted lease back.
            if waiter in self.waiting:
                self.waiting.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                lease = self.leases.get(waiter.future.result().lease_id)
                if lease is not None:
                    self._return(lease, failed=False)
            raise

    def _record_spillback(self, request: pb.LeaseRequest, address: str) -> None:
        if request.task_id:
            fields = {"from_node_id": self.node_id, "to_node_id": self.view.node_id_of(address)}
            self.events.record(request.task_id, request.attempt, te.SPILLBACK, fields)

    def _nodes(self) -> list[policy.Node]:
        # Requests queued here count as used: a burst must not all pick this node before its
        # workers start and the first grants show in `available`.
        free = self.available
        for w in self.waiting:
            if not w.future.done():
                free = free - w.resources
        here = policy.Node(self.node_id, "", self.total, free, self.labels, local=True)
        return policy.nodes_of(self.view.live.values(), here)

    def _decide(self, shape: ResourceSet, request: pb.LeaseRequest) -> policy.Decision:
        return policy.decide(shape, request.strategy, self._nodes(), request.no_spillback, self.spread)

    def dispatch(self) -> None:
        """Grants queued requests that fit, to idle workers; starts workers for the rest that fit."""
        if self.stopping:
            return
        for w in self.waiting:
            # Its owner died after it queued (the news came while it was being decided on).
            if w.request.owner_worker_id in self.dead_owners and not w.future.done():
                w.future.set_result(self._owner_dead_reply())
        queued = [w for w in self.waiting if not w.future.done()]
        # Planned as if each request that fits had an idle worker: it needs one of its own runtime
        # environment, which is taken if idle and otherwise started (below).
        plan = scheduling.plan_dispatch([w.resources for w in queued], self.available, len(queued))
        needed: collections.Counter[str] = collections.Counter()
        for i in plan.grant:
            waiter = queued[i]
            env_hash = waiter.request.runtime_env.hash
            if not self.pool.has_idle(env_hash):
                needed[env_hash] += 1
                plan.waiting.append(i)
                continue
            gpu_ids = self.gpus.take(gpus_in(waiter.resources))
            if gpu_ids is None:  # the GPUs add up but no device has room (fractions): wait
                plan.waiting.append(i)
                continue
            worker = self.pool.take_idle(env_hash)
            assert worker is not None
            lease = Lease(
                random_id(16),
                worker,
                waiter.resources,
                waiter.request.owner_address,
                owner_id=waiter.request.owner_worker_id,
                retriable=waiter.request.retriable,
                gpu_ids=gpu_ids,
            )
            worker.lease_id = lease.lease_id
            self.leases[lease.lease_id] = lease
            LEASES_GRANTED.inc()
            if waiter.request.task_id:
                self.events.record(
                    waiter.request.task_id,
                    waiter.request.attempt,
                    te.LEASE_GRANTED,
                    {"worker_id": worker.worker_id, "lease_id": lease.lease_id},
                )
            self.available = self.available - waiter.resources
            waiter.future.set_result(
                pb.LeaseReply(
                    status=proto_enums.LEASE_GRANTED,
                    lease_id=lease.lease_id,
                    worker_id=worker.worker_id,
                    worker_address=worker.address,
                    node_id=self.node_id,
                    gpu_ids=list(gpu_ids),
                )
            )
        self.waiting = [queued[i] for i in sorted(plan.waiting)]
        for env_hash, count in needed.items():
            runtime_env = self._worker_env_of(env_hash)
            if env_hash and runtime_env is None:
                continue  # its set-up failed meanwhile: fail_runtime_env answered its requests
            self.pool.start(max(0, count - self.pool.starting_for(env_hash)), runtime_env)
        self._resources_changed()

    # -- runtime environments --------------------------------------------------------------------
    async def _ensure_runtime_env(self, info: pb.RuntimeEnvInfo) -> pb.LeaseReply | None:
        """Sets the environment up on this node; the reply to send instead of queueing if it fails."""
        if self.runtime_envs is None:
            return pb.LeaseReply(
                status=proto_enums.LEASE_RUNTIME_ENV_FAILED, message="this node has no runtime env agent"
            )
        try:
            await self.runtime_envs.ensure(info)
        except RuntimeEnvSetupFailed as e:
            return pb.LeaseReply(status=proto_enums.LEASE_RUNTIME_ENV_FAILED, message=str(e))
        if self.stopping:
            return pb.LeaseReply(status=proto_enums.LEASE_REJECTED, message="the raylet is shutting down")
        return None

    def _worker_env_of(self, env_hash: str) -> WorkerEnv | None:
        if not env_hash or self.runtime_envs is None:
            return None
        return self.runtime_envs.get(env_hash)

    def fail_runtime_env(self, env_hash: str, message: str) -> None:
        """Workers of this environment cannot start: its queued requests fail (they would wait for
        ever), and the next request sets it up again."""
        if self.runtime_envs is not None:
            self.runtime_envs.forget(env_hash)
        for waiter in self.waiting:
            if waiter.request.runtime_env.hash == env_hash and not waiter.future.done():
                waiter.future.set_result(
                    pb.LeaseReply(status=proto_enums.LEASE_RUNTIME_ENV_FAILED, message=message)
                )
        self.waiting = [w for w in self.waiting if not w.future.done()]

    def replan(self) -> None:
        """The cluster view changed: queued requests that another node can run now go there."""
        if self.stopping or not self.waiting:
            return
        queued = [w for w in self.waiting if not w.future.done()]
        # A request spilled here is not sent on again before it had a moment to be granted: the
        # view that sent it may lag behind this node, and it must not bounce between nodes.
        settled = asyncio.get_running_loop().time() - REPLAN_SETTLE_S
        moves = scheduling.replan(
            [w.resources for w in queued],
            self.available,
            self.view.nodes,
            self.node_id,
            [not w.request.no_spillback or w.queued_at <= settled for w in queued],
            [w.allowed for w in queued],
        )
        for i, target in moves.items():
            LEASES_SPILLED_BACK.inc()
            self.view.debit(target.address, queued[i].resources)
            self._record_spillback(queued[i].request, target.address)
            queued[i].future.set_result(
                pb.LeaseReply(status=proto_enums.LEASE_SPILLBACK, retry_address=target.address)
            )
        if moves:
            self.waiting = [w for w in self.waiting if not w.future.done()]

    def _release(self, lease: Lease) -> None:
        if not lease.blocked:
            self.available = self.available + lease.resources
        self.gpus.give_back(lease.gpu_ids, gpus_in(lease.resources))
        lease.gpu_ids = ()
        lease.worker.lease_id = None

    def _return(self, lease: Lease, failed: bool) -> None:
        self.leases.pop(lease.lease_id, None)
        self._release(lease)
        self.pool.give_back(lease.worker, failed)
        self.dispatch()

    async def return_worker_lease(self, return_lease_request: pb.ReturnLeaseRequest) -> pb.Empty:
        lease = self.leases.get(return_lease_request.lease_id)
        if lease is not None:
            self._return(lease, return_lease_request.worker_failed)
        return pb.Empty()

    async def notify_blocked(self, blocked_request: pb.BlockedRequest) -> pb.Empty:
        """A leased worker blocked in `get` lends its resources back, so nested tasks can run."""
        lease = self.leases.get(blocked_request.lease_id)
        if lease is not None and lease.blocked != blocked_request.blocked:
            lease.blocked = blocked_request.blocked
            if lease.blocked:
                self.available = self.available + lease.resources
                self.dispatch()
            else:
                self.available = self.available - lease.resources
                self._resources_changed()
        return pb.Empty()

    # -- workers ---------------------------------------------------------------------------------
    async def register_worker(
        self, register_worker_request: pb.RegisterWorkerRequest
    ) -> pb.RegisterWorkerReply:
        worker = self.pool.register(register_worker_request.worker_id, register_worker_request.address)
        if worker is None:
            raise rpc.GRPCError(rpc.Status.FAILED_PRECONDITION, "unknown worker")
        self.dispatch()
        return pb.RegisterWorkerReply(node=self._node_info(), gcs_address=self._gcs_address)

    def on_worker_exit(self, worker: WorkerProc, code: int | None) -> pb.WorkerDeath | None:
        """A worker process ended: its lease ends, and so do the leases it held as an owner.
        Returns the death to report to the GCS, if the worker had registered."""
        self._record_exit(worker, code)
        if worker.lease_id is not None:
            lease = self.leases.pop(worker.lease_id, None)
            if lease is not None:
                self._release(lease)
        if worker.address:  # what it leased as an owner, here at once (the GCS tells the others)
            self.owner_died(pb.WorkerDeath(worker_id=worker.worker_id, address=worker.address))
        if self.stopping:
            return None
        if code not in (0, None) and not worker.killed:
            log.warning(
                "worker %s (pid %d) exited with code %s", worker.worker_id.hex()[:8], worker.proc.pid, code
            )
        self.dispatch()
        if not worker.address:
            return None
        known = self.deaths.get(worker.worker_id)
        return pb.WorkerDeath(
            node_id=self.node_id,
            worker_id=worker.worker_id,
            address=worker.address,
            exit_code=code or 0,
            cause=known.message if known is not None and known.kind == Cause.OUT_OF_MEMORY else "",
        )

    # -- owners' deaths --------------------------------------------------------------------------
    @staticmethod
    def _owner_dead_reply() -> pb.LeaseReply:
        return pb.LeaseReply(status=proto_enums.LEASE_REJECTED, message="the lease's owner died")

    def owner_died(self, death: pb.WorkerDeath) -> None:
        """A worker or driver died (or a job finished): the workers it leased here are killed, as
        they may be running its tasks, and its queued requests are dropped."""
        self.dead_owners.add(death.worker_id)
        dropped = 0
        for waiter in self.waiting:
            if not waiter.future.done() and owned_by(
                waiter.request.owner_worker_id, waiter.request.owner_address, death
            ):
                waiter.future.set_result(self._owner_dead_reply())
                dropped += 1
        self.waiting = [w for w in self.waiting if not w.future.done()]
        leases = [ls for ls in self.leases.values() if owned_by(ls.owner_id, ls.owner, death)]
        for lease in leases:
            self.leases.pop(lease.lease_id, None)
            self._release(lease)
            self.pool.give_back(lease.worker, failed=True)
        if leases or dropped:
            log.info(
                "owner %s died: killed %d leased worker(s), dropped %d queued request(s)",
                death.worker_id.hex()[:12] or death.address,
                len(leases),
                dropped,
            )
            self.dispatch()

    async def register_driver(self, register_worker_request: pb.RegisterWorkerRequest) -> pb.Empty:
        self.drivers.watch(register_worker_request)
        return pb.Empty()

    def _driver_exited(self, death: pb.WorkerDeath) -> None:
        self.owner_died(death)
        if not self.stopping:
            self.report_death(death)

    # -- worker deaths and the memory monitor ----------------------------------------------------
    def _record(self, worker: WorkerProc, cause: pb.WorkerFailureCause) -> None:
        self.deaths[worker.worker_id] = cause
        self.deaths.move_to_end(worker.worker_id)
        self._death_keys[worker.worker_id] = (worker.lease_id or b"", worker.address)
        while len(self.deaths) > MAX_DEATH_RECORDS:
            old, _ = self.deaths.popitem(last=False)
            self._death_keys.pop(old, None)

    def _record_exit(self, worker: WorkerProc, code: int | None) -> None:
        known = self.deaths.get(worker.worker_id)
        if known is not None:  # killed by the memory monitor: the cause is recorded already
            known.exit_code = code or 0
            return
        kind, how = (Cause.KILLED, "was killed by its raylet") if worker.killed else (Cause.EXITED, "exited")
        self._record(
            worker,
            pb.WorkerFailureCause(
                kind=Cause(kind),
                message=f"worker {worker.worker_id.hex()[:12]} {how} (exit code {code})",
                exit_code=code or 0,
                worker_id=worker.worker_id,
            ),
        )

    async def get_worker_failure_cause(
        self, worker_failure_cause_request: pb.WorkerFailureCauseRequest
    ) -> pb.WorkerFailureCause:
        """Why the worker of a lease (or at an address) died: the newest matching record."""
        req = worker_failure_cause_request
        for worker_id in reversed(self.deaths):
            lease_id, address = self._death_keys[worker_id]
            if (req.lease_id and req.lease_id == lease_id) or (
                not req.lease_id and req.worker_address and req.worker_address == address
            ):
                return self.deaths[worker_id]
        return pb.WorkerFailureCause(kind=Cause(Cause.UNKNOWN))

    def memory_candidates(self) -> list[Candidate]:
        """The leased workers the memory monitor may kill (idle workers hold no task)."""
        return [
            Candidate(
                pid=lease.worker.proc.pid,
                owner=lease.owner,
                granted_at=lease.granted_at,
                retriable=lease.retriable,
                worker_id=lease.worker.worker_id,
                lease_id=lease.lease_id,
            )
            for lease in self.leases.values()
            if lease.worker.proc.returncode is None and not lease.worker.killed
        ]

    def kill_for_memory(self, victim: Candidate, message: str) -> Awaitable[int] | None:
        """Records the memory monitor's cause, then kills the worker; the awaitable ends at its exit."""
        lease = self.leases.get(victim.lease_id)
        if lease is None or lease.worker.proc.returncode is not None:
            return None
        worker = lease.worker
        self._record(
            worker,
            pb.WorkerFailureCause(
                kind=Cause(Cause.OUT_OF_MEMORY), message=message, worker_id=worker.worker_id
            ),
        )
        self.pool.kill(worker)
        return worker.proc.wait()

    # -- placement group bundles -----------------------------------------------------------------
    async def prepare_bundle_resources(self, bundle_request: pb.BundleRequest) -> pb.BundleReply:
        return self._with_totals(self.bundles.prepare(bundle_request.bundles))

    async def reserve_bundle_groups(self, bundle_groups: pb.BundleGroups) -> pb.BundleGroupsReply:
        outcomes = []
        for group in bundle_groups.groups:
            outcome = self.bundles.prepare(group.bundles)
            if outcome.success:
                outcome = self.bundles.commit(group.bundles)
            outcomes.append(outcome)
        return self._with_totals(pb.BundleGroupsReply(groups=outcomes))

    async def commit_bundle_resources(self, bundle_request: pb.BundleRequest) -> pb.BundleReply:
        return self._with_totals(self.bundles.commit(bundle_request.bundles))

    async def cancel_resource_reserve(self, bundle_request: pb.BundleRequest) -> pb.BundleReply:
        self.bundles.cancel(bundle_request.bundles)
        return self._with_totals(pb.BundleReply(success=True))

    def _with_totals(self, reply: _WithTotals) -> _WithTotals:
        reply.total = pb.ResourceMap(amounts=self.total.to_dict())
        reply.available = pb.ResourceMap(amounts=self.available.to_dict())
        return reply

    async def get_bundles(self, empty: pb.Empty) -> pb.BundleRequest:
        return self.bundles.bundles()

    async def get_workers(self, empty: pb.Empty) -> pb.WorkerList:
        workers = []
        for worker in self.pool.workers.values():
            lease = self.leases.get(worker.lease_id) if worker.lease_id is not None else None
            if lease is not None:
                state = proto_enums.WORKER_LEASED
            elif worker.address:
                state = proto_enums.WORKER_IDLE
            else:
                state = proto_enums.WORKER_STARTING
            workers.append(
                pb.WorkerInfo(
                    worker_id=worker.worker_id,
                    address=worker.address,
                    pid=worker.proc.pid,
                    state=state,
                    lease_owner=lease.owner if lease is not None else "",
                    start_time=worker.started,
                )
            )
        return pb.WorkerList(node_id=self.node_id, workers=workers)

    async def setup_runtime_env(
        self, runtime_env_setup_request: pb.RuntimeEnvSetupRequest
    ) -> pb.RuntimeEnvSetup:
        """The environment set up as for a worker, for a process started elsewhere (a job's
        entrypoint): same cache, same packages, same virtual environments."""
        req = runtime_env_setup_request
        if self.runtime_envs is None:
            return pb.RuntimeEnvSetup(error="this node has no runtime env agent")
        try:
            env = await self.runtime_envs.ensure(req.runtime_env)
        except RuntimeEnvSetupFailed as e:
            return pb.RuntimeEnvSetup(error=str(e))
        return pb.RuntimeEnvSetup(python=env.python, cwd=env.cwd or "", env=env.environ(req.base_env))

    # -- node ------------------------------------------------------------------------------------
    async def get_node_info(self, empty: pb.Empty) -> pb.NodeInfo:
        return self._node_info()

    async def shutdown(self, empty: pb.Empty) -> pb.Empty:
        asyncio.get_running_loop().call_soon(self._on_shutdown)
        return pb.Empty()

    def stop(self) -> None:
        """Refuses new requests and rejects the queued ones."""
        self.stopping = True
        self.drivers.close()
        for waiter in self.waiting:
            if not waiter.future.done():
                waiter.future.set_result(
                    pb.LeaseReply(status=proto_enums.LEASE_REJECTED, message="the raylet is shutting down")
                )


__all__ = ["Lease", "NodeManager"]
