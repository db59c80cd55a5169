"""The GCS actor state machine, with raylets and workers faked behind the channel pool."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from aioray._private.common import rpc, serialization
from aioray._private.gcs.actor_manager import ActorManager
from aioray._proto.aioray import v1 as pb
from aioray.exceptions import ActorDiedError, RayActorError

State = pb.ActorInfoState
DRIVER = "driver:1"


def node(name: str, cpus: float, free: float | None = None, alive: bool = True) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=name.encode(),
        address=f"{name}:1",
        total=pb.ResourceMap(amounts={"CPU": cpus}),
        available=pb.ResourceMap(amounts={"CPU": cpus if free is None else free}),
        alive=alive,
    )


class FakeCluster:
    """The raylets and workers the actor manager talks to: leases are granted unless scripted."""

    def __init__(self) -> None:
        self.nodes: list[pb.NodeInfo] = [node("n1", 4)]
        self.lease_script: dict[str, list[pb.LeaseReply]] = {}
        self.lease_requests: list[tuple[str, pb.LeaseRequest]] = []
        self.returned: list[tuple[str, bytes, bool]] = []
        # What a worker's CreateActor answers: a Blob, an exception to raise, or a future to wait on.
        self.constructor: dict[str, pb.Blob | BaseException | asyncio.Future[pb.Blob]] = {}
        self.created: list[tuple[str, bytes]] = []
        self.constructing = asyncio.Event()  # set once a worker was asked to run a constructor
        self._n = itertools.count(1)

    # -- the channel pool ------------------------------------------------------------------------
    def stub(self, address: str, cls: type) -> object:
        if cls is pb.NodeManagerStub:
            return FakeRaylet(self, address)
        if cls is pb.CoreWorkerStub:
            return FakeWorker(self, address)
        raise AssertionError(f"unexpected stub {cls.__name__}")


class FakeRaylet:
    def __init__(self, cluster: FakeCluster, address: str) -> None:
        self.cluster = cluster
        self.address = address

    async def request_worker_lease(
        self, request: pb.LeaseRequest, timeout: float | None = None
    ) -> pb.LeaseReply:
        self.cluster.lease_requests.append((self.address, request))
        script = self.cluster.lease_script.get(self.address)
        if script:
            return script.pop(0)
        n = next(self.cluster._n)
        return pb.LeaseReply(
            status=pb.LeaseReplyStatus.GRANTED,
            lease_id=f"lease-{n}".encode(),
            worker_id=f"worker-{n}".encode(),
            worker_address=f"worker-{n}:1",
            node_id=self.address.split(":")[0].encode(),
        )

    async def return_worker_lease(
        self, request: pb.ReturnLeaseRequest, timeout: float | None = None
    ) -> pb.Empty:
        self.cluster.returned.append((self.address, request.lease_id, request.worker_failed))
        return pb.Empty()


class FakeWorker:
    def __init__(self, cluster: FakeCluster, address: str) -> None:
        self.cluster = cluster
        self.address = address

    async def create_actor(self, creation: pb.ActorCreation, timeout: float | None = None) -> pb.Blob:
        self.cluster.created.append((self.address, creation.spec))
        self.cluster.constructing.set()
        answer = self.cluster.constructor.get(self.address, pb.Blob())
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, asyncio.Future):
            return await answer
        return answer


_actor_ids = itertools.count(1)


def request(cpus: float = 1, max_restarts: int = 0, **kw: object) -> pb.CreateActorRequest:
    fields: dict[str, object] = {"owner_address": DRIVER, **kw}
    return pb.CreateActorRequest(
        actor_id=next(_actor_ids).to_bytes(16, "little"),
        spec=b"the-spec",
        job_id=b"job",
        resources=pb.ResourceMap(amounts={"CPU": cpus}),
        max_restarts=max_restarts,
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
async def gcs(cluster: FakeCluster) -> AsyncIterator[ActorManager]:
    manager = ActorManager(cluster, lambda: cluster.nodes)  # type: ignore[arg-type]
    yield manager
    tasks = [a.task for a in manager.actors.values() if a.task is not None]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def started(gcs: ActorManager, req: pb.CreateActorRequest) -> pb.ActorInfo:
    info = await gcs.create_actor(req)
    await settled(gcs, req.actor_id)
    return info


async def settled(gcs: ActorManager, actor_id: bytes) -> None:
    task = gcs.actors[actor_id].task
    assert task is not None
    await asyncio.wait_for(task, 1)


def death_cause(info: pb.ActorInfo) -> BaseException:
    cause, is_error = serialization.deserialize(info.death_cause)
    assert is_error
    assert isinstance(cause, BaseException)
    return cause


# -- creation -----------------------------------------------------------------------------------


async def test_pending_then_alive_after_a_lease_and_the_constructor(
    gcs: ActorManager, cluster: FakeCluster
) -> None:
    req = request(cpus=2)
    info = await gcs.create_actor(req)
    assert info.state == State.PENDING
    await settled(gcs, req.actor_id)
    assert info.state == State.ALIVE
    assert (info.address, info.worker_id, info.node_id) == ("worker-1:1", b"worker-1", b"n1")
    ((raylet, lease),) = cluster.lease_requests
    assert raylet == "n1:1"
    assert (dict(lease.resources.amounts), lease.owner_address, lease.job_id) == ({"CPU": 2.0}, "gcs", b"job")
    assert cluster.created == [("worker-1:1", b"the-spec")]
    assert cluster.returned == []


async def test_scheduling_prefers_a_live_node_with_the_resources_free(
    gcs: ActorManager, cluster: FakeCluster
) -> None:
    cluster.nodes = [node("small", 1), node("busy", 4, free=0), node("dead", 4, alive=False), node("free", 4)]
    await started(gcs, request(cpus=2))
    assert [address for address, _ in cluster.lease_requests] == ["free:1"]


async def test_spillback_is_followed_to_the_granting_raylet(gcs: ActorManager, cluster: FakeCluster) -> None:
    cluster.lease_script["n1:1"] = [pb.LeaseReply(status=pb.LeaseReplyStatus.SPILLBACK, retry_address="n2:1")]
    req = request()
    info = await started(gcs, req)
    assert info.state == State.ALIVE
    assert [address for address, _ in cluster.lease_requests] == ["n1:1", "n2:1"]
    assert gcs.actors[req.actor_id].raylet_address == "n2:1"


async def test_no_node_fits_means_dead(gcs: ActorManager, cluster: FakeCluster) -> None:
    cluster.nodes = [node("n1", 2), node("big-but-dead", 64, alive=False)]
    info = await started(gcs, request(cpus=8))
    assert info.state == State.DEAD
    cause = death_cause(info)
    assert isinstance(cause, RayActorError)
    assert "no node has" in str(cause)
    assert cluster.lease_requests == []


async def test_a_refused_lease_means_dead(gcs: ActorManager, cluster: FakeCluster) -> None:
    cluster.lease_script["n1:1"] = [pb.LeaseReply(status=pb.LeaseReplyStatus.INFEASIBLE, message="nope")]
    info = await started(gcs, request())
    assert info.state == State.DEAD
    assert "nope" in str(death_cause(info))


async def test_constructor_error_means_dead_with_that_cause(gcs: ActorManager, cluster: FakeCluster) -> None:
    frame = serialization.serialize(ValueError("bad init"), is_error=True).to_bytes()
    cluster.constructor["worker-1:1"] = pb.Blob(data=frame)
    info = await started(gcs, request(name="a", namespace="ns"))
    assert info.state == State.DEAD
    assert info.death_cause == frame
    cause = death_cause(info)
    assert isinstance(cause, ValueError) and str(cause) == "bad init"
    assert cluster.returned == [("n1:1", b"lease-1", True)]
    assert ("ns", "a") not in gcs.named, "a dead actor's name is free again"


# -- restarts -----------------------------------------------------------------------------------


async def test_worker_death_restarts_while_allowed_then_dead(gcs: ActorManager, cluster: FakeCluster) -> None:
    req = request(max_restarts=1)
    info = await started(gcs, req)
    assert info.worker_id == b"worker-1"

    gcs.on_worker_death(pb.WorkerDeath(worker_id=b"worker-1", address="worker-1:1", exit_code=1))
    assert info.state == State.RESTARTING
    assert info.num_restarts == 1
    assert info.address == ""
    await settled(gcs, req.actor_id)
    assert info.state == State.ALIVE
    assert (info.address, info.worker_id) == ("worker-2:1", b"worker-2")
    assert [address for address, _ in cluster.created] == ["worker-1:1", "worker-2:1"]

    gcs.on_worker_death(pb.WorkerDeath(worker_id=b"worker-2", address="worker-2:1", exit_code=9))
    assert info.state == State.DEAD
    cause = death_cause(info)
    assert isinstance(cause, ActorDiedError)
    assert "exit code 9" in str(cause) and "max_restarts=1" in str(cause)
    assert len(cluster.lease_requests) == 2


async def test_the_raylets_reason_for_a_kill_is_in_the_actors_death(gcs: ActorManager) -> None:
    info = await started(gcs, request())
    why = "the memory monitor of node n1 killed worker w1 because ..."
    gcs.on_worker_death(pb.WorkerDeath(worker_id=info.worker_id, exit_code=-9, cause=why))
    cause = death_cause(info)
    assert isinstance(cause, ActorDiedError)
    assert "exit code -9" in str(cause) and why in str(cause)


async def test_unlimited_restarts(gcs: ActorManager, cluster: FakeCluster) -> None:
    req = request(max_restarts=-1)
    info = await started(gcs, req)
    for n in range(1, 4):
        gcs.on_worker_death(pb.WorkerDeath(worker_id=info.worker_id))
        await settled(gcs, req.actor_id)
        assert (info.state, info.num_restarts) == (State.ALIVE, n)


async def test_death_of_an_unrelated_worker_changes_nothing(gcs: ActorManager, cluster: FakeCluster) -> None:
    info = await started(gcs, request())
    gcs.on_worker_death(pb.WorkerDeath(worker_id=b"someone-else", address="elsewhere:1"))
    assert info.state == State.ALIVE


async def test_node_death_during_a_restarts_constructor_restarts_it_elsewhere(
    gcs: ActorManager, cluster: FakeCluster
) -> None:
    cluster.nodes = [node("n1", 4), node("n2", 4)]
    req = request(max_restarts=2)
    info = await started(gcs, req)
    gcs.on_worker_death(pb.WorkerDeath(worker_id=b"worker-1", exit_code=1))
    # The restart's constructor runs on n1 and never answers: n1 dies meanwhile.
    cluster.constructor["worker-2:1"] = asyncio.get_running_loop().create_future()
    cluster.constructing.clear()
    await asyncio.wait_for(cluster.constructing.wait(), 1)
    constructing = gcs.actors[req.actor_id].task
    assert constructing is not None
    assert (info.state, info.worker_id, info.node_id) == (State.RESTARTING, b"worker-2", b"n1")

    cluster.nodes[0] = node("n1", 4, alive=False)
    gcs.on_node_death(b"n1")
    assert (info.state, info.num_restarts) == (State.RESTARTING, 2)
    await asyncio.gather(constructing, return_exceptions=True)
    assert constructing.cancelled()
    await settled(gcs, req.actor_id)
    assert (info.state, info.worker_id, info.node_id) == (State.ALIVE, b"worker-3", b"n2")
    assert [address for address, _ in cluster.lease_requests] == ["n1:1", "n1:1", "n2:1"]


async def test_node_death_after_a_restarts_constructor_call_failed_is_not_ignored(
    gcs: ActorManager, cluster: FakeCluster
) -> None:
    req = request(max_restarts=1)
    info = await started(gcs, req)
    gcs.on_worker_death(pb.WorkerDeath(worker_id=b"worker-1", exit_code=1))
    cluster.constructor["worker-2:1"] = ConnectionError("the node went away")
    await settled(gcs, req.actor_id)
    assert info.state == State.RESTARTING, "waits for a death report"
    gcs.on_node_death(b"n1")  # which a dead raylet never sends: the node's death decides
    assert info.state == State.DEAD
    cause = death_cause(info)
    assert isinstance(cause, ActorDiedError) and "max_restarts=1" in str(cause)


async def test_the_old_workers_node_dying_does_not_restart_a_restarting_actor_twice(
    gcs: ActorManager, cluster: FakeCluster
) -> None:
    cluster.nodes = [node("n1", 4), node("n2", 4)]
    req = request(max_restarts=5)
    info = await started(gcs, req)
    assert info.node_id == b"n1"
    gcs.on_worker_death(pb.WorkerDeath(worker_id=b"worker-1", exit_code=1))
    restarting = gcs.actors[req.actor_id].task
    # Before the restart got a lease, the old worker's node dies and its death is reported again.
    cluster.nodes[0] = node("n1", 4, alive=False)
    gcs.on_node_death(b"n1")
    gcs.on_worker_death(pb.WorkerDeath(worker_id=b"worker-1", exit_code=1))
    assert gcs.actors[req.actor_id].task is restarting
    await settled(gcs, req.actor_id)
    assert (info.state, info.num_restarts, info.worker_id, info.node_id) == (
        State.ALIVE,
        1,
        b"worker-2",
        b"n2",
    )
    assert len(cluster.lease_requests) == 2


# -- kills and owners ---------------------------------------------------------------------------


async def test_kill_with_no_restart_is_dead_and_returns_the_lease(
    gcs: ActorManager, cluster: FakeCluster
) -> None:
    req = request(max_restarts=5)
    info = await started(gcs, req)
    await gcs.kill_actor(pb.KillActorRequest(actor_id=req.actor_id, no_restart=True))
    assert info.state == State.DEAD
    cause = death_cause(info)
    assert isinstance(cause, ActorDiedError) and "it was killed" in str(cause)
    assert cluster.returned == [("n1:1", b"lease-1", True)], "returned before the kill answers"
    # The raylet then reports the worker's death: the actor stays dead.
    gcs.on_worker_death(pb.WorkerDeath(worker_id=b"worker-1"))
    assert info.state == State.DEAD
    assert len(cluster.lease_requests) == 1


async def test_kill_allowing_restart_restarts_after_the_death_report(
    gcs: ActorManager, cluster: FakeCluster
) -> None:
    req = request(max_restarts=1)
    info = await started(gcs, req)
    await gcs.kill_actor(pb.KillActorRequest(actor_id=req.actor_id, no_restart=False))
    assert cluster.returned == [("n1:1", b"lease-1", True)]
    assert info.state == State.ALIVE, "until the raylet reports the worker gone"
    gcs.on_worker_death(pb.WorkerDeath(worker_id=b"worker-1"))
    await settled(gcs, req.actor_id)
    assert (info.state, info.num_restarts) == (State.ALIVE, 1)


async def test_kill_while_pending_cancels_the_scheduling(gcs: ActorManager, cluster: FakeCluster) -> None:
    cluster.constructor["worker-1:1"] = asyncio.get_running_loop().create_future()
    req = request()
    info = await gcs.create_actor(req)
    await asyncio.wait_for(cluster.constructing.wait(), 1)
    await gcs.kill_actor(pb.KillActorRequest(actor_id=req.actor_id, no_restart=True))
    assert info.state == State.DEAD
    assert cluster.returned == [("n1:1", b"lease-1", True)]
    task = gcs.actors[req.actor_id].task
    assert task is not None
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_kill_only_if_not_detached_spares_detached_actors(
    gcs: ActorManager, cluster: FakeCluster
) -> None:
    req = request(detached=True)
    info = await started(gcs, req)
    await gcs.kill_actor(
        pb.KillActorRequest(actor_id=req.actor_id, no_restart=True, only_if_not_detached=True)
    )
    assert info.state == State.ALIVE
    assert cluster.returned == []


async def test_owner_death_kills_its_non_detached_actors(gcs: ActorManager, cluster: FakeCluster) -> None:
    owned = await started(gcs, request(max_restarts=3))
    detached = await started(gcs, request(detached=True))
    foreign = await started(gcs, request(owner_address="someone-else:1"))
    gcs.on_worker_death(pb.WorkerDeath(worker_id=b"driver-worker", address=DRIVER))
    assert owned.state == State.DEAD
    assert "its owner died" in str(death_cause(owned))
    assert detached.state == State.ALIVE
    assert foreign.state == State.ALIVE
    await asyncio.sleep(0)  # the lease goes back in the background
    assert cluster.returned == [("n1:1", b"lease-1", True)]


async def test_job_end_kills_the_drivers_non_detached_actors(gcs: ActorManager, cluster: FakeCluster) -> None:
    owned = await started(gcs, request())
    detached = await started(gcs, request(detached=True))
    gcs.on_job_finished(DRIVER)
    assert owned.state == State.DEAD
    assert detached.state == State.ALIVE


# -- names --------------------------------------------------------------------------------------


async def test_named_actors(gcs: ActorManager, cluster: FakeCluster) -> None:
    first = await started(gcs, request(name="counter", namespace="ns"))
    with pytest.raises(rpc.GRPCError) as refused:
        await gcs.create_actor(request(name="counter", namespace="ns"))
    assert refused.value.status == rpc.Status.ALREADY_EXISTS
    again = await gcs.create_actor(request(name="counter", namespace="ns", get_if_exists=True))
    assert again.actor_id == first.actor_id
    other_ns = await started(gcs, request(name="counter", namespace="other"))
    assert other_ns.actor_id != first.actor_id
    found = await gcs.get_named_actor(pb.NamedActorRequest(name="counter", namespace="ns"))
    assert found.actor_id == first.actor_id
    assert len(gcs.actors) == 2


async def test_a_dead_actors_name_can_be_taken_again(gcs: ActorManager, cluster: FakeCluster) -> None:
    first = await started(gcs, request(name="svc", namespace="ns"))
    await gcs.kill_actor(pb.KillActorRequest(actor_id=first.actor_id, no_restart=True))
    with pytest.raises(rpc.GRPCError) as missing:
        await gcs.get_named_actor(pb.NamedActorRequest(name="svc", namespace="ns"))
    assert missing.value.status == rpc.Status.NOT_FOUND
    second = await started(gcs, request(name="svc", namespace="ns"))
    assert second.state == State.ALIVE
    found = await gcs.get_named_actor(pb.NamedActorRequest(name="svc", namespace="ns"))
    assert found.actor_id == second.actor_id


# -- queries ------------------------------------------------------------------------------------


async def test_get_info_waits_until_the_actor_settles(gcs: ActorManager, cluster: FakeCluster) -> None:
    constructed: asyncio.Future[pb.Blob] = asyncio.get_running_loop().create_future()
    cluster.constructor["worker-1:1"] = constructed
    req = request()
    # Asked before the creator's request even arrived.
    waiter = asyncio.ensure_future(
        gcs.get_actor_info(pb.GetActorInfoRequest(actor_id=req.actor_id, wait_settled=True))
    )
    await asyncio.sleep(0)
    await gcs.create_actor(req)
    await asyncio.wait_for(cluster.constructing.wait(), 1)
    assert not waiter.done()
    constructed.set_result(pb.Blob())
    info = await asyncio.wait_for(waiter, 1)
    assert info.state == State.ALIVE


async def test_get_info_of_an_unknown_actor_is_not_found(gcs: ActorManager) -> None:
    with pytest.raises(rpc.GRPCError) as missing:
        await gcs.get_actor_info(pb.GetActorInfoRequest(actor_id=b"nobody"))
    assert missing.value.status == rpc.Status.NOT_FOUND
