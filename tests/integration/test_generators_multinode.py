"""Streaming generators across nodes: items produced in another node's store are read here, and an
item lost with its node is rebuilt by running the generator again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import aioray

from .multinode import MiB, Nodes, connected, node_ids_by_resource

T = 60


@pytest.fixture
def cluster() -> Any:
    with connected({"a": 1}, {"b": {"w": 1, "b": 1}, "c": {"w": 1, "c": 1}}) as nodes:
        yield nodes


@aioray.remote(resources={"w": 0.5}, max_retries=3)
def blocks(n: int, log: str) -> Any:
    node = aioray.get_runtime_context().get_node_id()
    with open(log, "a") as f:
        f.write(node + "\n")
    for i in range(n):
        yield node, np.full(2 * MiB, i, dtype=np.uint8)  # over the inline limit: in that node's store


def test_items_from_another_node(cluster: Nodes, tmp_path: Path) -> None:
    ids = node_ids_by_resource()
    items = aioray.get(list(blocks.remote(3, str(tmp_path / "runs"))), timeout=T)
    assert items[0][0] in (ids["b"], ids["c"])  # not the head: the items came from another node's store
    assert [int(array[0]) for _, array in items] == [0, 1, 2]


def test_items_lost_with_their_node_are_rebuilt_by_running_the_generator_again(
    cluster: Nodes, tmp_path: Path
) -> None:
    ids = node_ids_by_resource()
    log = tmp_path / "runs"
    refs = list(blocks.remote(3, str(log)))
    ready, _ = aioray.wait(refs, num_returns=3, timeout=T)  # produced; not read, so not copied here
    assert len(ready) == 3
    (producer,) = log.read_text().split()
    lost, survivor = ("b", "c") if producer == ids["b"] else ("c", "b")
    cluster.kill(lost)
    cluster.wait_alive(2)  # its raylet is gone: nothing can be read from it any more
    rebuilt = aioray.get(refs, timeout=T)  # the owner runs the generator again, on the other node
    assert log.read_text().split() == [producer, ids[survivor]]
    assert {node for node, _ in rebuilt} == {ids[survivor]}
    assert [int(array[0]) for _, array in rebuilt] == [0, 1, 2]
