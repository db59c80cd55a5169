"""The raylet's bundle bookkeeping: prepare, commit and cancel, on a node manager with fake workers."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from aioray._private.common import bundles, proto_enums
from aioray._private.common.resources import ResourceSet
from aioray._private.raylet.node_manager import Lease, LeaseWaiter, NodeManager
from aioray._private.raylet.worker_pool import WorkerProc
from aioray._proto.aioray import v1 as pb

PG = b"g" * 18
OTHER = b"h" * 18


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def kill(self) -> None:
        self.returncode = -9


class FakePool:
    def __init__(self) -> None:
        self.idle: collections.deque[WorkerProc] = collections.deque()
        self.starting = 0
        self.killed: list[WorkerProc] = []

    def start(self, count: int) -> None:
        pass

    def give_back(self, worker: WorkerProc, failed: bool) -> None:
        if failed:
            self.killed.append(worker)


class FakeView:
    nodes: list[Any] = []


def node_manager(reports: list[int] | None = None) -> NodeManager:
    return NodeManager(
        b"n" * 16,
        ResourceSet({"CPU": 4, "GPU": 1}),
        FakeView(),  # type: ignore[arg-type]
        FakePool(),  # type: ignore[arg-type]
        pb.NodeInfo,
        (lambda: reports.append(1)) if reports is not None else (lambda: None),
        "gcs:1",
        lambda: None,
    )


def bundle(index: int, pg: bytes = PG, **amounts: float) -> pb.Bundle:
    return pb.Bundle(placement_group_id=pg, bundle_index=index, resources=pb.ResourceMap(amounts=amounts))


def lease(nm: NodeManager, pid: int, shape: ResourceSet) -> Lease:
    worker = WorkerProc(bytes([pid]) * 16, FakeProc(pid), address=f"127.0.0.1:{pid}")  # type: ignore[arg-type]
    ls = Lease(bytes([pid]) * 8, worker, shape, "owner:1")
    worker.lease_id = ls.lease_id
    nm.leases[ls.lease_id] = ls
    nm.available = nm.available - shape
    return ls


def test_prepare_sets_resources_aside_and_commit_adds_the_group_resources() -> None:
    reports: list[int] = []
    nm = node_manager(reports)
    assert nm.bundles.prepare([bundle(0, CPU=1), bundle(1, CPU=2)]).success
    assert nm.available == ResourceSet({"CPU": 1, "GPU": 1})
    assert nm.total == ResourceSet({"CPU": 4, "GPU": 1})
    assert reports  # the GCS hears of the change
    assert nm.bundles.commit([bundle(0, CPU=1), bundle(1, CPU=2)]).success
    added = {
        **bundles.committed_resources(PG, 0, {"CPU": 1}),
        **bundles.committed_resources(PG, 1, {"CPU": 2}),
    }
    added[bundles.group_name("CPU", PG)] = 3.0  # the group-wide names add up over the bundles
    added[bundles.group_name("bundle", PG)] = 2000.0
    assert nm.total == ResourceSet({"CPU": 4, "GPU": 1, **added})
    assert nm.available == ResourceSet({"CPU": 1, "GPU": 1, **added})


def test_prepare_is_all_or_nothing_and_repeats_are_harmless() -> None:
    nm = node_manager()
    reply = nm.bundles.prepare([bundle(0, CPU=3), bundle(1, CPU=3)])
    assert not reply.success and "free" in reply.message
    assert nm.available == nm.total and not nm.bundles.prepared
    assert nm.bundles.prepare([bundle(0, CPU=3)]).success
    assert nm.bundles.prepare([bundle(0, CPU=3)]).success  # the GCS lost the answer and asks again
    assert nm.available == ResourceSet({"CPU": 1, "GPU": 1})
    assert nm.bundles.commit([bundle(0, CPU=3)]).success
    assert nm.bundles.commit([bundle(0, CPU=3)]).success
    assert nm.total.get(bundles.group_name("CPU", PG, 0)) == 3


def test_commit_of_what_was_never_prepared_fails() -> None:
    nm = node_manager()
    reply = nm.bundles.commit([bundle(0, CPU=1)])
    assert not reply.success and "not prepared" in reply.message
    assert nm.total == ResourceSet({"CPU": 4, "GPU": 1})


def test_cancel_of_a_prepared_bundle_gives_the_resources_back() -> None:
    nm = node_manager()
    nm.bundles.prepare([bundle(0, CPU=2, GPU=1)])
    nm.bundles.cancel([bundle(0, CPU=2, GPU=1), bundle(7)])  # an unknown bundle is ignored
    assert nm.available == nm.total == ResourceSet({"CPU": 4, "GPU": 1})
    assert not nm.bundles.bundles().bundles


def test_cancel_of_a_committed_bundle_kills_its_work_and_leaves_no_trace() -> None:
    async def run() -> None:
        nm = node_manager()
        nm.bundles.prepare([bundle(0, CPU=2), bundle(1, CPU=1)])
        nm.bundles.commit([bundle(0, CPU=2), bundle(1, CPU=1)])
        plain = lease(nm, 1, ResourceSet({"CPU": 1}))
        in_bundle = lease(nm, 2, bundles.shape_in_bundle(ResourceSet({"CPU": 1}), PG, 0))
        anywhere = lease(nm, 3, bundles.shape_in_bundle(ResourceSet({"CPU": 1}), PG, -1))
        other_group = lease(nm, 4, bundles.shape_in_bundle(ResourceSet({"CPU": 0.5}), OTHER, 0))
        loop = asyncio.get_running_loop()
        queued = LeaseWaiter(
            pb.LeaseRequest(), bundles.shape_in_bundle(ResourceSet({"CPU": 5}), PG, 0), loop.create_future()
        )
        nm.waiting.append(queued)

        nm.bundles.cancel([bundle(0, CPU=2), bundle(1, CPU=1)])
        pool = nm.pool
        assert isinstance(pool, FakePool)
        assert {w.worker_id for w in pool.killed} == {in_bundle.worker.worker_id, anywhere.worker.worker_id}
        assert set(nm.leases) == {plain.lease_id, other_group.lease_id}
        assert nm.deaths[in_bundle.worker.worker_id].message.endswith(
            f"placement group {PG.hex()} was removed"
        )
        assert queued.future.result().status == proto_enums.LEASE_REJECTED
        assert not nm.waiting
        # Back to the node's own resources, less the leases still running; no group names left over.
        assert nm.total == ResourceSet({"CPU": 4, "GPU": 1})
        assert nm.available == ResourceSet({"CPU": 4, "GPU": 1}) - plain.resources - other_group.resources
        assert not any(bundles.is_group_resource(k, PG) for k in nm.available.to_dict())

    asyncio.run(run())


def test_a_blocked_lease_in_a_cancelled_bundle_is_accounted_once() -> None:
    async def run() -> None:
        nm = node_manager()
        nm.bundles.prepare([bundle(0, CPU=1)])
        nm.bundles.commit([bundle(0, CPU=1)])
        blocked = lease(nm, 5, bundles.shape_in_bundle(ResourceSet({"CPU": 1}), PG, 0))
        blocked.blocked = True  # it lent its resources back while blocked in get
        nm.available = nm.available + blocked.resources
        nm.bundles.cancel([bundle(0, CPU=1)])
        assert nm.available == nm.total == ResourceSet({"CPU": 4, "GPU": 1})

    asyncio.run(run())


def test_get_bundles_lists_prepared_and_committed_ones_with_this_node() -> None:
    nm = node_manager()
    nm.bundles.prepare([bundle(0, CPU=1), bundle(1, CPU=1)])
    nm.bundles.commit([bundle(0, CPU=1)])
    held = nm.bundles.bundles().bundles
    assert sorted(b.bundle_index for b in held) == [0, 1]
    assert all(b.node_id == nm.node_id and b.placement_group_id == PG for b in held)


def test_lease_requests_outside_groups_do_not_wait_for_the_gcs() -> None:
    nm = node_manager()
    asyncio.run(asyncio.wait_for(nm.bundles.wait_for_group(ResourceSet({"CPU": 1})), 1))
