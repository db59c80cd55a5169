"""Issue 14's features across nodes: asyncio futures of refs made on another node, a queue shared by
tasks on two nodes, concurrency groups of an actor on another node, a generator consumed with async for."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import aioray
from aioray.util.queue import Queue

from .multinode import Nodes, connected, node_ids_by_resource

T = 60


@pytest.fixture
def cluster() -> Any:
    with connected({"a": 1}, {"b": {"b": 1}}) as nodes:
        yield nodes


@aioray.remote(resources={"b": 0.1})
def on_b(x: int) -> tuple[str, int]:
    return aioray.get_runtime_context().get_node_id(), x


@aioray.remote(resources={"b": 0.1})
def produce(q: Queue, n: int) -> str:
    for i in range(n):
        q.put(i, timeout=T)
    return aioray.get_runtime_context().get_node_id()


@aioray.remote(resources={"b": 0.1})
def tokens(text: str) -> Any:
    for word in text.split():
        yield word, aioray.get_runtime_context().get_node_id()


@aioray.remote(resources={"b": 0.1}, concurrency_groups={"io": 2})
class Gate:
    def __init__(self) -> None:
        self.both_in = threading.Barrier(2, timeout=20)

    @aioray.method(concurrency_group="io")
    def enter(self) -> bool:
        self.both_in.wait()  # passes only if two io calls run at once
        return True

    def node(self) -> str:
        return aioray.get_runtime_context().get_node_id()


async def test_issue_14_features_across_nodes(cluster: Nodes) -> None:
    b = node_ids_by_resource()["b"]

    refs = [on_b.remote(i) for i in range(8)]
    done, _ = await asyncio.wait(refs, timeout=T)
    assert sorted(r.result() for r in done) == [(b, i) for i in range(8)]

    q = Queue()
    producer = produce.remote(q, 5)
    assert [await q.get_async(timeout=T) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert await producer == b

    assert [item async for item in _values(tokens.remote("across the nodes"))] == [
        ("across", b),
        ("the", b),
        ("nodes", b),
    ]

    gate = Gate.remote()
    assert await gate.node.remote() == b
    assert await asyncio.gather(gate.enter.remote(), gate.enter.remote()) == [True, True]
    q.shutdown()


async def _values(gen: Any) -> Any:
    async for ref in gen:
        yield await ref
