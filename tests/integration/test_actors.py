"""Actors on a real cluster: state, ordering, async and threaded actors, names, lifetimes, kills, restarts."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import aioray
from aioray.util import ActorPool

from .conftest import eventually


@aioray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def inc(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def pid(self):
        return os.getpid()

    def my_id(self):
        return aioray.get_runtime_context().get_actor_id()

    @aioray.method(num_returns=2)
    def pair(self):
        return self.n, -self.n


@aioray.remote
def use_counter(counter, k):
    return aioray.get(counter.inc.remote(k))


def test_state_order_and_handles(ray) -> None:
    c = Counter.remote(10)
    assert ray.get([c.inc.remote() for _ in range(50)]) == list(range(11, 61))
    assert ray.get(c.get.remote()) == 60
    a, b = c.pair.remote()
    assert ray.get([a, b]) == [60, -60]
    # Handles are picklable: tasks call the same actor.
    assert sorted(ray.get([use_counter.remote(c, 1) for _ in range(5)])) == list(range(61, 66))
    assert ray.get(c.my_id.remote()) == c._actor_id.hex()  # as in Ray: `handle._actor_id.hex()`
    with pytest.raises(AttributeError, match="no method 'nope'"):
        c.nope.remote()
    with pytest.raises(TypeError, match=r"Counter\.inc\.remote"):
        c.inc.remote(1, 2, 3)


def test_calls_wait_for_their_arguments_in_order(ray) -> None:
    @ray.remote
    def slow_value(x):
        time.sleep(0.3)
        return x

    @ray.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)
            return list(self.items)

    log = Log.remote()
    first = log.add.remote(slow_value.remote("slow"))  # waits for its argument
    second = log.add.remote("fast")
    assert ray.get(second) == ["slow", "fast"]
    assert ray.get(first) == ["slow"]


def test_errors_and_constructor_failure(ray) -> None:
    @ray.remote
    class Fragile:
        def __init__(self, fail):
            if fail:
                raise KeyError("bad config")

        def boom(self):
            raise ZeroDivisionError("nope")

        def ok(self):
            return "ok"

    f = Fragile.remote(False)
    with pytest.raises(ZeroDivisionError):
        ray.get(f.boom.remote())
    assert ray.get(f.ok.remote()) == "ok", "an exception in a method does not kill the actor"
    broken = Fragile.remote(True)
    with pytest.raises(aioray.ActorDiedError, match="bad config") as info:
        ray.get(broken.ok.remote())
    assert isinstance(info.value.cause, KeyError)
    with pytest.raises(aioray.RayActorError):
        ray.get(broken.ok.remote())


def test_async_actor_interleaves(ray) -> None:
    @ray.remote
    class Sleeper:
        def __init__(self):
            self.running = 0
            self.peak = 0

        async def nap(self, t):
            self.running += 1
            self.peak = max(self.peak, self.running)
            await asyncio.sleep(t)
            self.running -= 1
            return t

        async def peak_seen(self):
            return self.peak

        async def double_via_task(self, x):
            return await use_counter.remote(self.counter, x)

        async def set_counter(self, c):
            self.counter = c

    s = Sleeper.remote()
    assert ray.get([s.nap.remote(0.2) for _ in range(10)]) == [0.2] * 10
    assert ray.get(s.peak_seen.remote()) == 10, "coroutines interleave at await"
    c = Counter.remote()
    ray.get(s.set_counter.remote(c))
    assert ray.get(s.double_via_task.remote(5)) == 5, "await on a task's ref inside an async actor"

    one_at_a_time = Sleeper.options(max_concurrency=1).remote()
    ray.get([one_at_a_time.nap.remote(0.05) for _ in range(5)])
    assert ray.get(one_at_a_time.peak_seen.remote()) == 1


def test_threaded_actor(ray) -> None:
    @ray.remote(max_concurrency=4)
    class Threads:
        def __init__(self):
            self.lock = threading.Lock()
            self.running = 0
            self.peak = 0

        def work(self):
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            time.sleep(0.2)
            with self.lock:
                self.running -= 1
            return threading.current_thread().name

        def peak_seen(self):
            return self.peak

    t = Threads.remote()
    names = ray.get([t.work.remote() for _ in range(4)])
    assert len(set(names)) > 1
    assert ray.get(t.peak_seen.remote()) > 1


def test_named_actors_and_get_if_exists(ray) -> None:
    c = Counter.options(name="shared-counter").remote(5)
    assert ray.get(ray.get_actor("shared-counter").inc.remote()) == 6
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="shared-counter").remote()
    again = Counter.options(name="shared-counter", get_if_exists=True).remote()
    assert ray.get(again.get.remote()) == 6
    with pytest.raises(ValueError, match="no-such-actor"):
        ray.get_actor("no-such-actor")
    ray.kill(c)
    eventually(lambda: _absent(ray, "shared-counter"), 10, "the name being released")


def _absent(ray, name) -> bool:
    try:
        ray.get_actor(name)
    except ValueError:
        return True
    return False


def test_kill_and_restarts(ray) -> None:
    c = Counter.remote()
    ray.get(c.inc.remote())
    ray.kill(c)
    with pytest.raises(aioray.ActorDiedError):
        ray.get(c.get.remote(), timeout=30)

    phoenix = Counter.options(max_restarts=1).remote(100)
    pid = ray.get(phoenix.pid.remote())
    ray.get(phoenix.inc.remote())
    os.kill(pid, 9)
    # The constructor runs again in a new process: the state starts over.
    eventually(lambda: _restarted(ray, phoenix, pid), 30, "the actor restarting")
    assert ray.get(phoenix.get.remote()) == 100
    os.kill(ray.get(phoenix.pid.remote()), 9)
    with pytest.raises(aioray.RayActorError):
        for _ in range(100):
            ray.get(phoenix.get.remote(), timeout=30)
            time.sleep(0.05)


def _restarted(ray, actor, old_pid) -> bool:
    try:
        return ray.get(actor.pid.remote(), timeout=30) != old_pid
    except aioray.RayActorError:
        return False


def test_calls_in_flight_are_retried_with_max_task_retries(ray, tmp_path) -> None:
    @ray.remote(max_restarts=2, max_task_retries=2)
    class Crashy:
        def crash_once(self, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)
            return "survived"

    c = Crashy.remote()
    assert ray.get(c.crash_once.remote(str(tmp_path / "m")), timeout=60) == "survived"

    @ray.remote(max_restarts=-1, max_task_retries=-1)  # -1: without limit, as in Ray
    class Crashier:
        def crash_twice(self, path):
            runs = len(open(path).read()) if os.path.exists(path) else 0
            with open(path, "a") as f:
                f.write("x")
            if runs < 2:
                os._exit(1)
            return "survived"

    c2 = Crashier.remote()
    assert ray.get(c2.crash_twice.remote(str(tmp_path / "n")), timeout=60) == "survived"
    with pytest.raises(ValueError, match="max_task_retries"):
        ray.remote(max_task_retries=-2)(type("Plain", (), {}))

    @ray.remote(max_restarts=1)
    class NoRetry:
        def crash(self):
            os._exit(1)

    n = NoRetry.remote()
    with pytest.raises(aioray.RayActorError):
        ray.get(n.crash.remote(), timeout=60)


def test_actor_pool(ray) -> None:
    actors = [Counter.remote() for _ in range(3)]
    pool = ActorPool(actors)
    results = list(pool.map(lambda a, v: a.inc.remote(v), [1, 2, 3, 4]))
    assert results[:3] == [1, 2, 3] and len(results) == 4
    assert sorted(pool.map_unordered(lambda a, v: a.get.remote(), range(3))) == sorted(
        ray.get([a.get.remote() for a in actors])
    )
    pool.submit(lambda a, v: a.inc.remote(v), 0)
    assert pool.has_next()
    pool.get_next()
    assert pool.has_free()
    idle = pool.pop_idle()
    assert idle is not None
    pool.push(idle)
    with pytest.raises(ValueError):
        pool.push(idle)


def test_async_actor_coroutines_meet_at_a_barrier(ray) -> None:
    @ray.remote
    class Barrier:
        def __init__(self, parties):
            self.parties = parties
            self.arrived = 0
            self.event = None

        async def arrive(self):
            if self.event is None:
                self.event = asyncio.Event()
            self.arrived += 1
            if self.arrived == self.parties:
                self.event.set()
            # Only returns once every call has arrived: they must all run at once.
            await asyncio.wait_for(self.event.wait(), 20)
            return self.arrived

    b = Barrier.remote(5)
    assert ray.get([b.arrive.remote() for _ in range(5)], timeout=30) == [5] * 5


def test_ordering_under_pipelining(ray) -> None:
    @ray.remote
    class Recorder:
        def __init__(self):
            self.seen = []

        def add(self, i):
            self.seen.append(i)

        def seen_list(self):
            return self.seen

    r = Recorder.remote()
    for i in range(2000):
        r.add.remote(i)
    assert ray.get(r.seen_list.remote(), timeout=60) == list(range(2000))


def test_handles_pass_through_actors(ray) -> None:
    @ray.remote
    class Forwarder:
        def __init__(self, target):
            self.target = target

        def bump(self, k):
            return ray.get(self.target.inc.remote(k))

        def bump_other(self, other, k):
            return ray.get(other.inc.remote(k))

    c = Counter.remote()
    f = Forwarder.remote(c)
    assert ray.get(f.bump.remote(2)) == 2
    assert ray.get(f.bump_other.remote(c, 3)) == 5
    assert ray.get(c.get.remote()) == 5


def test_actor_exits_when_its_last_handle_goes(ray) -> None:
    import gc

    c = Counter.remote()
    pid = ray.get(c.pid.remote())
    del c
    gc.collect()
    eventually(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 15, "the actor's process exiting")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
