"""A node dies mid-work: its tasks are retried elsewhere, its actors restart elsewhere, its objects are rebuilt."""

from __future__ import annotations

import time

import numpy as np
import pytest

import aioray
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .conftest import eventually
from .multinode import MiB, connected, node_ids_by_resource


@pytest.fixture
def cluster():
    with connected({"a": 1}, {"b": {"w": 1, "slot": 1, "b": 1}, "c": {"w": 1, "slot": 1, "c": 1}}) as nodes:
        yield nodes


def here() -> str:
    return aioray.get_runtime_context().get_node_id()


@aioray.remote(resources={"w": 0.1}, max_retries=3, num_returns=2)
def make(mib: int):
    return here(), np.full(mib * MiB, 3, dtype=np.uint8)


@aioray.remote(resources={"w": 0.1}, max_restarts=2)
class Keeper:
    def node(self):
        return here()


@aioray.remote(resources={"a": 0.1})
class Borrower:
    """Holds a ref nested in its argument (so it borrows it) without reading it until asked."""

    def __init__(self, refs):
        self.refs = refs

    def ready(self):
        return True

    def first_byte(self):
        return int(aioray.get(self.refs[0], timeout=120)[0])


@aioray.remote(num_cpus=0, resources={"slot": 1}, max_retries=3)
def slow(seconds: float):
    time.sleep(seconds)
    return here()


def test_node_death_retries_restarts_and_reconstructs(cluster) -> None:
    ids = node_ids_by_resource()
    by_id = {ids["b"]: "b", ids["c"]: "c"}
    where, made = make.remote(30)
    victim_id = aioray.get(where, timeout=60)  # the array itself stays on that node only
    victim = by_id[victim_id]
    survivor_id = ids["c" if victim == "b" else "b"]
    # An actor on the victim node; soft affinity, so that its restart may go elsewhere.
    keeper = Keeper.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim_id, soft=True)).remote()
    assert aioray.get(keeper.node.remote(), timeout=60) == victim_id
    # A task running on the victim when it dies (one "slot" per node: one runs on each).
    running = [slow.remote(3) for _ in range(2)]
    borrower = Borrower.remote([made])
    assert aioray.get(borrower.ready.remote(), timeout=60)
    time.sleep(1.0)

    start = time.monotonic()
    cluster.kill(victim)
    eventually(lambda: not all(n["Alive"] for n in aioray.nodes()), 30, "the node being declared dead")
    detect_s = time.monotonic() - start
    print(f"dead node detected after {detect_s:.1f}s")

    # The task that ran there is retried on the survivor.
    assert set(aioray.get(running, timeout=120)) == {survivor_id}
    # The actor restarts on the survivor.
    eventually(lambda: _node_of(keeper) == survivor_id, 60, "the actor restarting on the survivor")
    # The object whose only copy was there is rebuilt by re-running its task: first at a borrower's
    # request (it cannot read the copy and asks the owner), then the owner reads the new copy.
    assert aioray.get(borrower.first_byte.remote(), timeout=120) == 3
    value = aioray.get(made, timeout=120)
    assert value.nbytes == 30 * MiB and value[0] == 3
    assert aioray.get(where, timeout=60) == survivor_id, "the task re-ran on the survivor"


def _node_of(actor) -> str | None:
    try:
        return aioray.get(actor.node.remote(), timeout=30)
    except aioray.RayActorError:
        return None


def test_lost_put_object_raises_object_lost(cluster) -> None:
    @aioray.remote(resources={"b": 0.1})
    def put_there():
        return [aioray.put(np.zeros(5 * MiB, dtype=np.uint8))]  # owned by a worker on node b

    inner = aioray.get(put_there.remote(), timeout=60)[0]
    b = node_ids_by_resource()["b"]
    cluster.kill("b")
    # The node's worker (the owner) dies with its raylet a moment later; until then it could still
    # serve the object from its own mapping of the store.
    eventually(
        lambda: not any(n["Alive"] for n in aioray.nodes() if n["NodeID"] == b),
        30,
        "node b being declared dead",
    )
    with pytest.raises((aioray.ObjectLostError, aioray.OwnerDiedError)):
        aioray.get(inner, timeout=60)
