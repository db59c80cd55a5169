"""Scheduling strategies on a CLI-started three-node cluster: node affinity, SPREAD, node labels
and label selectors, the hybrid DEFAULT policy's locality, for tasks and actors."""

from __future__ import annotations

import time

import pytest

import aioray
from aioray.testing import wait_for_condition
from aioray.util.scheduling_strategies import (
    DoesNotExist,
    In,
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    NotIn,
)
from tests.integration.multinode import MiB, Nodes


@pytest.fixture(scope="module")
def cluster():
    nodes = Nodes()
    try:
        nodes.start_head({"head": 1}, num_cpus=1, extra=("--labels", "zone=a,tier=web"))
        nodes.add_node("b", {"b": 1}, num_cpus=2, extra=("--labels", "zone=b,disk=ssd"))
        nodes.add_node("c", {"c": 1}, num_cpus=1, extra=("--labels", '{"zone": "c"}'))
        aioray.init(address=nodes.address)
        nodes.wait_alive(3)
        yield {n["Labels"]["zone"]: n["NodeID"] for n in aioray.nodes() if n["Alive"]}
    finally:
        aioray.shutdown()
        nodes.stop()


@aioray.remote(num_cpus=0)
def where(pause: float = 0.0) -> str:
    time.sleep(pause)
    return aioray.get_runtime_context().get_node_id()


@aioray.remote(num_cpus=0)
class Where:
    def node(self) -> str:
        return aioray.get_runtime_context().get_node_id()


def test_nodes_carry_their_labels_and_ray_s_node_id_label(cluster) -> None:
    by_zone = {n["Labels"]["zone"]: n for n in aioray.nodes() if n["Alive"]}
    assert by_zone["a"]["Labels"]["tier"] == "web"
    assert by_zone["b"]["Labels"]["disk"] == "ssd"
    for n in by_zone.values():
        assert n["Labels"]["ray.io/node-id"] == n["NodeID"]


def test_hard_node_affinity_runs_tasks_and_actors_on_that_node(cluster) -> None:
    for node_id in cluster.values():
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        assert aioray.get(where.options(scheduling_strategy=strategy).remote(), timeout=60) == node_id
        actor = Where.options(scheduling_strategy=strategy).remote()
        assert aioray.get(actor.node.remote(), timeout=60) == node_id
        aioray.kill(actor)


def test_hard_node_affinity_waits_for_a_busy_node(cluster) -> None:
    c = NodeAffinitySchedulingStrategy(cluster["c"], soft=False)
    busy = [where.options(num_cpus=1, scheduling_strategy=c).remote(0.5) for _ in range(3)]
    # One CPU on c: the three run there one after another rather than elsewhere.
    assert aioray.get(busy, timeout=60) == [cluster["c"]] * 3


def test_affinity_to_an_unknown_node_fails_hard_and_falls_back_soft(cluster) -> None:
    gone = "ab" * 16
    with pytest.raises(aioray.exceptions.RayError, match="dead or unknown"):
        aioray.get(
            where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(gone, soft=False)).remote(),
            timeout=30,
        )
    soft = NodeAffinitySchedulingStrategy(gone, soft=True)
    assert aioray.get(where.options(scheduling_strategy=soft).remote(), timeout=60) in cluster.values()
    with pytest.raises(ValueError, match="Invalid node_id"):
        NodeAffinitySchedulingStrategy("not-hex", soft=False)


def wait_all_cpus_free() -> None:
    """Leases of earlier tests end a moment after their results arrive: SPREAD sees them busy."""
    wait_for_condition(lambda: aioray.available_resources().get("CPU") == 4.0, timeout=30)
    time.sleep(0.2)  # the raylets' views follow the GCS's


def test_spread_puts_concurrent_tasks_on_distinct_nodes(cluster) -> None:
    wait_all_cpus_free()
    refs = [where.options(num_cpus=1, scheduling_strategy="SPREAD").remote(1.0) for _ in range(3)]
    assert set(aioray.get(refs, timeout=60)) == set(cluster.values())


def test_spread_actors_land_on_every_node(cluster) -> None:
    wait_all_cpus_free()
    actors = [Where.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    assert {aioray.get(a.node.remote(), timeout=60) for a in actors} == set(cluster.values())
    for a in actors:
        aioray.kill(a)


def test_node_label_strategy_hard_and_soft(cluster) -> None:
    only_b = NodeLabelSchedulingStrategy({"zone": In("b")})
    assert aioray.get(where.options(scheduling_strategy=only_b).remote(), timeout=60) == cluster["b"]
    not_a_or_b = NodeLabelSchedulingStrategy({"zone": NotIn("a", "b")})
    assert aioray.get(where.options(scheduling_strategy=not_a_or_b).remote(), timeout=60) == cluster["c"]
    no_tier = NodeLabelSchedulingStrategy({"tier": DoesNotExist()}, soft={"disk": In("ssd")})
    assert aioray.get(where.options(scheduling_strategy=no_tier).remote(), timeout=60) == cluster["b"]
    actor = Where.options(scheduling_strategy=only_b).remote()
    assert aioray.get(actor.node.remote(), timeout=60) == cluster["b"]
    aioray.kill(actor)


def test_label_selector(cluster) -> None:
    assert aioray.get(where.options(label_selector={"zone": "c"}).remote(), timeout=60) == cluster["c"]
    assert (
        aioray.get(where.options(label_selector={"zone": "in(b, c)", "disk": "ssd"}).remote(), timeout=60)
        == cluster["b"]
    )
    got = aioray.get([where.options(label_selector={"zone": "!a"}).remote() for _ in range(4)], timeout=60)
    assert cluster["a"] not in got


def test_labels_no_node_has_make_the_task_unschedulable(cluster) -> None:
    with pytest.raises(aioray.exceptions.RayError, match="no live node among the nodes with labels zone in"):
        aioray.get(where.options(label_selector={"zone": "mars"}).remote(), timeout=30)
    with pytest.raises(ValueError, match="invalid label_selector value"):
        where.options(label_selector={"zone": "in(b,"})


@aioray.remote(num_cpus=0)
def payload(mib: int) -> bytes:
    return b"x" * (mib * MiB)


@aioray.remote
def consume(data: bytes) -> tuple[int, str]:
    return len(data), aioray.get_runtime_context().get_node_id()


def test_default_runs_a_task_where_its_large_argument_is(cluster) -> None:
    for zone in ("b", "c"):
        on = NodeAffinitySchedulingStrategy(cluster[zone], soft=False)
        big = payload.options(scheduling_strategy=on).remote(8)
        size, node = aioray.get(consume.remote(big), timeout=60)
        assert (size, node) == (8 * MiB, cluster[zone])
