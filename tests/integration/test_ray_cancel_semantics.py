"""Ray's cancellation semantics, as Ray's own test_cancel.py and the ray.cancel docs state them.

Every test here talks to aioray only through the Ray-compatible public API, so that a Ray Core
program that cancels tasks sees what it would see on Ray.
"""

from __future__ import annotations

import os
import random
import time

import pytest

import aioray
from aioray.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)
from aioray.testing import SignalActor, wait_for_condition

T = 30  # timeout of every blocking get


def cancelled_errors(force: bool) -> tuple[type[BaseException], ...]:
    """What Ray lets a get of a cancelled task (or of a task fed by one) raise."""
    if force:
        return (RayTaskError, TaskCancelledError, WorkerCrashedError, ObjectLostError)
    return (RayTaskError, TaskCancelledError)


@aioray.remote
def get_first(refs):
    """Blocks in a nested get on the ref it is handed inside a list (no scheduling dependency)."""
    return aioray.get(refs[0], timeout=60)


@aioray.remote
def touch_then_sleep(path: str, seconds: float = 60) -> str:
    open(path, "w").close()
    time.sleep(seconds)
    return "slept"


def _wait_file(path, timeout: float = 20) -> None:
    wait_for_condition(lambda: os.path.exists(path), timeout=timeout, retry_interval_ms=20)


def _grows(path, pause: float = 0.4) -> bool:
    before = os.path.getsize(path) if os.path.exists(path) else 0
    time.sleep(pause)
    after = os.path.getsize(path) if os.path.exists(path) else 0
    return after > before


@aioray.remote
def tick_forever(path: str, seconds: float = 30) -> None:
    """Appends to `path` every 20 ms (for `seconds`, so that a leftover does not outlive its test)."""
    end = time.time() + seconds
    while time.time() < end:
        with open(path, "a") as f:
            f.write(".")
        time.sleep(0.02)


# --- Chains of tasks blocked in get ----------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_cancelling_the_head_of_a_chain_fails_every_link(ray, force) -> None:
    signal = SignalActor.remote()
    first = get_first.remote([signal.wait.remote()])
    second = get_first.remote([first])
    third = get_first.remote([second])
    fourth = get_first.remote([third])
    assert ray.wait([first], timeout=0.2)[0] == []

    ray.cancel(first, force=force)
    for ref in (first, second, third, fourth):
        with pytest.raises(cancelled_errors(force)):
            ray.get(ref, timeout=T)
    ray.get(signal.send.remote(), timeout=T)


@pytest.mark.parametrize("force", [False, True])
def test_cancelling_the_middle_of_a_chain_leaves_upstream_running(ray, force) -> None:
    signal = SignalActor.remote()
    first = get_first.remote([signal.wait.remote()])
    second = get_first.remote([first])
    third = get_first.remote([second])
    fourth = get_first.remote([third])
    assert ray.wait([third], timeout=0.2)[0] == []

    ray.cancel(third, force=force)
    for ref in (third, fourth):
        with pytest.raises(cancelled_errors(force)):
            ray.get(ref, timeout=T)
    for ref in (first, second):
        with pytest.raises(GetTimeoutError):
            ray.get(ref, timeout=0.2)

    ray.get(signal.send.remote(), timeout=T)
    assert ray.get(first, timeout=T) is None
    assert ray.get(second, timeout=T) is None


@pytest.mark.parametrize("force", [False, True])
def test_cancelling_a_head_fails_all_its_dependents(ray, force) -> None:
    signal = SignalActor.remote()
    head = get_first.remote([signal.wait.remote()])
    dependents = [get_first.remote([head]) for _ in range(3)]
    assert ray.wait([head], timeout=0.2)[0] == []

    ray.cancel(head, force=force)
    for ref in dependents:
        with pytest.raises(cancelled_errors(force)):
            ray.get(ref, timeout=T)

    # Dependents can also be cancelled one by one while the new head keeps going.
    head2 = get_first.remote([signal.wait.remote()])
    more = [get_first.remote([head2]) for _ in range(3)]
    for ref in more:
        ray.cancel(ref, force=force)
    for ref in more:
        with pytest.raises(cancelled_errors(force)):
            ray.get(ref, timeout=T)
    ray.get(signal.send.remote(), timeout=T)
    assert ray.get(head2, timeout=T) is None


@pytest.mark.parametrize("force", [False, True])
def test_cancelled_argument_fails_the_consumer(ray, force) -> None:
    signal = SignalActor.remote()

    @ray.remote
    def finish(refs):
        aioray.get(refs[0], timeout=60)
        return "result"

    @ray.remote
    def join(a, b):
        return f"{a}{b}"

    a = finish.remote([signal.wait.remote()])
    b = finish.remote([signal.wait.remote()])
    joined = join.remote(a, b)
    after_a = finish.remote([a])
    assert ray.wait([a, b, joined, after_a], timeout=0.5)[0] == []

    ray.cancel(a, force=force)
    with pytest.raises(cancelled_errors(force)):
        ray.get(a, timeout=T)
    with pytest.raises(cancelled_errors(force)):
        ray.get(after_a, timeout=T)
    ray.get(signal.send.remote(), timeout=T)
    assert ray.get(b, timeout=T) == "result"
    with pytest.raises(cancelled_errors(force)):
        ray.get(joined, timeout=T)


def test_task_waiting_on_its_arguments_raises_task_cancelled_not_ray_task_error(ray) -> None:
    signal = SignalActor.remote()

    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    def slow_number(refs):
        aioray.get(refs[0], timeout=60)
        return 3

    upstream = slow_number.remote([signal.wait.remote()])
    dependent = square.remote(upstream)  # still waiting for its argument
    ray.cancel(dependent)
    with pytest.raises(TaskCancelledError) as info:
        ray.get(dependent, timeout=T)
    assert not isinstance(info.value, RayTaskError)
    # The upstream task was not touched.
    ray.get(signal.send.remote(), timeout=T)
    assert ray.get(upstream, timeout=T) == 3


@pytest.mark.parametrize("force", [False, True])
def test_cancel_through_a_borrowed_ref(ray, force) -> None:
    """The driver cancels a task that another task submitted (and owns)."""
    signal = SignalActor.remote()

    @ray.remote
    def submit(refs):
        return [get_first.remote([refs[0]])]

    inner = ray.get(submit.remote([signal.wait.remote()]), timeout=T)[0]
    with pytest.raises(GetTimeoutError):
        ray.get(inner, timeout=0.5)
    ray.cancel(inner, force=force)
    with pytest.raises(cancelled_errors(force)):
        ray.get(inner, timeout=T)
    ray.get(signal.send.remote(), timeout=T)


# --- Running and queued tasks ----------------------------------------------------------------


def test_cancel_task_blocked_in_time_sleep(ray, tmp_path) -> None:
    marker = str(tmp_path / "started")
    ref = touch_then_sleep.remote(marker)
    _wait_file(marker)
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    # The interrupted worker is healthy: the next tasks run.
    assert (
        ray.get([touch_then_sleep.remote(str(tmp_path / f"n{i}"), 0) for i in range(3)], timeout=T)
        == ["slept"] * 3
    )


def test_cancel_task_blocked_in_ray_get(ray, tmp_path) -> None:
    signal = SignalActor.remote()
    marker = str(tmp_path / "waiting")

    @ray.remote
    def waits(refs, path):
        open(path, "w").close()
        return aioray.get(refs[0], timeout=60)

    ref = waits.remote([signal.wait.remote()], marker)
    _wait_file(marker)
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    ray.get(signal.send.remote(), timeout=T)


def test_cancel_task_queued_behind_others(ray, tmp_path) -> None:
    busy = [touch_then_sleep.remote(str(tmp_path / f"busy{i}"), 2) for i in range(2)]
    for i in range(2):
        _wait_file(str(tmp_path / f"busy{i}"))
    queued_marker = tmp_path / "queued"
    queued = touch_then_sleep.remote(str(queued_marker), 0)
    ray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ray.get(queued, timeout=T)
    assert ray.get(busy, timeout=T) == ["slept", "slept"]
    time.sleep(0.3)
    assert not queued_marker.exists(), "a task cancelled while queued must never run"


def test_force_cancel_running_task_is_not_retried(ray, tmp_path) -> None:
    marker = tmp_path / "forced"
    ref = touch_then_sleep.options(max_retries=3).remote(str(marker))
    _wait_file(str(marker))
    ray.cancel(ref, force=True)
    with pytest.raises((TaskCancelledError, WorkerCrashedError)):
        ray.get(ref, timeout=T)
    marker.unlink()
    time.sleep(1.0)
    assert not marker.exists(), "a cancelled task must not be retried"


def test_force_cancel_kills_a_task_that_ignores_keyboard_interrupt(ray, tmp_path) -> None:
    marker = str(tmp_path / "stubborn")

    @ray.remote
    def stubborn(path):
        open(path, "w").close()
        while True:
            try:
                time.sleep(60)
            except KeyboardInterrupt:
                pass

    ref = stubborn.remote(marker)
    _wait_file(marker)
    ray.cancel(ref)  # swallowed by the task
    with pytest.raises(GetTimeoutError):
        ray.get(ref, timeout=1)
    ray.cancel(ref, force=True)
    with pytest.raises((TaskCancelledError, WorkerCrashedError)):
        ray.get(ref, timeout=T)


def test_keyboard_interrupt_is_what_the_task_sees(ray, tmp_path) -> None:
    marker = str(tmp_path / "started")
    cleanup = tmp_path / "cleanup"

    @ray.remote
    def with_cleanup(path, cleanup_path):
        open(path, "w").close()
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            with open(cleanup_path, "w") as f:
                f.write("interrupted")
            raise
        finally:
            with open(cleanup_path + ".finally", "w") as f:
                f.write("ran")

    ref = with_cleanup.remote(marker, str(cleanup))
    _wait_file(marker)
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    wait_for_condition(lambda: cleanup.exists(), timeout=10)
    assert cleanup.read_text() == "interrupted"
    assert (tmp_path / "cleanup.finally").read_text() == "ran"


@pytest.mark.parametrize("force", [False, True])
def test_cancelling_a_finished_task_is_a_no_op(ray, force) -> None:
    @ray.remote
    def value():
        return 42

    ref = value.remote()
    assert ray.get(ref, timeout=T) == 42
    ray.cancel(ref, force=force)
    ray.cancel(ref, force=force)
    assert ray.get(ref, timeout=T) == 42
    # The finished result can still feed other tasks.
    assert ray.get(get_first.remote([ref]), timeout=T) == 42


def test_cancelling_twice_is_harmless(ray, tmp_path) -> None:
    marker = str(tmp_path / "twice")
    ref = touch_then_sleep.remote(marker)
    _wait_file(marker)
    ray.cancel(ref)
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)


@pytest.mark.parametrize("force", [False, True])
def test_cancel_while_arguments_are_deserialized(ray, tmp_path, force) -> None:
    loading = str(tmp_path / "loading")
    body = tmp_path / "body"

    def make_slow_arg():
        class SlowToLoad:
            def __reduce__(self):
                def rebuild():
                    open(loading, "w").close()
                    time.sleep(3)
                    return SlowToLoad()

                return rebuild, ()

        return SlowToLoad()

    @ray.remote
    def never(arg, path):
        open(path, "w").close()
        return "ran"

    ref = never.remote(make_slow_arg(), str(body))
    _wait_file(loading)  # the worker is deserializing the argument now
    ray.cancel(ref, force=force)
    with pytest.raises(cancelled_errors(force)):
        ray.get(ref, timeout=T)
    assert not body.exists(), "the task body ran although it was cancelled before it started"


@pytest.mark.parametrize("force", [False, True])
def test_cancelling_right_after_submit(ray, force) -> None:
    """Fast tasks cancelled at once either finish or fail as cancelled, nothing else."""

    @ray.remote
    def echo(x):
        return x

    refs = []
    for i in range(30):
        ref = echo.remote(i)
        ray.cancel(ref, force=force)
        refs.append((i, ref))

    signal = SignalActor.remote()
    waiting = signal.wait.remote()
    rng = random.Random(7)
    for i in range(30, 300):
        ref = echo.remote(waiting)
        if rng.random() > 0.9:
            ray.cancel(ref, force=force)
        refs.append((i, ref))
    ray.get(signal.send.remote(), timeout=T)
    finished = 0
    for i, ref in refs:
        try:
            value = ray.get(ref, timeout=T)
        except cancelled_errors(force):
            continue
        finished += 1
        assert value == (i if i < 30 else None)
    assert finished >= 200


def test_cancelling_many_looping_tasks(ray) -> None:
    @ray.remote
    def loop(forever):
        while forever:
            time.sleep(0.1)
        return "done"

    rng = random.Random(3)
    first = loop.remote(True)
    flags = [rng.random() > 0.5 for _ in range(40)]
    refs = [loop.remote(flag) for flag in flags]
    cancelled = set()
    for i, ref in enumerate(refs):
        if rng.random() > 0.5:
            ray.cancel(ref, force=True)
            cancelled.add(i)
    ray.cancel(first, force=True)
    with pytest.raises(cancelled_errors(True)):
        ray.get(first, timeout=T)
    for i, flag in enumerate(flags):
        if flag and i not in cancelled:
            ray.cancel(refs[i], force=True)
            cancelled.add(i)
    for i, ref in enumerate(refs):
        if i in cancelled:
            with pytest.raises(cancelled_errors(True)):
                ray.get(ref, timeout=T)
        else:
            assert ray.get(ref, timeout=T) == "done"


def test_cancel_rejects_what_is_not_an_object_ref(ray) -> None:
    @ray.remote
    class Thing:
        def ping(self):
            return 1

    thing = Thing.remote()
    with pytest.raises(TypeError):
        ray.cancel(thing)
    with pytest.raises(TypeError):
        ray.cancel("not a ref")


# --- Recursive cancellation --------------------------------------------------------------


def test_recursive_cancel_frees_the_children_resources(ray, tmp_path) -> None:
    child_file = str(tmp_path / "child")

    @ray.remote(num_cpus=1)
    def parent(path):
        child = [tick_forever.options(num_cpus=1).remote(path)]
        while True:
            time.sleep(0.1)
        return child

    @ray.remote(num_cpus=2)
    def needs_everything():
        return 300

    outer = parent.remote(child_file)
    big = needs_everything.remote()
    with pytest.raises(GetTimeoutError):
        ray.get(big, timeout=1)
    _wait_file(child_file)
    ray.cancel(outer)  # recursive=True is the default
    with pytest.raises(TaskCancelledError):
        ray.get(outer, timeout=T)
    assert ray.get(big, timeout=T) == 300
    assert not _grows(child_file), "the child kept running after a recursive cancel"


@pytest.mark.parametrize("force", [False, True])
def test_recursive_cancel_reaches_grandchildren(ray, tmp_path, force) -> None:
    leaf = str(tmp_path / "leaf")

    @ray.remote(num_cpus=0)
    def middle(path):
        return aioray.get(tick_forever.options(num_cpus=0).remote(path), timeout=120)

    @ray.remote(num_cpus=0)
    def top(path):
        return aioray.get(middle.remote(path), timeout=120)

    ref = top.remote(leaf)
    _wait_file(leaf)
    ray.cancel(ref, force=force, recursive=True)
    with pytest.raises(cancelled_errors(force)):
        ray.get(ref, timeout=T)
    wait_for_condition(lambda: not _grows(leaf, 0.3), timeout=15)


def test_non_recursive_cancel_leaves_children_running(ray, tmp_path) -> None:
    child_file = str(tmp_path / "child")

    @ray.remote(num_cpus=0)
    def parent(path):
        child = tick_forever.options(num_cpus=0).remote(path, 4)
        time.sleep(60)
        return child

    ref = parent.remote(child_file)
    _wait_file(child_file)
    ray.cancel(ref, recursive=False)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    # Ray: without recursion the child is not cancelled (it dies with its owner only when the
    # owner's worker exits, which an interrupted task's worker does not).
    assert _grows(child_file, 1.0), "recursive=False must not cancel the child"


def test_recursive_cancel_of_an_async_actor_task_cancels_its_children(ray, tmp_path) -> None:
    child_file = str(tmp_path / "actor_child")

    @ray.remote(num_cpus=0)
    class Spawner:
        async def spawn_and_wait(self, path):
            return await tick_forever.options(num_cpus=0).remote(path)

    spawner = Spawner.remote()
    ref = spawner.spawn_and_wait.remote(child_file)
    _wait_file(child_file)
    ray.cancel(ref, recursive=True)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    wait_for_condition(lambda: not _grows(child_file, 0.3), timeout=15)


def test_recursive_cancel_of_a_sync_actor_task_cancels_its_children(ray, tmp_path) -> None:
    child_file = str(tmp_path / "sync_actor_child")

    @ray.remote(num_cpus=0)
    class Spawner:
        def spawn(self, path):
            self.child = tick_forever.options(num_cpus=0).remote(path)
            deadline = time.time() + 20
            while time.time() < deadline:
                time.sleep(0.05)
            return "done"

    spawner = Spawner.remote()
    ref = spawner.spawn.remote(child_file)
    _wait_file(child_file)
    ray.cancel(ref, recursive=True)
    wait_for_condition(lambda: not _grows(child_file, 0.3), timeout=15)
    ray.kill(spawner)
