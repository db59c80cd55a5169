"""A GCS that dies comes back (its supervisor restarts it, its tables reload from storage) while the
cluster keeps working; and a driver whose head is gone gets a clear error, not a hang."""

from __future__ import annotations

import os
import signal
import time

import pytest

import aioray
from aioray._private.common.rpc import GcsUnreachableError

from ..unit.gcs.redis_server import redis_server
from .conftest import eventually
from .multinode import Nodes


@aioray.remote
def square(x: int) -> int:
    return x * x


@aioray.remote
def cube(x: int) -> int:
    return x * x * x


@aioray.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def _check_failover(nodes: Nodes) -> None:
    aioray.init(address=nodes.address)
    nodes.wait_alive(2)
    keeper = Counter.options(name="keeper", lifetime="detached").remote()
    counter = Counter.remote()
    assert aioray.get([keeper.add.remote(1), counter.add.remote(1), square.remote(3)], timeout=60) == [
        1,
        1,
        9,
    ]

    old_gcs = nodes.gcs_pid()
    os.kill(old_gcs, signal.SIGKILL)
    # While the GCS is down: calls to live actors and tasks on live nodes go on.
    assert aioray.get(counter.add.remote(1), timeout=30) == 2
    assert aioray.get([square.remote(i) for i in range(4)], timeout=30) == [0, 1, 4, 9]

    # It comes back on the same address with its tables: nodes, named actors, functions.
    eventually(lambda: _gcs_restarted(nodes, old_gcs), 30, "the supervisor restarting the GCS")
    eventually(lambda: sum(n["Alive"] for n in aioray.nodes()) == 2, 30, "both nodes listed alive again")
    again = aioray.get_actor("keeper")
    assert aioray.get(again.add.remote(10), timeout=30) == 11, "the detached actor kept its state"
    assert aioray.get(counter.add.remote(1), timeout=30) == 3
    # New functions, new actors and new tasks work.
    assert aioray.get(cube.remote(3), timeout=30) == 27
    fresh = Counter.remote()
    assert aioray.get(fresh.add.remote(5), timeout=30) == 5
    aioray.kill(again)


def _gcs_restarted(nodes: Nodes, old_pid: int) -> bool:
    try:
        return nodes.gcs_pid() != old_pid
    except RuntimeError:
        return False


def test_gcs_restarts_with_its_tables_from_sqlite() -> None:
    nodes = Nodes()
    try:
        nodes.start_head({})  # the default storage: a SQLite file in the session folder
        nodes.add_node("b", {})
        _check_failover(nodes)
    finally:
        aioray.shutdown()
        nodes.stop()


def test_gcs_restarts_with_its_tables_from_redis(tmp_path) -> None:
    with redis_server(tmp_path) as url:
        nodes = Nodes()
        try:
            nodes.start_head({}, extra=("--storage", url))
            nodes.add_node("b", {})
            _check_failover(nodes)
        finally:
            aioray.shutdown()
            nodes.stop()


def test_a_driver_whose_head_is_gone_gets_a_clear_error_within_its_timeout() -> None:
    nodes = Nodes()
    try:
        nodes.start_head({})
        aioray.init(address=nodes.address)
        nodes.wait_alive(1)
        nodes.kill_hard("head")
        start = time.monotonic()
        with pytest.raises(GcsUnreachableError, match=nodes.address):
            aioray.nodes()
        assert time.monotonic() - start < 20
    finally:
        aioray.shutdown()
        nodes.stop()
        # The head was SIGKILLed whole: its segment is an orphan for the next start/stop/init.
        from aioray._private.common import segments

        segments.reclaim_orphans(os.environ.get("AIORAY_SESSION_TAG"))
