"""Placement groups across CLI-started nodes: a strict spread, a group waiting for a node to join,
a group whose node dies, and groups across a GCS restart."""

from __future__ import annotations

import os
import signal
import time

import aioray
from aioray.util import get_placement_group, placement_group, placement_group_table, remove_placement_group
from aioray.util.placement_group import PlacementGroup
from aioray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .conftest import eventually
from .multinode import Nodes, connected, node_ids_by_resource


@aioray.remote(num_cpus=0)
def node_of_task() -> str:
    return aioray.get_runtime_context().get_node_id()


@aioray.remote(num_cpus=0, max_restarts=1, max_task_retries=-1)
class Resident:
    def node(self) -> str:
        return aioray.get_runtime_context().get_node_id()


def nodes_of_bundles(pg: PlacementGroup) -> list[str]:
    """The node each bundle's task runs on."""
    refs = [
        node_of_task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
        for i in range(pg.bundle_count)
    ]
    return aioray.get(refs, timeout=60)


def test_strict_spread_puts_each_bundle_on_its_own_node() -> None:
    with connected({"head": 1}, {"b": {"b": 1}, "c": {"c": 1}}):
        pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
        assert aioray.get(pg.ready(), timeout=60) == pg
        where = nodes_of_bundles(pg)
        assert len(set(where)) == 3
        assert sorted(where) == sorted(n["NodeID"] for n in aioray.nodes() if n["Alive"])
        assert placement_group_table(pg)["bundles_to_node_id"] == dict(enumerate(where))
        # A fourth bundle has no node of its own: that group waits.
        too_many = placement_group([{"CPU": 0.5}] * 4, strategy="STRICT_SPREAD")
        assert not too_many.wait(1)
        assert placement_group_table(too_many)["stats"]["scheduling_state"] == "INFEASIBLE"
        remove_placement_group(too_many)
        remove_placement_group(pg)
        eventually(lambda: aioray.available_resources().get("CPU") == 3.0, 10, "the CPUs being released")


def test_an_infeasible_group_is_placed_when_a_node_with_room_joins() -> None:
    with connected({"head": 1}, {}) as nodes:
        pg = placement_group([{"CPU": 1}, {"CPU": 1, "gpu_like": 1}], strategy="STRICT_SPREAD")
        ready = pg.ready()
        assert not pg.wait(1)
        assert placement_group_table(pg)["state"] == "PENDING"
        assert aioray.wait([ready], timeout=0.5)[0] == []
        # Work for it waits too, rather than failing.
        waiting = node_of_task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 1)).remote()
        nodes.add_node("big", {"gpu_like": 1})
        nodes.wait_alive(2)
        assert aioray.get(ready, timeout=60) == pg
        big = node_ids_by_resource()["gpu_like"]
        assert aioray.get(waiting, timeout=60) == big
        assert placement_group_table(pg)["bundles_to_node_id"][1] == big
        remove_placement_group(pg)


def test_a_group_is_rescheduled_when_a_node_holding_bundles_dies() -> None:
    workers = {"b": {"w": 1, "b": 1}, "c": {"w": 1, "c": 1}, "d": {"w": 1, "d": 1}}
    with connected({"head": 1}, workers) as cluster:
        # Every node that joined, also one a loaded machine's health check thought dead for a moment.
        by_id = {n["NodeID"]: k for n in aioray.nodes() for k in workers if k in n["Resources"]}
        pg = placement_group([{"w": 1}, {"w": 1}], strategy="STRICT_SPREAD")
        assert pg.wait(60)
        before = placement_group_table(pg)["bundles_to_node_id"]
        assert nodes_of_bundles(pg) == [before[0], before[1]]
        resident = Resident.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
        assert aioray.get(resident.node.remote(), timeout=60) == before[0]

        cluster.kill(by_id[before[0]])

        def noticed() -> bool:
            # Rescheduling onto the spare node can end between two looks: RESCHEDULING may go unseen.
            table = placement_group_table(pg)
            return bool(table["state"] != "CREATED" or table["bundles_to_node_id"][0] != before[0])

        eventually(noticed, 30, "the group noticing its node died")
        assert pg.wait(60)
        after = placement_group_table(pg)["bundles_to_node_id"]
        assert after[1] == before[1]  # the surviving bundle stayed
        assert after[0] not in (before[0], before[1])  # the lost one went to the spare node
        assert nodes_of_bundles(pg) == [after[0], after[1]]
        # The actor in the lost bundle restarted in the bundle's new place.
        deadline = time.monotonic() + 60
        while True:
            try:
                assert aioray.get(resident.node.remote(), timeout=60) == after[0]
                break
            except aioray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        remove_placement_group(pg)


def test_groups_outlive_a_gcs_restart() -> None:
    with connected({"head": 1}, {"b": {"b": 1}}) as cluster:
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD", name="kept")
        assert pg.wait(60)
        before = placement_group_table(pg)["bundles_to_node_id"]
        resident = Resident.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 1)).remote()
        assert aioray.get(resident.node.remote(), timeout=60) == before[1]
        waiting = placement_group([{"CPU": 1, "late": 1}])
        assert not waiting.wait(0.5)

        old = cluster.gcs_pid()
        os.kill(old, signal.SIGKILL)
        eventually(lambda: _gcs_restarted(cluster, old), 30, "the supervisor restarting the GCS")
        eventually(lambda: sum(n["Alive"] for n in aioray.nodes()) == 2, 30, "both nodes listed alive again")
        row = placement_group_table(get_placement_group("kept"))
        assert row["state"] == "CREATED" and row["bundles_to_node_id"] == before
        assert nodes_of_bundles(pg) == [before[0], before[1]]
        assert aioray.get(resident.node.remote(), timeout=60) == before[1]
        # The pending group is still pending, and is placed once a node with room joins.
        assert placement_group_table(waiting)["state"] == "PENDING"
        cluster.add_node("late", {"late": 1})
        assert waiting.wait(60)
        remove_placement_group(pg)

        def resident_dead() -> bool:  # killed right after the removal returns, as in Ray
            try:
                aioray.get(resident.node.remote(), timeout=60)
            except aioray.exceptions.RayActorError:
                return True
            return False

        eventually(resident_dead, 30, "the resident actor being killed")
        remove_placement_group(waiting)


def _gcs_restarted(nodes: Nodes, old_pid: int) -> bool:
    try:
        return nodes.gcs_pid() != old_pid
    except RuntimeError:
        return False
