"""The memory monitor on a real node: a task that blows the node's memory budget is killed, fails with
OutOfMemoryError or is retried, an actor killed for memory dies saying so, and the node lives on.

The node's limit is set with AIORAY_MEMORY_LIMIT_BYTES a little above the machine's current usage
(the raylet inherits the driver's environment at init), so the threshold is crossed only while a
hungry task allocates, without exhausting the machine."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import aioray
from aioray._private.raylet import memory_monitor as mm

MiB = 1 << 20
LIMIT_ABOVE = 1024 * MiB  # the limit, above the usage measured before the cluster starts
HOG_CAP = 4096 * MiB  # what a hungry task allocates at most, when the monitor fails to kill it
CHUNK = 32 * MiB
CROSS_AT = 512 * MiB  # the threshold, likewise


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    """A 2-CPU cluster whose node runs out of memory once a task holds about CROSS_AT bytes; its node id."""
    snapshot = mm.read_memory()
    assert snapshot is not None
    limit = snapshot.used + LIMIT_ABOVE
    env = {
        mm.LIMIT_ENV: str(limit),
        mm.THRESHOLD_ENV: f"{(snapshot.used + CROSS_AT) / limit:.4f}",
        mm.REFRESH_ENV: "50",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        # No dashboard: one process fewer in the budget above, and nothing here looks at it.
        aioray.init(num_cpus=2, object_store_memory=64 * MiB, include_dashboard=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield aioray.nodes()[0]["NodeID"]
    finally:
        aioray.shutdown()


def hog(seconds: float = 60.0) -> None:
    """Touches memory a chunk at a time until the monitor kills it (or HOG_CAP bytes, then holds).

    Growing until killed, not to a fixed size: the machine's usage drifts from the snapshot the
    limit was set from (this VM returns freed pages to the free count at ~15 MiB/s)."""
    held = []
    for _ in range(HOG_CAP // CHUNK):
        held.append(b"\x01" * CHUNK)
        time.sleep(0.02)  # slower than the monitor's look every 50 ms: little overshoot
    time.sleep(seconds)
    del held


def test_a_task_without_retries_fails_with_out_of_memory(node: str) -> None:
    @aioray.remote(max_retries=0)
    def hungry() -> int:
        hog()
        return 1

    with pytest.raises(aioray.exceptions.OutOfMemoryError) as err:
        aioray.get(hungry.remote(), timeout=60)
    message = str(err.value)
    assert isinstance(err.value, aioray.exceptions.RayError)
    for part in ("hungry", node, "memory monitor", "threshold", mm.THRESHOLD_ENV, "limit"):
        assert part in message, (part, message)


def test_a_task_killed_for_memory_is_retried(node: str, tmp_path: Path) -> None:
    attempts = tmp_path / "attempts"

    @aioray.remote(max_retries=2)
    def hungry_once(path: str) -> str:
        with open(path, "a") as f:
            f.write("x")
        with open(path) as f:
            if len(f.read()) == 1:  # only the first attempt is hungry
                hog()
        return "done"

    assert aioray.get(hungry_once.remote(str(attempts)), timeout=60) == "done"
    assert attempts.read_text() == "xx"


def test_an_actor_killed_for_memory_dies_saying_so(node: str) -> None:
    @aioray.remote
    class Hoarder:
        def hoard(self) -> int:
            hog()
            return 1

    actor = Hoarder.remote()  # type: ignore[attr-defined]
    with pytest.raises(aioray.exceptions.ActorDiedError) as err:
        aioray.get(actor.hoard.remote(), timeout=60)
    assert "memory monitor" in str(err.value)


def test_the_node_lives_on(node: str) -> None:
    @aioray.remote
    def small(x: int) -> int:
        return x + 1

    assert aioray.get([small.remote(i) for i in range(10)], timeout=30) == list(range(1, 11))
    assert [(n["NodeID"], n["Alive"]) for n in aioray.nodes()] == [(node, True)]
