"""Ray's error semantics (issue #18): fail-fast list get, errors catchable as the user's class."""

from __future__ import annotations

import pickle
import time

import pytest

import aioray
from aioray.exceptions import GetTimeoutError, RayTaskError


@aioray.remote
def divide_by_zero():
    return 1 / 0


@aioray.remote
def sleeper(seconds):
    time.sleep(seconds)
    return seconds


@aioray.remote
def nested_get(depth):
    if depth == 0:
        return 1 / 0
    return aioray.get(nested_get.remote(depth - 1))


def test_list_get_raises_as_soon_as_one_fails(ray) -> None:
    slow = sleeper.remote(20)
    start = time.monotonic()
    with pytest.raises(ZeroDivisionError):
        ray.get([slow, divide_by_zero.remote()])
    assert time.monotonic() - start < 10
    # The slow task was not cancelled: it still finishes.
    assert ray.get(slow, timeout=30) == 20


def test_list_get_timeout_still_applies(ray) -> None:
    with pytest.raises(GetTimeoutError):
        ray.get([sleeper.remote(5), sleeper.remote(0)], timeout=0.5)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_error_is_catchable_as_the_user_class_through_nesting(ray, depth) -> None:
    with pytest.raises(ZeroDivisionError) as info:
        ray.get(nested_get.remote(depth))
    err = info.value
    assert isinstance(err, RayTaskError)
    assert isinstance(err.cause, ZeroDivisionError)
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, RayTaskError) and isinstance(copy, ZeroDivisionError)
    assert isinstance(copy.cause, ZeroDivisionError)
    assert str(copy) == str(err)
