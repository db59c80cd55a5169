"""Ray's concurrent-actor semantics (test_threaded_actor.py, test_asyncio.py): threaded actors with
`max_concurrency`, async actors interleaving at `await`, refs awaited inside actors, and exit."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import numpy as np
import pytest

import aioray
from aioray.exceptions import RayActorError, RayError


@aioray.remote
def small(i):
    return i


@aioray.remote
def sized(i):
    return np.zeros(8 * 1024 * i, dtype=np.uint8)


@aioray.remote
class Threaded:
    def __init__(self, parties=0):
        self.lock = threading.Lock()
        self.received = []
        self.running = 0
        self.peak = 0
        self.barrier = threading.Barrier(parties) if parties else None

    def add(self, seqno):
        with self.lock:
            self.received.append(seqno)

    def all(self):
        with self.lock:
            return list(self.received)

    def meet(self):
        self.barrier.wait(timeout=10)
        return threading.get_ident()

    def busy(self, seconds):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(seconds)
        with self.lock:
            self.running -= 1

    def peak_seen(self):
        return self.peak

    def get_small(self, i):
        self.add(i)
        return aioray.get(small.remote(i))

    def get_sized(self, i):
        return aioray.get(sized.remote(i))


def test_threaded_actor_receives_every_call(ray) -> None:
    a = Threaded.options(max_concurrency=10).remote()
    ray.get([a.add.remote(i) for i in range(50)], timeout=30)
    # Ray does not promise the order of calls on a threaded actor, only that all arrive.
    assert sorted(ray.get(a.all.remote(), timeout=30)) == list(range(50))


def test_threaded_actor_runs_calls_at_the_same_time(ray) -> None:
    a = Threaded.options(max_concurrency=5).remote(5)
    # Five calls meet at a barrier: this only finishes if all five run at once, on five threads.
    idents = ray.get([a.meet.remote() for _ in range(5)], timeout=30)
    assert len(set(idents)) == 5


def test_max_concurrency_bounds_the_threads(ray) -> None:
    a = Threaded.options(max_concurrency=2).remote()
    ray.get([a.busy.remote(0.2) for _ in range(6)], timeout=30)
    assert ray.get(a.peak_seen.remote(), timeout=30) == 2


def test_default_sync_actor_runs_one_call_at_a_time_in_order(ray) -> None:
    a = Threaded.remote()
    refs = [a.busy.remote(0.02) for _ in range(5)] + [a.add.remote(i) for i in range(20)]
    ray.get(refs, timeout=30)
    assert ray.get(a.peak_seen.remote(), timeout=30) == 1
    assert ray.get(a.all.remote(), timeout=30) == list(range(20))


def test_ray_api_is_thread_safe_inside_a_threaded_actor(ray) -> None:
    a = Threaded.options(max_concurrency=10).remote()
    got = ray.get([a.get_small.remote(i) for i in range(30)], timeout=30)
    assert sorted(got) == list(range(30))
    arrays = ray.get([a.get_sized.remote(i) for i in range(20)], timeout=30)
    for i, arr in enumerate(arrays):
        assert arr.shape == (8 * 1024 * i,) and not arr.any()


def test_max_concurrency_must_be_positive(ray) -> None:
    with pytest.raises(ValueError):
        Threaded.options(max_concurrency=0).remote()
    with pytest.raises(ValueError):
        Threaded.options(max_concurrency=-1).remote()


@aioray.remote
class Batcher:
    def __init__(self, size):
        self.size = size
        self.batch = []
        self.event = asyncio.Event()

    async def add(self, x):
        self.batch.append(x)
        if len(self.batch) >= self.size:
            self.event.set()
        else:
            await self.event.wait()
        return sorted(self.batch)


def test_async_actor_calls_wait_for_one_another(ray) -> None:
    b = Batcher.remote(3)
    refs = [b.add.remote(i) for i in (1, 2, 3)]
    assert ray.get(refs, timeout=30) == [[1, 2, 3]] * 3


def test_async_actor_concurrency_beyond_the_recursion_limit(ray) -> None:
    size = sys.getrecursionlimit() + 500
    b = Batcher.options(max_concurrency=size * 2).remote(size)
    result = ray.get([b.add.remote(i) for i in range(size)], timeout=30)
    assert result[0] == list(range(size)) and result[-1] == list(range(size))


def test_async_actor_with_max_concurrency_one_runs_calls_start_to_end(ray) -> None:
    @ray.remote
    class Recorder:
        def __init__(self):
            self.history = []

        async def work(self):
            self.history.append("start")
            await asyncio.sleep(0)
            self.history.append("end")

        def get(self):
            return self.history

    r = Recorder.options(max_concurrency=1).remote()
    ray.get([r.work.remote() for _ in range(10)], timeout=30)
    assert ray.get(r.get.remote(), timeout=30) == ["start", "end"] * 10


def test_async_actor_interleaves_at_asyncio_sleep(ray) -> None:
    @ray.remote
    class Sleepy:
        def __init__(self):
            self.log = []

        async def nap(self, name, seconds):
            self.log.append(("in", name))
            await asyncio.sleep(seconds)
            self.log.append(("out", name))
            return name

        def get(self):
            return self.log

    s = Sleepy.remote()
    start = time.monotonic()
    assert ray.get([s.nap.remote("slow", 1.0), s.nap.remote("fast", 0.1)], timeout=30) == ["slow", "fast"]
    # Both ran together: far less than the 1.1 s that one after the other would take.
    assert time.monotonic() - start < 1.05 + 0.5
    assert ray.get(s.get.remote(), timeout=30) == [
        ("in", "slow"),
        ("in", "fast"),
        ("out", "fast"),
        ("out", "slow"),
    ]


def test_sync_and_async_methods_of_an_async_actor_share_a_thread(ray) -> None:
    @ray.remote
    class Mixed:
        def sync_ident(self):
            return threading.get_ident()

        async def async_ident(self):
            return threading.get_ident()

    m = Mixed.remote()
    sync_id, async_id = ray.get([m.sync_ident.remote(), m.async_ident.remote()], timeout=30)
    assert sync_id == async_id


def test_async_actor_with_huge_max_concurrency_starts_and_answers(ray) -> None:
    @ray.remote
    class Mixed:
        def sync_ident(self):
            time.sleep(0.5)
            return threading.get_ident()

        async def async_ident(self):
            time.sleep(0.5)  # noqa: ASYNC251 - Ray's test blocks the loop on purpose
            return threading.get_ident()

    m = Mixed.options(max_concurrency=100000).remote()
    sync_id, async_id = ray.get([m.sync_ident.remote(), m.async_ident.remote()], timeout=30)
    assert sync_id == async_id


def test_async_actor_awaits_refs(ray) -> None:
    @ray.remote
    class Awaiter:
        async def from_task(self):
            return await small.remote(1)

        async def from_list(self, refs):
            return await refs[0]

        async def gather(self, n):
            return list(await asyncio.gather(*[small.remote(i) for i in range(n)]))

        async def wrapped_future(self):
            return await asyncio.wrap_future(small.remote(5).future())

    a = Awaiter.remote()
    assert ray.get(a.from_task.remote(), timeout=30) == 1
    assert ray.get(a.from_list.remote([ray.put(2)]), timeout=30) == 2
    assert ray.get(a.gather.remote(5), timeout=30) == [0, 1, 2, 3, 4]
    assert ray.get(a.wrapped_future.remote(), timeout=30) == 5


def test_async_actors_call_each_other_back(ray) -> None:
    @ray.remote
    class Ping:
        def __init__(self):
            self.value = "ping-state"

        async def start(self, me, other):
            # The other actor calls back into this one while this call is still awaiting.
            return await other.bounce.remote(me)

        async def state(self):
            return self.value

    @ray.remote
    class Pong:
        async def bounce(self, origin):
            return "pong:" + await origin.state.remote()

    ping, pong = Ping.remote(), Pong.remote()
    assert ray.get(ping.start.remote(ping, pong), timeout=30) == "pong:ping-state"


def test_async_actor_sees_errors_of_awaited_refs(ray) -> None:
    @ray.remote
    def boom():
        raise KeyError("inner")

    @ray.remote
    class Catcher:
        async def catch(self):
            try:
                await boom.remote()
            except KeyError as e:
                return type(e).__name__, isinstance(e, aioray.RayTaskError), "inner" in str(e)

    name, is_task_error, mentions = ray.get(Catcher.remote().catch.remote(), timeout=30)
    assert is_task_error and mentions and "KeyError" in name


def test_exit_actor_in_an_async_actor_ends_it_at_once(ray) -> None:
    @ray.remote
    class Exiting:
        async def exit(self):
            from aioray.actor import exit_actor

            exit_actor()

        async def ping(self):
            return "pong"

        async def loop_forever(self):
            await asyncio.Event().wait()

    a = Exiting.options(max_task_retries=0).remote()
    assert ray.get(a.ping.remote(), timeout=30) == "pong"
    forever = a.loop_forever.remote()
    with pytest.raises(RayError):
        ray.get(a.exit.remote(), timeout=30)
    with pytest.raises(RayActorError):
        ray.get(a.ping.remote(), timeout=30)
    with pytest.raises(RayActorError):
        ray.get(forever, timeout=30)


def test_ray_actor_submodule_is_reachable_without_importing_it(ray) -> None:
    # Ray programs call `ray.actor.exit_actor()` after only `import ray`; `ray.actor`, `ray.util`
    # and `ray.exceptions` are attributes of the package in every worker.
    @ray.remote
    def reachable():
        import aioray as r

        return [hasattr(r, name) for name in ("actor", "util", "exceptions")]

    assert ray.get(reachable.remote(), timeout=30) == [True, True, True]


def test_async_remote_function_is_refused(ray) -> None:
    with pytest.raises(ValueError):

        @ray.remote
        async def f():
            pass
