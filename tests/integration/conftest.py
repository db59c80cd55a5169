"""Real clusters on 127.0.0.1: GCS, raylet and worker processes, torn down after use."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

import aioray
from aioray._store import ObjectStore

from ..conftest import SESSION_TAG


def _aioray_children() -> set[int]:
    """Pids of aioray daemons whose parent chain leads to this test process."""
    me = os.getpid()
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"aioray._private" in cmd and (ppid == me or ppid in out):
            out.add(int(entry))
    return out


@pytest.fixture(scope="module")
def ray() -> Iterator[object]:
    """A 2-CPU embedded cluster through the Ray-compatible API, shared by a module's tests."""
    aioray.init(num_cpus=2, object_store_memory=512 << 20)
    try:
        yield aioray
    finally:
        aioray.shutdown()


@pytest.fixture
def store_of_node() -> Callable[[], ObjectStore]:
    """Attaches this test to the (first) node's store, to look at what it holds."""

    def attach() -> ObjectStore:
        return ObjectStore.attach(aioray.nodes()[0]["ObjectStoreSocketName"])

    return attach


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(0.02)


def _our_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"aioray-{SESSION_TAG}-")}


@pytest.fixture(autouse=True, scope="module")
def no_leftovers() -> Iterator[None]:
    before = _our_segments()
    yield
    eventually(lambda: not _aioray_children(), 10, "all aioray processes exiting")
    eventually(lambda: _our_segments() <= before, 10, "store segments being removed")
