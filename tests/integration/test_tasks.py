"""Remote functions end to end on a real local cluster, through the Ray-compatible API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import aioray
from aioray.exceptions import GetTimeoutError, RayTaskError

from .conftest import eventually


@aioray.remote
def double(x):
    return 2 * x


@aioray.remote
def add(a, b=0):
    return a + b


@aioray.remote
def fail(message):
    raise ValueError(message)


def test_simple_tasks(ray) -> None:
    assert ray.get(double.remote(21)) == 42
    assert ray.get([double.remote(i) for i in range(10)]) == [2 * i for i in range(10)]
    assert ray.get(add.remote(1, b=2)) == 3
    assert ray.get(add.options(num_cpus=0.5).remote(5)) == 5


def test_put_get_and_object_refs_are_values(ray) -> None:
    ref = ray.put({"a": [1, 2, 3]})
    assert ray.get(ref) == {"a": [1, 2, 3]}
    assert ray.get(add.remote(ray.put(1), ray.put(2))) == 3
    assert hash(ref) == hash(ref.binary()) and ref == ref
    assert isinstance(ref, aioray.ObjectRef)


def test_chain_of_100_dependent_tasks(ray) -> None:
    ref = ray.put(0)
    for _ in range(100):
        ref = add.remote(ref, 1)
    assert ray.get(ref, timeout=60) == 100


def test_thousands_of_small_tasks(ray) -> None:
    refs = [double.remote(i) for i in range(3000)]
    assert ray.get(refs, timeout=120) == [2 * i for i in range(3000)]


def test_large_values_are_zero_copy_numpy(ray) -> None:
    big = np.arange(5_000_000, dtype=np.float64)  # 40 MB
    ref = ray.put(big)
    out = ray.get(ref)
    assert isinstance(out, np.ndarray) and not out.flags.writeable
    assert np.array_equal(out, big)

    @ray.remote
    def total(a):
        return float(a.sum())

    @ray.remote
    def make(n):
        return np.ones(n, dtype=np.uint8)

    assert ray.get(total.remote(ref)) == float(big.sum())
    assert ray.get(total.remote(big)) == float(big.sum())  # a large argument goes through the store
    made = ray.get(make.remote(30 << 20))
    assert made.nbytes == 30 << 20 and made.all()


def test_multiple_returns(ray) -> None:
    @ray.remote(num_returns=3)
    def three():
        return 1, "two", [3]

    a, b, c = three.remote()
    assert ray.get([a, b, c]) == [1, "two", [3]]


def test_errors_keep_the_user_class_and_the_remote_traceback(ray) -> None:
    with pytest.raises(ValueError, match="boom") as info:
        ray.get(fail.remote("boom"))
    assert isinstance(info.value, RayTaskError)
    assert "raise ValueError(message)" in str(info.value)
    # Through a chain of dependent tasks, too.
    with pytest.raises(ValueError, match="deep"):
        ray.get(double.remote(add.remote(fail.remote("deep"), 1)))


def test_get_timeout(ray) -> None:
    @ray.remote
    def slow():
        time.sleep(1.5)
        return "late"

    ref = slow.remote()
    with pytest.raises(GetTimeoutError) as info:
        ray.get(ref, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert ray.wait([ref], timeout=0) == ([], [ref]), "the get gave up while the task still ran"
    # The timeout only ended the wait: the task finishes and its value is still there.
    assert ray.get(ref, timeout=30) == "late"


def test_bad_input_fails_at_submission(ray) -> None:
    import threading

    with pytest.raises(TypeError, match="argument 0 cannot be sent"):
        double.remote(threading.Lock())
    with pytest.raises(TypeError, match=r"double\.remote"):
        double.remote(1, 2)
    with pytest.raises(TypeError, match="cannot be called directly"):
        double(1)
    with pytest.raises(ValueError, match="unknown option"):
        double.options(num_cpu=1)
    with pytest.raises(ValueError, match="an ObjectRef or a list"):  # a ValueError, as in Ray
        ray.get(1)


def test_wait_keeps_input_order(ray) -> None:
    @ray.remote
    def sleep_then(x, t):
        time.sleep(t)
        return x

    refs = [sleep_then.remote(i, t) for i, t in enumerate([0.6, 0.0, 0.3])]
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=10)
    assert ready == [refs[1], refs[2]] and not_ready == [refs[0]]
    ready, not_ready = ray.wait(refs, num_returns=3, timeout=0)
    assert len(ready) + len(not_ready) == 3
    ready, not_ready = ray.wait(refs, num_returns=3, timeout=10)
    assert ready == refs and not_ready == []


def test_tasks_run_in_parallel(ray) -> None:
    @ray.remote
    def nap():
        start = time.time()
        time.sleep(0.5)
        return os.getpid(), start, time.time()

    (pid_a, start_a, end_a), (pid_b, start_b, end_b) = ray.get([nap.remote(), nap.remote()])
    assert pid_a != pid_b
    assert start_a < end_b and start_b < end_a, "the two tasks' run times overlap"


def test_infeasible_task_fails_clearly(ray) -> None:
    with pytest.raises(aioray.RayError, match="no live node has"):
        ray.get(double.options(num_gpus=1).remote(1), timeout=10)
    with pytest.raises(aioray.RayError, match="no live node has"):
        ray.get(double.options(resources={"unicorn": 1}).remote(1), timeout=10)


def test_nested_tasks_and_runtime_context(ray) -> None:
    @ray.remote
    def inner(x):
        return x + 1, aioray.get_runtime_context().get_task_id()

    @ray.remote
    def outer(n):
        values = ray.get([inner.remote(i) for i in range(n)])
        return [v for v, _ in values], {t for _, t in values}

    values, task_ids = ray.get(outer.remote(5))
    assert values == [1, 2, 3, 4, 5] and len(task_ids) == 5
    ctx = aioray.get_runtime_context()
    assert len(ctx.get_node_id()) == 32 and ctx.get_task_id() is None


def test_worker_crash_is_retried_then_reported(ray, tmp_path) -> None:
    marker = tmp_path / "crashed-once"

    @ray.remote(max_retries=2)
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "recovered"

    assert ray.get(crash_once.remote(str(marker)), timeout=60) == "recovered"

    @ray.remote(max_retries=0)
    def crash_always():
        os._exit(1)

    with pytest.raises(aioray.WorkerCrashedError):
        ray.get(crash_always.remote(), timeout=60)


def test_application_errors_retry_only_when_asked(ray, tmp_path) -> None:
    counter = tmp_path / "count"
    counter.write_text("0")

    @ray.remote(max_retries=3, retry_exceptions=[KeyError])
    def flaky(path):
        n = int(open(path).read()) + 1
        open(path, "w").write(str(n))
        if n < 3:
            raise KeyError(n)
        return n

    assert ray.get(flaky.remote(str(counter)), timeout=60) == 3
    counter.write_text("0")
    with pytest.raises(KeyError):
        ray.get(flaky.options(retry_exceptions=False).remote(str(counter)), timeout=60)


def test_cluster_info(ray) -> None:
    nodes = ray.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    assert node["Alive"] and node["NodeManagerAddress"] == "127.0.0.1" and node["Resources"]["CPU"] == 2
    assert ray.cluster_resources()["CPU"] == 2
    eventually(lambda: ray.available_resources().get("CPU") == 2, what="all CPUs free")
    assert ray.is_initialized()


def test_worker_output_reaches_the_driver_terminal() -> None:
    script = """
import aioray
aioray.init(num_cpus=1)

@aioray.remote
def talk():
    print("hello from a task")
    return 1

assert aioray.get(talk.remote()) == 1
aioray.shutdown()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\(talk pid=\d+\) hello from a task$", proc.stdout, re.M), proc.stdout
