"""Reference counting across processes: objects leave the store once the last reference anywhere is gone."""

from __future__ import annotations

import gc

import numpy as np

from .conftest import eventually

BIG = 2 << 20  # well above the 100 KiB inline limit: these objects live in the store


def test_put_object_is_freed_with_its_last_ref(ray, store_of_node) -> None:
    store = store_of_node()
    ref = ray.put(np.zeros(BIG, dtype=np.uint8))
    oid = ref.binary()
    assert store.contains(oid)
    copy = ref
    del ref
    gc.collect()
    assert store.contains(oid), "a second local ref keeps it"
    del copy
    eventually(lambda: not store.contains(oid), 10, "the object leaving the store")


def test_task_return_is_freed(ray, store_of_node) -> None:
    @ray.remote
    def make():
        return np.ones(BIG, dtype=np.uint8)

    store = store_of_node()
    ref = make.remote()
    assert ray.get(ref).sum() == BIG
    oid = ref.binary()
    assert store.contains(oid)
    del ref
    eventually(lambda: not store.contains(oid), 10, "the return value leaving the store")


def test_borrowed_ref_keeps_object_alive_until_the_borrower_drops_it(ray, store_of_node) -> None:
    @ray.remote
    def hold(refs):
        # Returns the nested ref: the caller now borrows it through the returned list.
        return refs

    store = store_of_node()
    ref = ray.put(np.zeros(BIG, dtype=np.uint8))
    oid = ref.binary()
    held = hold.remote([ref])
    del ref
    gc.collect()
    inner = ray.get(held)  # a list holding the inner ref
    assert store.contains(oid), "the returned list still references it"
    del held
    gc.collect()
    assert store.contains(oid), "the deserialized inner ref keeps it"
    assert ray.get(inner[0]).nbytes == BIG
    del inner
    gc.collect()
    eventually(lambda: not store.contains(oid), 10, "the object leaving the store")


def test_ref_nested_in_a_put_object(ray, store_of_node) -> None:
    store = store_of_node()
    inner = ray.put(np.zeros(BIG, dtype=np.uint8))
    oid = inner.binary()
    outer = ray.put({"payload": inner})
    del inner
    gc.collect()
    assert store.contains(oid), "the outer object contains it"
    got = ray.get(outer)["payload"]
    assert ray.get(got).nbytes == BIG
    del got, outer
    gc.collect()
    eventually(lambda: not store.contains(oid), 10, "the inner object leaving the store")


def test_ref_passed_to_a_task_survives_while_the_task_runs(ray, store_of_node) -> None:
    @ray.remote
    def slow_sum(refs):
        import time

        time.sleep(0.5)
        return int(ray.get(refs[0]).sum())

    store = store_of_node()
    ref = ray.put(np.ones(BIG, dtype=np.uint8))
    oid = ref.binary()
    result = slow_sum.remote([ref])
    del ref
    gc.collect()
    assert ray.get(result, timeout=30) == BIG
    eventually(lambda: not store.contains(oid), 10, "the argument leaving the store after the task")


def test_objects_made_by_nested_tasks_are_freed(ray, store_of_node) -> None:
    @ray.remote
    def make():
        return np.ones(BIG, dtype=np.uint8)

    @ray.remote
    def outer():
        ref = make.remote()
        return int(ray.get(ref).sum()), ref.binary()

    store = store_of_node()
    total, oid = ray.get(outer.remote(), timeout=30)
    assert total == BIG
    eventually(lambda: not store.contains(oid), 10, "the nested task's return leaving the store")


def test_views_held_by_a_crashed_worker_do_not_pin_the_memory(ray, store_of_node) -> None:
    import os

    import pytest

    @ray.remote(max_retries=0)
    def crash_while_reading(x):
        assert x.nbytes == BIG  # a zero-copy view of the store object, never released
        os._exit(1)

    store = store_of_node()
    used_before = store.stats()["used_bytes"]
    ref = ray.put(np.ones(BIG, dtype=np.uint8))
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(crash_while_reading.remote(ref), timeout=60)
    del ref
    gc.collect()
    # The owner deletes the object; the dead worker's reference is given back when the raylet
    # sees it exit, so the memory returns instead of waiting for a release that never comes.
    eventually(
        lambda: store.stats()["used_bytes"] <= used_before, 10, "the crashed reader's memory returning"
    )
    assert store.stats()["reaped_readers"] >= 1
