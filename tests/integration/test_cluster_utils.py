"""aioray.cluster_utils.Cluster: several real nodes on this machine, added, connected to and removed."""

from __future__ import annotations

import os

import pytest

import aioray
from aioray._private.common import process
from aioray.cluster_utils import Cluster
from aioray.testing import wait_for_condition


@aioray.remote(resources={"only_b": 1})
def where_b():
    return aioray.get_runtime_context().get_node_id()


@aioray.remote
def where():
    return aioray.get_runtime_context().get_node_id()


def alive_ids() -> set[str]:
    return {n["NodeID"] for n in aioray.nodes() if n["Alive"]}


def test_head_and_two_nodes_then_kill_one() -> None:
    with Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head_res": 1}}
    ) as cluster:
        b = cluster.add_node(num_cpus=1, resources={"only_b": 1})
        c = cluster.add_node(num_cpus=1, resources={"only_c": 2})
        assert cluster.list_all_nodes() == [cluster.head_node, b, c]
        cluster.wait_for_nodes()
        context = cluster.connect()
        assert context["address"] == cluster.address
        assert alive_ids() == {n.node_id for n in cluster.list_all_nodes()}
        resources = aioray.cluster_resources()
        assert resources["CPU"] == 3 and resources["only_b"] == 1 and resources["only_c"] == 2

        # A task that needs a resource only node b has runs there.
        assert aioray.get(where_b.remote(), timeout=60) == b.node_id
        assert b.all_processes() and os.path.exists(f"/dev/shm/{b.store_name}")

        # A node SIGKILLed as a whole (supervisor, raylet, workers) is marked dead by the GCS.
        tree = b.all_processes()
        cluster.remove_node(b, allow_graceful=False)
        assert all(process.is_gone(pid) for pid in tree)
        assert not os.path.exists(f"/dev/shm/{b.store_name}")  # removed for the dead raylet
        wait_for_condition(lambda: b.node_id not in alive_ids(), timeout=30)
        dead = [n for n in aioray.nodes() if n["NodeID"] == b.node_id]
        assert dead and not dead[0]["Alive"]
        assert cluster.list_all_nodes() == [cluster.head_node, c]
        cluster.wait_for_nodes()  # two nodes expected, two alive

        # The others go on; work that only b could do is infeasible now.
        assert aioray.get(where.remote(), timeout=60) in {cluster.head_node.node_id, c.node_id}
        orphan = where_b.remote()
        ready, _ = aioray.wait([orphan], timeout=0.5)
        if ready:  # aioray fails a task no live node can run (Ray keeps it pending)
            with pytest.raises(aioray.RayError, match="cannot be scheduled"):
                aioray.get(orphan)

        # A graceful removal stops the node cleanly.
        tree = c.all_processes()
        cluster.remove_node(c)
        assert all(process.is_gone(pid) for pid in tree)
        wait_for_condition(lambda: c.node_id not in alive_ids(), timeout=30)
        head_tree = cluster.head_node.all_processes()
    assert not aioray.is_initialized()  # shutdown disconnected the driver
    assert all(process.is_gone(pid) for pid in head_tree)
    assert cluster.list_all_nodes() == []
    cluster.shutdown()  # twice is safe


def test_nodes_added_before_connecting() -> None:
    cluster = Cluster()
    try:
        with pytest.raises(RuntimeError, match="no head node"):
            cluster.connect()
        head = cluster.add_node(num_cpus=1)
        assert cluster.head_node is head and head.is_head
        late = cluster.add_node(num_cpus=2, wait=False)
        cluster.wait_for_nodes(timeout=60)
        cluster.connect(namespace="ns")
        assert alive_ids() == {head.node_id, late.node_id}
        assert aioray.cluster_resources()["CPU"] == 3
        assert aioray.get_runtime_context().namespace == "ns"
        with pytest.warns(UserWarning, match="_system_config"):
            cluster.add_node(num_cpus=1, _system_config={})
        cluster.wait_for_nodes()
        assert len([n for n in aioray.nodes() if n["Alive"]]) == 3
    finally:
        cluster.shutdown()
    assert not aioray.is_initialized()


def test_a_node_that_cannot_start_reports_why() -> None:
    with Cluster(initialize_head=True) as cluster:
        with pytest.raises(RuntimeError, match="exited with code"):
            cluster.add_node(num_cpus=1, object_store_memory=1000)  # too small a store
        assert len(cluster.list_all_nodes()) == 1


async def test_from_an_async_test() -> None:
    with Cluster(initialize_head=True, connect=True) as cluster:
        assert cluster.connected
        cluster.wait_for_nodes()  # polls the GCS from a thread: fine inside a running event loop
        assert await where.remote() == cluster.head_node.node_id
    assert not aioray.is_initialized()
