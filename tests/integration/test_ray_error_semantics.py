"""Ray's error semantics (issue #18): fail-fast list get, errors catchable as the user's class, errors
that cannot cross process boundaries, cancelled dependencies, unread errors reported."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time

import pytest

import aioray
from aioray.exceptions import GetTimeoutError, RayError, RayTaskError, TaskCancelledError


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


class HoldsALock(Exception):
    """Cannot be pickled at all."""

    def __init__(self) -> None:
        super().__init__("this error holds a lock")
        self.lock = threading.Lock()


class NeedsTwoArguments(Exception):
    """Pickles, but cannot be rebuilt: unpickling calls __init__ with the message only."""

    def __init__(self, first: int, second: int) -> None:
        super().__init__(f"first={first} second={second}")


@aioray.remote
def raise_unpicklable() -> None:
    raise HoldsALock()


@aioray.remote
def raise_unrebuildable() -> None:
    raise NeedsTwoArguments(1, 2)


def test_an_error_that_cannot_be_pickled_arrives_with_its_text(ray) -> None:
    with pytest.raises(RayError, match="this error holds a lock"):
        ray.get(raise_unpicklable.remote(), timeout=30)


def test_an_error_that_cannot_be_unpickled_arrives_with_its_text(ray) -> None:
    with pytest.raises(RayError, match="first=1 second=2"):
        ray.get(raise_unrebuildable.remote(), timeout=30)


def test_a_task_depending_on_a_cancelled_task_raises_task_cancelled(ray) -> None:
    @aioray.remote
    def identity(x):
        return x

    slow = sleeper.remote(60)
    dependent = identity.remote(slow)
    time.sleep(0.5)
    ray.cancel(slow)
    for ref in (slow, dependent):
        with pytest.raises(TaskCancelledError) as info:
            ray.get(ref, timeout=30)
        assert not isinstance(info.value, RayTaskError)


UNHANDLED_SCRIPT = """
import gc, sys, time
import aioray

@aioray.remote
def fails():
    raise ValueError("nobody read me")

@aioray.remote
def also_fails():
    raise KeyError("this one was read")

aioray.init(num_cpus=1, object_store_memory=64 << 20)
unread = fails.remote()
aioray.wait([unread], timeout=30)
read = also_fails.remote()
try:
    aioray.get(read, timeout=30)
except KeyError:
    pass
del unread, read
gc.collect()
time.sleep(1)
print("DROPPED", flush=True)
aioray.shutdown()
"""


@pytest.mark.parametrize("ignore", [False, True])
def test_errors_nobody_read_are_reported_when_dropped(ignore: bool) -> None:
    env = {**os.environ, "AIORAY_IGNORE_UNHANDLED_ERRORS": "1" if ignore else "0"}
    done = subprocess.run(
        [sys.executable, "-u", "-c", UNHANDLED_SCRIPT], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "DROPPED" in done.stdout
    assert "this one was read" not in done.stderr
    if ignore:
        assert "Unhandled error" not in done.stderr
    else:
        assert "Unhandled error (suppress with 'AIORAY_IGNORE_UNHANDLED_ERRORS=1')" in done.stderr
        assert "nobody read me" in done.stderr
