"""Ray's `wait` semantics (test_basic.py): `num_returns`, `timeout`, the order of the two lists,
failed refs counting as ready, and the errors on bad input (duplicates, non-refs, bad numbers)."""

from __future__ import annotations

import time

import pytest

import aioray
from aioray.testing import SignalActor


@aioray.remote
def sleeper(seconds, value=None):
    time.sleep(seconds)
    return seconds if value is None else value


@aioray.remote
def fail():
    raise RuntimeError("failed task")


def test_default_waits_for_one(ray) -> None:
    signal = SignalActor.remote()
    blocked = signal.wait.remote()
    quick = sleeper.remote(0)
    ready, not_ready = ray.wait([blocked, quick], timeout=30)
    assert ready == [quick] and not_ready == [blocked]
    ray.get(signal.send.remote(), timeout=30)


def test_num_returns_and_list_order(ray) -> None:
    refs = [ray.put(i) for i in range(5)]
    ready, not_ready = ray.wait(refs, num_returns=5, timeout=30)
    assert ready == refs and not_ready == []
    # Exactly num_returns refs are reported ready even when more are; both lists keep input order.
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=30)
    assert len(ready) == 2 and len(not_ready) == 3
    assert [r for r in refs if r in ready] == ready
    assert [r for r in refs if r in not_ready] == not_ready
    assert set(ready) | set(not_ready) == set(refs)


def test_mixed_readiness_keeps_input_order_in_both_lists(ray) -> None:
    signal = SignalActor.remote()
    blocked = [signal.wait.remote() for _ in range(3)]
    done = [ray.put(i) for i in range(3)]
    mixed = [blocked[0], done[0], blocked[1], done[1], blocked[2], done[2]]
    ready, not_ready = ray.wait(mixed, num_returns=3, timeout=30)
    assert ready == done and not_ready == blocked
    ray.get(signal.send.remote(), timeout=30)


def test_timeout_returns_what_is_ready(ray) -> None:
    signal = SignalActor.remote()
    blocked = signal.wait.remote()
    done = ray.put(1)
    start = time.monotonic()
    ready, not_ready = ray.wait([blocked, done], num_returns=2, timeout=0.5)
    elapsed = time.monotonic() - start
    assert ready == [done] and not_ready == [blocked]
    assert 0.4 <= elapsed < 5
    start = time.monotonic()
    ready, not_ready = ray.wait([blocked], timeout=0)
    assert (ready, not_ready) == ([], [blocked]) and time.monotonic() - start < 2
    ray.get(signal.send.remote(), timeout=30)
    ready, _ = ray.wait([blocked], timeout=30)
    assert ready == [blocked]


def test_no_timeout_waits_until_enough_are_ready(ray) -> None:
    refs = [sleeper.remote(0.1 * i) for i in range(4)]
    start = time.monotonic()
    ready, not_ready = ray.wait(refs, num_returns=4)
    assert ready == refs and not_ready == []
    assert time.monotonic() - start < 20


def test_failed_refs_count_as_ready(ray) -> None:
    signal = SignalActor.remote()
    blocked = signal.wait.remote()
    bad = fail.remote()
    ready, not_ready = ray.wait([blocked, bad], timeout=30)
    assert ready == [bad] and not_ready == [blocked]
    with pytest.raises(RuntimeError, match="failed task"):
        ray.get(ready[0], timeout=30)
    ray.get(signal.send.remote(), timeout=30)


def test_empty_list(ray) -> None:
    assert ray.wait([]) == ([], [])


def test_wait_then_get_every_ref_in_completion_loop(ray) -> None:
    pending = [sleeper.remote(0.05 * (i % 3), value=i) for i in range(8)]
    seen = []
    while pending:
        ready, pending = ray.wait(pending, timeout=30)
        assert len(ready) == 1
        seen.append(ray.get(ready[0], timeout=30))
    assert sorted(seen) == list(range(8))


def test_fetch_local_false_is_accepted(ray) -> None:
    ref = ray.put(3)
    assert ray.wait([ref], fetch_local=False, timeout=30) == ([ref], [])


def test_duplicate_refs_are_a_value_error(ray) -> None:
    ref = ray.put(1)
    with pytest.raises(ValueError):
        ray.wait([ref, ref], num_returns=1, timeout=30)


def test_single_ref_instead_of_a_list_is_a_type_error(ray) -> None:
    with pytest.raises(TypeError):
        ray.wait(ray.put(1))


def test_non_list_containers_are_a_type_error(ray) -> None:
    with pytest.raises(TypeError):
        ray.wait((ray.put(1),))
    with pytest.raises(TypeError):
        ray.wait({ray.put(1)})


def test_list_holding_a_non_ref_is_a_type_error(ray) -> None:
    with pytest.raises(TypeError):
        ray.wait([ray.put(1), 2])
    with pytest.raises(TypeError):
        ray.wait(["not a ref"])


def test_num_returns_beyond_the_list_is_a_value_error(ray) -> None:
    refs = [ray.put(1), ray.put(2)]
    with pytest.raises(ValueError):
        ray.wait(refs, num_returns=3)


def test_non_positive_num_returns_is_a_value_error(ray) -> None:
    refs = [ray.put(1)]
    with pytest.raises(ValueError):
        ray.wait(refs, num_returns=0)
    with pytest.raises(ValueError):
        ray.wait(refs, num_returns=-1)


def test_negative_timeout_is_a_value_error(ray) -> None:
    with pytest.raises(ValueError):
        ray.wait([ray.put(1)], timeout=-1)
