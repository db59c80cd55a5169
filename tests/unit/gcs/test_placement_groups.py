"""The GCS placement group manager against fake raylets: two phases, rollback, node death, removal,
jobs ending, and a restart that reconciles with what the raylets hold."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from aioray._private.common import bundles, proto_enums
from aioray._private.common.resources import ResourceSet
from aioray._private.gcs.placement_groups import PlacementGroupManager
from aioray._private.gcs.storage import MemoryStorage, Tables
from aioray._proto.aioray import v1 as pb

State = pb.PlacementGroupInfoState
JOB = b"\x01\x00\x00\x00"


class FakeRaylet:
    """Holds bundles the way a raylet does, counting only CPUs."""

    def __init__(self, node_id: bytes, cpus: float) -> None:
        self.node_id = node_id
        self.total = cpus
        self.free = cpus
        self.prepared: dict[tuple[bytes, int], float] = {}
        self.committed: dict[tuple[bytes, int], float] = {}
        self.fail_prepare = False
        self.unreachable = False  # calls raise, as to a raylet that does not answer
        self.calls: list[str] = []

    async def prepare_bundle_resources(self, request: pb.BundleRequest, timeout: float) -> pb.BundleReply:
        self.calls.append("prepare")
        return self._prepare(request)

    def _prepare(self, request: pb.BundleRequest) -> pb.BundleReply:
        need = sum(b.resources.amounts.get("CPU", 0) for b in request.bundles)
        if self.fail_prepare or need > self.free:
            return pb.BundleReply(success=False, message="no room")
        self.free -= need
        for b in request.bundles:
            self.prepared[(b.placement_group_id, b.bundle_index)] = b.resources.amounts.get("CPU", 0)
        return self._totals(pb.BundleReply(success=True))

    async def reserve_bundle_groups(self, request: pb.BundleGroups, timeout: float) -> pb.BundleGroupsReply:
        self.calls.append("reserve")
        if self.unreachable:
            raise ConnectionResetError("the raylet went away")
        outcomes = []
        for group in request.groups:
            outcome = self._prepare(group)
            if outcome.success:
                self._commit(group)
            outcomes.append(pb.BundleReply(success=outcome.success, message=outcome.message))
        reply = pb.BundleGroupsReply(groups=outcomes)
        reply.total = self._totals(pb.BundleReply()).total
        return reply

    async def commit_bundle_resources(self, request: pb.BundleRequest, timeout: float) -> pb.BundleReply:
        self.calls.append("commit")
        self._commit(request)
        return self._totals(pb.BundleReply(success=True))

    def _commit(self, request: pb.BundleRequest) -> None:
        for b in request.bundles:
            key = (b.placement_group_id, b.bundle_index)
            self.committed[key] = self.prepared.pop(key)

    async def cancel_resource_reserve(self, request: pb.BundleRequest, timeout: float) -> pb.BundleReply:
        self.calls.append("cancel")
        for b in request.bundles:
            key = (b.placement_group_id, b.bundle_index)
            self.free += self.prepared.pop(key, 0) + self.committed.pop(key, 0)
        return self._totals(pb.BundleReply(success=True))

    async def get_bundles(self, empty: pb.Empty, timeout: float) -> pb.BundleRequest:
        held = [*self.prepared, *self.committed]
        return pb.BundleRequest(
            bundles=[pb.Bundle(placement_group_id=g, bundle_index=i, node_id=self.node_id) for g, i in held]
        )

    def _totals(self, reply: pb.BundleReply) -> pb.BundleReply:
        total = {"CPU": self.total}
        for (g, i), cpus in self.committed.items():
            total = (
                ResourceSet(total) + ResourceSet(bundles.committed_resources(g, i, {"CPU": cpus}))
            ).to_dict()
        reply.total = pb.ResourceMap(amounts=total)
        return reply


class FakeChannels:
    def __init__(self, raylets: dict[str, FakeRaylet]) -> None:
        self.raylets = raylets

    def stub(self, address: str, cls: Any) -> FakeRaylet:
        return self.raylets[address]


class Cluster:
    def __init__(self, cpus: dict[str, float], storage: MemoryStorage | None = None) -> None:
        self.raylets = {name: FakeRaylet(name.encode(), n) for name, n in cpus.items()}
        self.nodes = {
            name: pb.NodeInfo(
                node_id=name.encode(),
                address=name,
                alive=True,
                total=pb.ResourceMap(amounts={"CPU": n}),
                available=pb.ResourceMap(amounts={"CPU": n}),
            )
            for name, n in cpus.items()
        }
        self.updates: list[bytes] = []
        self.storage = storage or MemoryStorage()
        self.manager = self.new_manager()

    def new_manager(self) -> PlacementGroupManager:
        def update(info: pb.NodeInfo) -> None:
            self.updates.append(info.node_id)

        return PlacementGroupManager(
            FakeChannels(self.raylets),  # type: ignore[arg-type]
            lambda: self.nodes.values(),
            update,
            Tables(self.storage),
        )

    async def create(
        self, cpus: list[float], strategy: Any = proto_enums.PG_PACK, name: str = "", detached: bool = False
    ) -> bytes:
        pg_id = bytes([len(self.manager.groups) + 1]) * 18
        await self.manager.create_placement_group(
            pb.CreatePlacementGroupRequest(
                placement_group_id=pg_id,
                name=name,
                namespace="ns",
                strategy=strategy,
                bundles=[pb.ResourceMap(amounts={"CPU": c}) for c in cpus],
                detached=detached,
                job_id=JOB,
            )
        )
        return pg_id

    async def wait(self, pg_id: bytes, timeout: float = 5) -> pb.PlacementGroupInfo:
        request = pb.WaitPlacementGroupRequest(placement_group_id=pg_id, timeout_s=timeout)
        reply = await self.manager.wait_placement_group_ready(request)
        info = self.manager.groups[pg_id].info
        assert reply.state == info.state
        return info

    async def settled(self) -> None:
        """Waits out the manager's background work (removals, releases), which may start more."""
        while self.manager._background:
            await asyncio.gather(*self.manager._background)

    def where(self, pg_id: bytes) -> list[str]:
        return [b.node_id.decode() for b in self.manager.groups[pg_id].info.bundles]

    def kill(self, name: str) -> None:
        self.nodes[name].alive = False
        self.manager.on_node_death(name.encode())


def run(test: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(test, 30))


def test_bundles_are_prepared_then_committed_and_the_node_table_hears_of_it() -> None:
    async def body() -> None:
        c = Cluster({"a": 2, "b": 2})
        pg = await c.create([1, 1], proto_enums.PG_STRICT_SPREAD)
        info = await c.wait(pg)
        assert info.state == State.CREATED and info.stats.scheduling_state == "FINISHED"
        assert sorted(c.where(pg)) == ["a", "b"]
        for r in c.raylets.values():
            assert r.calls == ["prepare", "commit"] and len(r.committed) == 1
        assert sorted(set(c.updates)) == [b"a", b"b"]  # their new totals, before CREATED was told
        c.manager.close()

    run(body())


def test_a_failed_prepare_is_rolled_back_everywhere_and_retried() -> None:
    async def body() -> None:
        c = Cluster({"a": 2, "b": 2})
        c.raylets["b"].fail_prepare = True
        pg = await c.create([1, 1], proto_enums.PG_STRICT_SPREAD)
        info = await c.wait(pg, 0.3)
        assert info.state == State.PENDING
        assert info.stats.scheduling_state == "FAILED_TO_COMMIT_RESOURCES" and "no room" in info.message
        assert c.raylets["a"].free == 2 and not c.raylets["a"].prepared  # given back
        assert "cancel" in c.raylets["a"].calls and "commit" not in c.raylets["a"].calls
        c.raylets["b"].fail_prepare = False
        info = await c.wait(pg)
        assert info.state == State.CREATED and info.stats.scheduling_attempts >= 2
        assert info.stats.highest_retry_delay_s > 0
        c.manager.close()

    run(body())


def test_groups_whose_reserve_call_failed_are_tried_again() -> None:
    async def body() -> None:
        c = Cluster({"a": 4})
        c.raylets["a"].unreachable = True
        groups = await asyncio.gather(*(c.create([1]) for _ in range(3)))
        await asyncio.sleep(0.05)
        for pg in groups:
            info = c.manager.groups[pg].info
            assert info.state == State.PENDING and "did not answer reserve" in info.message
            assert info.stats.scheduling_state == "FAILED_TO_COMMIT_RESOURCES"
        c.raylets["a"].unreachable = False
        for pg in groups:
            assert (await c.wait(pg)).state == State.CREATED
        assert len(c.raylets["a"].committed) == 3 and c.raylets["a"].free == 1
        c.manager.close()

    run(body())


def test_a_group_that_does_not_fit_waits_for_a_node() -> None:
    async def body() -> None:
        c = Cluster({"a": 1})
        pg = await c.create([1, 1], proto_enums.PG_STRICT_SPREAD)
        info = await c.wait(pg, 0.2)
        assert info.state == State.PENDING and info.stats.scheduling_state == "INFEASIBLE"
        assert not c.raylets["a"].calls  # no round trip for what cannot fit
        c.raylets["b"] = FakeRaylet(b"b", 1)
        c.nodes["b"] = pb.NodeInfo(
            node_id=b"b", address="b", alive=True, total=pb.ResourceMap(amounts={"CPU": 1}),
            available=pb.ResourceMap(amounts={"CPU": 1}),
        )  # fmt: skip
        c.manager.kick()  # as the node table does when a node registers
        assert (await c.wait(pg)).state == State.CREATED
        c.manager.close()

    run(body())


def test_the_bundles_of_a_dead_node_are_placed_again_and_the_rest_stay() -> None:
    async def body() -> None:
        c = Cluster({"a": 1, "b": 1, "c": 1})
        pg = await c.create([1, 1], proto_enums.PG_STRICT_SPREAD)
        await c.wait(pg)
        first, second = c.where(pg)
        spare = ({"a", "b", "c"} - {first, second}).pop()
        c.kill(first)
        info = c.manager.groups[pg].info
        assert info.state == State.RESCHEDULING and "died" in info.message
        ready = await c.manager.wait_for_shape(ResourceSet({bundles.group_name("bundle", pg, 0): 0.001}))
        assert ready is None
        assert c.where(pg) == [spare, second]
        assert (await c.wait(pg)).state == State.CREATED
        c.manager.close()

    run(body())


def test_groups_created_together_are_placed_together_and_removals_share_cancels() -> None:
    async def body() -> None:
        c = Cluster({"a": 8})
        groups = [await c.create([1]) for _ in range(6)]
        for pg in groups:
            assert (await c.wait(pg)).state == State.CREATED
        raylet = c.raylets["a"]
        # Groups placed on one node are prepared and committed in one phase, those placed
        # together in one call.
        assert 1 <= raylet.calls.count("reserve") < 6 and raylet.free == 2 and len(raylet.committed) == 6
        assert "prepare" not in raylet.calls and "commit" not in raylet.calls
        raylet.calls.clear()
        await asyncio.gather(
            *(c.manager.remove_placement_group(pb.PlacementGroupId(placement_group_id=g)) for g in groups)
        )
        await c.settled()
        assert raylet.free == 8 and not raylet.committed
        assert 1 <= raylet.calls.count("cancel") < 6  # removals that came together, cancelled together
        c.manager.close()

    run(body())


def test_removal_cancels_the_bundles_and_frees_the_name() -> None:
    async def body() -> None:
        c = Cluster({"a": 2})
        pg = await c.create([1, 1], name="named")
        await c.wait(pg)
        waiter = asyncio.create_task(
            c.manager.wait_for_shape(ResourceSet({bundles.group_name("bundle", b"x" * 18): 1}))
        )
        assert await waiter == f"its placement group {(b'x' * 18).hex()} does not exist"
        await c.manager.remove_placement_group(pb.PlacementGroupId(placement_group_id=pg))
        assert c.manager.groups[pg].info.state == State.REMOVED
        await c.settled()  # the bundles are released after the reply, as in Ray
        assert c.raylets["a"].free == 2 and not c.raylets["a"].committed
        assert (await c.wait(pg)).state == State.REMOVED
        shape = ResourceSet({bundles.group_name("bundle", pg, 0): 0.001})
        assert "was removed" in (await c.manager.wait_for_shape(shape) or "")
        with pytest.raises(Exception, match="no placement group"):
            await c.manager.get_placement_group(pb.GetPlacementGroupRequest(name="named", namespace="ns"))
        await c.create([1], name="named")  # the name is free
        c.manager.close()

    run(body())


def test_a_finished_job_takes_its_groups_that_are_not_detached() -> None:
    async def body() -> None:
        c = Cluster({"a": 4})
        attached = await c.create([1])
        detached = await c.create([1], detached=True)
        await c.wait(attached)
        await c.wait(detached)
        c.manager.on_job_finished(JOB)
        await c.settled()  # removed in the background
        assert c.manager.groups[attached].info.state == State.REMOVED
        assert c.raylets["a"].free == 3
        assert c.manager.groups[detached].info.state == State.CREATED
        c.manager.close()

    run(body())


def test_a_restarted_gcs_keeps_its_groups_and_cancels_bundles_it_does_not_know() -> None:
    async def body() -> None:
        c = Cluster({"a": 2, "b": 2})
        placed = await c.create([1, 1], proto_enums.PG_SPREAD, name="kept")
        await c.wait(placed)
        c.raylets["a"].fail_prepare = True
        c.raylets["b"].fail_prepare = True
        pending = await c.create([1])
        await c.wait(pending, 0.2)
        await c.manager._tables.flush()
        c.manager.close()
        # A round the restart interrupted left a bundle that the table never recorded.
        c.raylets["a"].prepared[(b"z" * 18, 0)] = 1
        c.raylets["a"].free -= 1
        for r in c.raylets.values():
            r.fail_prepare = False
            r.calls.clear()

        c.storage = c.storage.reopen()
        c.manager = c.new_manager()
        assert await c.manager.recover() == 2
        assert (await c.wait(placed)).state == State.CREATED
        assert sorted(c.where(placed)) == ["a", "b"]
        assert (await c.wait(pending)).state == State.CREATED
        assert (b"z" * 18, 0) not in c.raylets["a"].prepared and "cancel" in c.raylets["a"].calls
        named = await c.manager.get_placement_group(pb.GetPlacementGroupRequest(name="kept", namespace="ns"))
        assert named.placement_group_id == placed
        c.manager.close()

    run(body())
