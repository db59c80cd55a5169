"""Ray's cancel semantics for actor tasks, retries and worker reuse (continued from
test_ray_cancel_semantics.py)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import aioray
from aioray.exceptions import TaskCancelledError
from aioray.testing import SignalActor, wait_for_condition

from .test_ray_cancel_semantics import T, _wait_file

# --- Actor tasks -----------------------------------------------------------------------------


def test_cancel_queued_sync_actor_task(ray, tmp_path) -> None:
    @ray.remote(num_cpus=0)
    class Worker:
        def __init__(self):
            self.ran = []

        def slow(self, path):
            open(path, "w").close()
            time.sleep(1.5)
            self.ran.append("slow")
            return "slow"

        def record(self, name):
            self.ran.append(name)
            return name

        def history(self):
            return list(self.ran)

    worker = Worker.remote()
    marker = str(tmp_path / "slow")
    running = worker.slow.remote(marker)
    _wait_file(marker)
    queued = worker.record.remote("queued")
    ray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ray.get(queued, timeout=T)
    assert ray.get(running, timeout=T) == "slow"
    assert ray.get(worker.record.remote("after"), timeout=T) == "after"
    assert ray.get(worker.history.remote(), timeout=T) == ["slow", "after"]


def test_running_sync_actor_task_is_not_interrupted(ray, tmp_path) -> None:
    """Ray never interrupts a running sync actor task; the get raises TaskCancelledError."""

    @ray.remote(num_cpus=0)
    class Worker:
        def __init__(self):
            self.finished = False

        def work(self, path):
            open(path, "w").close()
            time.sleep(1.5)  # a KeyboardInterrupt here would leave finished False
            self.finished = True
            return "completed"

        def did_finish(self):
            return self.finished

    worker = Worker.remote()
    marker = str(tmp_path / "work")
    ref = worker.work.remote(marker)
    _wait_file(marker)
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    assert ray.get(worker.did_finish.remote(), timeout=T) is True


def test_is_canceled_in_a_sync_actor_task(ray, tmp_path) -> None:
    @ray.remote(num_cpus=0)
    class Worker:
        def __init__(self):
            self.saw_cancel = False

        def poll(self, path):
            open(path, "w").close()
            ctx = aioray.get_runtime_context()
            assert ctx.is_canceled() is False
            for _ in range(300):
                if ctx.is_canceled():
                    self.saw_cancel = True
                    return "canceled"
                time.sleep(0.05)
            return "completed"

        def saw(self):
            return self.saw_cancel

    worker = Worker.remote()
    marker = str(tmp_path / "poll")
    ref = worker.poll.remote(marker)
    _wait_file(marker)
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    assert ray.get(worker.saw.remote(), timeout=T) is True


def test_is_canceled_in_a_threaded_actor_task(ray, tmp_path) -> None:
    @ray.remote(num_cpus=0, max_concurrency=3)
    class Pool:
        def __init__(self):
            self.outcomes = {}
            self.lock = threading.Lock()

        def poll(self, name, path):
            open(path, "w").close()
            ctx = aioray.get_runtime_context()
            for _ in range(300):
                if ctx.is_canceled():
                    with self.lock:
                        self.outcomes[name] = "canceled"
                    return "canceled"
                time.sleep(0.05)
            with self.lock:
                self.outcomes[name] = "completed"
            return "completed"

        def quick(self):
            return "quick"

        def outcomes_now(self):
            with self.lock:
                return dict(self.outcomes)

    pool = Pool.remote()
    a = pool.poll.remote("a", str(tmp_path / "a"))
    b = pool.poll.remote("b", str(tmp_path / "b"))
    _wait_file(str(tmp_path / "a"))
    _wait_file(str(tmp_path / "b"))
    ray.cancel(a)
    with pytest.raises(TaskCancelledError):
        ray.get(a, timeout=T)
    # Only the cancelled call sees the flag; the other and new calls go on.
    assert ray.get(pool.quick.remote(), timeout=T) == "quick"
    wait_for_condition(lambda: ray.get(pool.outcomes_now.remote(), timeout=T).get("a") == "canceled")
    assert "b" not in ray.get(pool.outcomes_now.remote(), timeout=T)
    ray.cancel(b)
    with pytest.raises(TaskCancelledError):
        ray.get(b, timeout=T)


def test_is_canceled_outside_tasks_and_in_async_actors_raises(ray) -> None:
    with pytest.raises(RuntimeError):
        ray.get_runtime_context().is_canceled()

    @ray.remote(num_cpus=0)
    class AsyncOne:
        async def check(self):
            try:
                aioray.get_runtime_context().is_canceled()
            except RuntimeError:
                return "RuntimeError"
            return "no error"

    @ray.remote
    def in_task():
        return aioray.get_runtime_context().is_canceled()

    assert ray.get(AsyncOne.remote().check.remote(), timeout=T) == "RuntimeError"
    assert ray.get(in_task.remote(), timeout=T) is False


def test_cancel_async_actor_task_raises_cancelled_error_inside(ray, tmp_path) -> None:
    @ray.remote(num_cpus=0)
    class Sleeper:
        def __init__(self):
            self.seen = None

        async def nap(self, path):
            open(path, "w").close()  # noqa: ASYNC230 (a tiny marker file)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.seen = "CancelledError"
                raise

        async def what_was_seen(self):
            return self.seen

    sleeper = Sleeper.remote()
    marker = str(tmp_path / "nap")
    ref = sleeper.nap.remote(marker)
    _wait_file(marker)
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    assert ray.get(sleeper.what_was_seen.remote(), timeout=T) == "CancelledError"
    # The actor is still serving.
    assert ray.get(sleeper.what_was_seen.remote(), timeout=T) == "CancelledError"


def test_cancel_queued_async_actor_task(ray) -> None:
    @ray.remote(num_cpus=0, max_concurrency=1)
    class OneAtATime:
        def __init__(self):
            self.calls = []

        async def hold(self, refs):
            await refs[0]
            self.calls.append("hold")

        async def note(self, name):
            self.calls.append(name)

        async def calls_so_far(self):
            return list(self.calls)

    signal = SignalActor.remote()
    actor = OneAtATime.remote()
    holding = actor.hold.remote([signal.wait.remote()])
    time.sleep(0.3)
    queued = actor.note.remote("queued")
    ray.cancel(queued)
    with pytest.raises(TaskCancelledError):
        ray.get(queued, timeout=T)
    ray.get(signal.send.remote(), timeout=T)
    ray.get(holding, timeout=T)
    assert ray.get(actor.calls_so_far.remote(), timeout=T) == ["hold"]


def test_force_cancel_of_an_actor_task_is_refused(ray) -> None:
    @ray.remote(num_cpus=0)
    class Target:
        async def nap(self):
            await asyncio.sleep(60)

        def sync_nap(self):
            time.sleep(1)

    target = Target.remote()
    for ref in (target.nap.remote(), target.sync_nap.remote()):
        # Ray's core worker answers Status::Invalid -> ValueError with this text; programs match on
        # "not supported for actor tasks" to fall back to a plain cancel.
        with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
            ray.cancel(ref, force=True)
    ray.kill(target)


def test_cancel_of_an_actor_task_from_another_task(ray) -> None:
    @ray.remote(num_cpus=0)
    class Sleeper:
        async def nap(self):
            await asyncio.sleep(60)

    @ray.remote(num_cpus=0)
    def canceller(refs):
        aioray.cancel(refs[0])
        return "sent"

    sleeper = Sleeper.remote()
    ref = sleeper.nap.remote()
    time.sleep(0.5)
    assert ray.get(canceller.remote([ref]), timeout=T) == "sent"
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)


# --- Retries, multiple returns, worker reuse -------------------------------------------------


def test_interrupted_task_is_not_retried_even_with_retry_exceptions(ray, tmp_path) -> None:
    marker = tmp_path / "attempt"

    @ray.remote(max_retries=3, retry_exceptions=True)
    def retryable(path):
        with open(path, "a") as f:
            f.write("x")
        time.sleep(60)

    ref = retryable.remote(str(marker))
    _wait_file(str(marker))
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    time.sleep(1.0)
    assert marker.read_text() == "x", "a cancelled task must run only once"


def test_cancel_fails_every_return_of_a_multi_return_task(ray, tmp_path) -> None:
    marker = str(tmp_path / "pair")

    @ray.remote(num_returns=2)
    def pair(path):
        open(path, "w").close()
        time.sleep(60)
        return 1, 2

    first, second = pair.remote(marker)
    _wait_file(marker)
    ray.cancel(second)
    for ref in (first, second):
        with pytest.raises(TaskCancelledError):
            ray.get(ref, timeout=T)


def test_worker_that_was_interrupted_runs_the_next_task_undisturbed(ray, tmp_path) -> None:
    @ray.remote
    def pid_after(seconds):
        time.sleep(seconds)
        return os.getpid()

    marker = str(tmp_path / "victim")

    @ray.remote
    def victim(path):
        open(path, "w").close()
        time.sleep(60)

    ref = victim.remote(marker)
    _wait_file(marker)
    ray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ray.get(ref, timeout=T)
    # No KeyboardInterrupt is left pending for whatever runs next on the workers.
    pids = ray.get([pid_after.remote(0.5) for _ in range(4)], timeout=T)
    assert len(pids) == 4
