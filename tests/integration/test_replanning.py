"""Queued work is re-planned when the cluster changes: a node that joins or frees up takes its share."""

from __future__ import annotations

import time

import aioray

from .multinode import Nodes


@aioray.remote(num_cpus=1)
def occupy(seconds: float) -> str:
    time.sleep(seconds)
    return aioray.get_runtime_context().get_node_id()


def test_requests_queued_before_a_node_joined_move_to_it() -> None:
    nodes = Nodes()
    try:
        nodes.start_head({})
        aioray.init(address=nodes.address)
        refs = [occupy.remote(1.5) for _ in range(4)]  # one runs on the head, three queue there
        nodes.add_node("b", {})
        nodes.wait_alive(2)
        ran_on = aioray.get(refs, timeout=60)
        head = next(n["NodeID"] for n in aioray.nodes() if n["NodeManagerAddress"] and n["Alive"])
        assert len(set(ran_on)) == 2, f"all four ran on one node ({head[:12]}): the queue was not re-planned"
    finally:
        aioray.shutdown()
        nodes.stop()


def test_a_request_queued_behind_a_busy_node_moves_when_another_frees_up() -> None:
    nodes = Nodes()
    try:
        nodes.start_head({"h": 1})
        nodes.add_node("b", {"b": 1})
        aioray.init(address=nodes.address)
        nodes.wait_alive(2)
        blocker = occupy.options(resources={"b": 1}).remote(1.0)  # node b is busy for a second
        time.sleep(0.5)
        refs = [occupy.remote(2.0) for _ in range(3)]  # b is full: all three queue on the head
        ran_on = aioray.get(refs, timeout=60)
        node_b = aioray.get(blocker, timeout=60)
        assert node_b in ran_on, "node b freed up but no queued request moved to it"
    finally:
        aioray.shutdown()
        nodes.stop()
