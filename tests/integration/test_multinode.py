"""Several nodes: placement by resources, object transfer, spillback, cross-node GC (the seed 000 walkthrough)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import aioray
from aioray._store import ObjectStore

from .conftest import eventually
from .multinode import MiB, Nodes, connected, node_ids_by_resource


@pytest.fixture(scope="module")
def cluster():
    # Node c keeps its data port closed: its peers pull its objects over gRPC instead.
    grpc_only = {"c": {"AIORAY_OBJECT_TRANSFER": "grpc"}}
    with connected({"a": 1}, {"b": {"b": 1}, "c": {"c": 1}}, env=grpc_only) as nodes:
        yield nodes


def here() -> str:
    return aioray.get_runtime_context().get_node_id()


@aioray.remote(resources={"b": 0.5})
def make_x(mib: int):
    return here(), np.full(mib * MiB, 7, dtype=np.uint8)


@aioray.remote(resources={"c": 0.5})
def consume(x_and_node):
    node_b, x = x_and_node
    return here(), node_b, int(x[0]), x.nbytes  # small Y


@aioray.remote(resources={"a": 0.5})
def task_a(mib: int):
    x = make_x.remote(mib)
    y = consume.remote(x)
    return here(), aioray.get(y)


def test_nodes_join_and_are_listed(cluster) -> None:
    nodes = aioray.nodes()
    assert len(nodes) == 3 and all(n["Alive"] for n in nodes)
    assert {"NodeID", "Alive", "NodeManagerAddress", "NodeManagerPort", "Resources"} <= set(nodes[0])
    assert aioray.cluster_resources()["CPU"] == 3


def test_seed_walkthrough_a_submits_b_and_c_c_consumes_x(cluster) -> None:
    ids = node_ids_by_resource()
    node_a, (node_c, node_b, first, nbytes) = aioray.get(task_a.remote(50), timeout=120)
    assert (node_a, node_b, node_c) == (ids["a"], ids["b"], ids["c"])
    assert first == 7 and nbytes == 50 * MiB


def test_objects_of_a_node_without_data_port_travel_over_grpc(cluster) -> None:
    @aioray.remote(resources={"c": 0.5})
    def made_on_c():
        return here(), np.arange(30 * MiB // 8, dtype=np.int64)

    @aioray.remote(resources={"b": 0.5})
    def checksum_on_b(pair):
        return here(), int(pair[1].sum())

    ids = node_ids_by_resource()
    n = 30 * MiB // 8
    ref = made_on_c.remote()
    node_b, total = aioray.get(checksum_on_b.remote(ref), timeout=120)  # c -> b
    node_c, value = aioray.get(ref, timeout=120)  # c -> the head, for the driver
    assert (node_b, node_c) == (ids["b"], ids["c"])
    assert total == n * (n - 1) // 2 and value[-1] == n - 1
    ports = {node["NodeID"]: node["ObjectManagerPort"] for node in aioray.nodes()}
    assert ports[ids["c"]] == 0 and ports[ids["b"]] > 0


def test_large_transfer_to_the_driver(cluster) -> None:
    node, ref_value = aioray.get(make_x.remote(200), timeout=120)
    assert node == node_ids_by_resource()["b"]
    assert ref_value.nbytes == 200 * MiB and ref_value[-1] == 7


def test_spillback_spreads_work_over_nodes(cluster) -> None:
    import time

    @aioray.remote
    def where():
        time.sleep(0.3)
        return here()

    placed = aioray.get([where.remote() for _ in range(6)], timeout=120)
    assert len(set(placed)) >= 2, "with one CPU per node, tasks spread to other nodes"


def test_cross_node_gc_empties_every_store(cluster) -> None:
    @aioray.remote(resources={"c": 0.5})
    def total(x):
        return int(x.sum())

    @aioray.remote(resources={"b": 0.5})
    def big():
        return np.ones(20 * MiB, dtype=np.uint8)

    ref = big.remote()
    assert aioray.get(total.remote(ref), timeout=120) == 20 * MiB  # a copy now lives on node c as well
    oid = ref.binary()
    stores = [ObjectStore.attach(n["ObjectStoreSocketName"]) for n in aioray.nodes() if n["Alive"]]
    assert sum(s.contains(oid) for s in stores) >= 2
    del ref
    gc.collect()
    eventually(lambda: not any(s.contains(oid) for s in stores), 15, "every copy being freed")


def test_spilled_object_as_argument_on_another_node(cluster) -> None:
    @aioray.remote(resources={"c": 0.5})
    def first_byte(x):
        return int(x[0]), here()

    # 400 MiB of puts into the head's 300 MiB store: the oldest ones go to disk.
    refs = [aioray.put(np.full(40 * MiB, i, dtype=np.uint8)) for i in range(10)]
    me = aioray.get_runtime_context().get_node_id()
    eventually(lambda: aioray.stats()["nodes"][me]["spilled_bytes_total"] > 0, 10, "spilling on the head")
    value, node = aioray.get(first_byte.remote(refs[0]), timeout=120)  # spilled, read on node c
    assert value == 0 and node == node_ids_by_resource()["c"]
    del refs
    gc.collect()


def test_driver_may_start_before_its_head(monkeypatch) -> None:
    import subprocess
    import sys
    import time

    monkeypatch.setenv("AIORAY_AUTH_TOKEN", "token-agreed-in-advance")  # both the head and the driver use it
    nodes = Nodes()
    script = f"""
import aioray
aioray.init(address={nodes.address!r})  # retries until the head answers
print(sum(n["Alive"] for n in aioray.nodes()))
aioray.shutdown()
"""
    driver = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(2)
        assert driver.poll() is None, "the driver gave up before the head came up"
        nodes.start_head({"a": 1})
        out, err = driver.communicate(timeout=60)
        assert driver.returncode == 0, err
        assert out.strip() == "1"
    finally:
        driver.kill()
        driver.wait()
        nodes.stop()
