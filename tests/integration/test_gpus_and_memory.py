"""GPUs and the memory resource on a CLI-started node (``aioray start --num-gpus 2 --memory ...``):
each GPU lease sees its own devices in CUDA_VISIBLE_DEVICES, and ``memory=`` reserves bytes."""

from __future__ import annotations

import os
import time

import pytest

import aioray
from aioray.testing import wait_for_condition
from tests.integration.multinode import Nodes

GiB = 1 << 30


@pytest.fixture(scope="module")
def cluster():
    nodes = Nodes()
    try:
        nodes.start_head({}, num_cpus=4, extra=("--num-gpus", "2", "--memory", str(GiB)))
        aioray.init(address=nodes.address)
        nodes.wait_alive(1)
        yield nodes
    finally:
        aioray.shutdown()
        nodes.stop()


@aioray.remote
def devices(pause: float = 0.0) -> tuple[str | None, list[int], float, float]:
    start = time.time()
    time.sleep(pause)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), aioray.get_gpu_ids(), start, time.time()


def test_the_node_offers_what_it_was_started_with(cluster) -> None:
    total = aioray.cluster_resources()
    assert total["GPU"] == 2 and total["memory"] == GiB and total["CPU"] == 4


def test_two_concurrent_one_gpu_tasks_get_distinct_devices(cluster) -> None:
    a, b = aioray.get([devices.options(num_gpus=1).remote(1.0) for _ in range(2)], timeout=60)
    assert {a[0], b[0]} == {"0", "1"}
    assert sorted(a[1] + b[1]) == [0, 1]
    assert a[2] < b[3] and b[2] < a[3], "the two ran at the same time"


def test_a_third_gpu_task_waits_for_a_free_device(cluster) -> None:
    runs = aioray.get([devices.options(num_gpus=1).remote(0.7) for _ in range(3)], timeout=60)
    runs.sort(key=lambda r: r[2])
    assert runs[2][2] >= min(runs[0][3], runs[1][3]) - 0.05, "the third started when a device was free"


def test_fractional_gpus_share_a_device_and_whole_ones_take_two(cluster) -> None:
    halves = aioray.get([devices.options(num_gpus=0.5).remote(0.5) for _ in range(2)], timeout=60)
    assert halves[0][0] == halves[1][0] and halves[0][0] in ("0", "1")
    (both,) = aioray.get([devices.options(num_gpus=2).remote()], timeout=60)
    assert both[0] == "0,1" and both[1] == [0, 1]
    with pytest.raises(ValueError, match="whole number"):
        devices.options(num_gpus=1.5)


def test_a_task_without_gpus_sees_none_after_a_gpu_task_on_the_same_worker(cluster) -> None:
    aioray.get(devices.options(num_gpus=1).remote(), timeout=60)
    for _ in range(3):  # the same worker is reused for the CPU-only shape or not: either way, no GPU
        env, ids, _, _ = aioray.get(devices.remote(), timeout=60)
        assert env is None and ids == []


def test_an_actor_keeps_its_gpu_for_its_life(cluster) -> None:
    @aioray.remote(num_gpus=1)
    class Trainer:
        def devices(self) -> tuple[str | None, list[int]]:
            return os.environ.get("CUDA_VISIBLE_DEVICES"), aioray.get_gpu_ids()

    trainer = Trainer.remote()
    first = aioray.get(trainer.devices.remote(), timeout=60)
    assert first[0] in ("0", "1") and first[1] == [int(first[0])]
    other = aioray.get(devices.options(num_gpus=1).remote(), timeout=60)
    assert other[0] != first[0], "the other device was the one free"
    assert aioray.get(trainer.devices.remote(), timeout=60) == first
    assert aioray.get_runtime_context().get_accelerator_ids() == {"GPU": []}  # the driver has none
    aioray.kill(trainer)


def test_memory_is_reserved_while_a_task_runs(cluster) -> None:
    @aioray.remote(memory=600 << 20)
    def hold() -> tuple[float, float]:
        start = time.time()
        time.sleep(1.0)
        return start, time.time()

    ref = hold.remote()
    wait_for_condition(lambda: aioray.available_resources().get("memory", 0) == GiB - (600 << 20), timeout=30)
    aioray.get(ref, timeout=60)
    # Two that together exceed the node's memory run one after the other.
    first, second = sorted(aioray.get([hold.remote(), hold.remote()], timeout=60))
    assert second[0] >= first[1] - 0.05, "the second started once the first gave its memory back"


def test_more_memory_than_any_node_has_is_unschedulable(cluster) -> None:
    @aioray.remote(memory=2 * GiB)
    def big() -> None:
        pass

    with pytest.raises(aioray.exceptions.RayError, match="no live node has"):
        aioray.get(big.remote(), timeout=30)
