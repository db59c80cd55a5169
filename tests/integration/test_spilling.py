"""Memory pressure: primary copies spill to disk and come back, nothing is lost, nothing leaks."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import aioray

from .conftest import eventually

MiB = 1 << 20


@pytest.fixture(scope="module")
def small_store():
    aioray.init(num_cpus=2, object_store_memory=100 * MiB)
    try:
        yield aioray
    finally:
        aioray.shutdown()


def _node():
    return aioray.nodes()[0]


def _spill_dir() -> str:
    from aioray._private import worker_api

    return worker_api.require().core.spill_dir


def _spill_files() -> list[str]:
    d = _spill_dir()
    return os.listdir(d) if os.path.isdir(d) else []


def test_three_times_the_store_stays_readable(small_store) -> None:
    arrays = [np.full(10 * MiB, i, dtype=np.uint8) for i in range(30)]  # 300 MiB in a 100 MiB store
    refs = [aioray.put(a) for a in arrays]
    assert _spill_files(), "something must have been spilled"
    for i, ref in enumerate(refs):
        out = aioray.get(ref)
        assert out.shape == (10 * MiB,) and out[0] == i and out[-1] == i and not out.flags.writeable
        del out
    stats = aioray.stats()
    assert stats["spilled_bytes_total"] > 200 * MiB and stats["restored_bytes"] > 0

    @aioray.remote
    def checksum(a):
        return int(a[0]), int(a.sum() // a.size)

    # Spilled objects as task arguments.
    assert aioray.get([checksum.remote(r) for r in refs]) == [(i, i) for i in range(30)]
    del refs, arrays
    gc.collect()
    eventually(lambda: not _spill_files(), 15, "spill files going with their objects")


def test_put_and_drop_ten_times_the_store(small_store) -> None:
    for i in range(50):  # 1 GB through a 100 MiB store
        ref = aioray.put(np.full(20 * MiB, i % 256, dtype=np.uint8))
        assert aioray.get(ref)[7] == i % 256
        del ref
    gc.collect()
    eventually(lambda: not _spill_files(), 15, "no spill files left")
    eventually(lambda: _node_store_used() < 30 * MiB, 15, "the store emptying")


def _node_store_used() -> int:
    return aioray.stats()["store_used_bytes"]


def test_task_returns_spill_too(small_store) -> None:
    @aioray.remote
    def make(i):
        return np.full(15 * MiB, i, dtype=np.uint8)

    refs = [make.remote(i) for i in range(12)]  # 180 MiB of returns
    values = aioray.get(refs)
    assert [int(v[0]) for v in values] == list(range(12))
