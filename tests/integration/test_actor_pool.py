"""aioray.util.ActorPool on a real cluster: ordering, eager map, timeouts, several returns, idle and
pushed actors, failing and dead actors (the behaviours of ray.util.ActorPool)."""

from __future__ import annotations

import asyncio
import time

import pytest

import aioray
from aioray import util
from aioray.util import ActorPool


@aioray.remote
class Worker:
    def add_one(self, x):
        return x + 1

    def double(self, x):
        return 2 * x

    def double_after(self, x, delay):
        time.sleep(delay)
        return 2 * x

    def refuse(self, x):
        raise ValueError(f"will not take {x}")

    @aioray.method(num_returns=2)
    def split(self, x):
        return x, -x


@aioray.remote
class AsyncWorker:
    async def echo_after(self, x, delay):
        await asyncio.sleep(delay)
        return x, time.monotonic()


def test_util_package_exports() -> None:
    assert util.ActorPool is ActorPool
    assert util.queue.Queue is not None


def test_get_next_follows_submission_order(ray) -> None:
    pool = ActorPool([Worker.remote() for _ in range(3)])
    for i in range(4):
        pool.submit(lambda a, v: a.add_one.remote(v), i)
        assert pool.get_next() == i + 1
    # The first call is the slowest, and still comes out first.
    for i, delay in enumerate([0.6, 0.3, 0.0]):
        pool.submit(lambda a, v: a.double_after.remote(v[0], v[1]), (i, delay))
    assert [pool.get_next() for _ in range(3)] == [0, 2, 4]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()


def test_get_next_unordered_takes_whatever_finishes_first(ray) -> None:
    pool = ActorPool([Worker.remote() for _ in range(3)])
    for i, delay in enumerate([1.0, 0.5, 0.0]):
        pool.submit(lambda a, v: a.double_after.remote(v[0], v[1]), (i, delay))
    got = []
    while pool.has_next():
        got.append(pool.get_next_unordered())
    assert got[0] == 4  # the call without delay
    assert sorted(got) == [0, 2, 4]
    # Once later results were taken out of order, get_next() cannot keep the order any more.
    pool.submit(lambda a, v: a.double_after.remote(v, 1.0), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert pool.get_next_unordered() == 4
    with pytest.raises(ValueError, match="get_next_unordered"):
        pool.get_next()
    assert pool.get_next_unordered() == 2


def test_map_and_map_unordered(ray) -> None:
    pool = ActorPool([Worker.remote() for _ in range(2)])
    # More values than actors: the rest wait in the pool for a free actor.
    assert list(pool.map(lambda a, v: a.double.remote(v), range(7))) == [2 * i for i in range(7)]
    got = list(pool.map_unordered(lambda a, v: a.add_one.remote(v), (i for i in range(5))))
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert pool.has_free() and not pool.has_next()


def test_map_submits_every_value_before_iteration(ray) -> None:
    pool = ActorPool([Worker.remote() for _ in range(2)])
    submitted = []
    real_submit = pool.submit

    def counting_submit(fn, value):
        submitted.append(value)
        real_submit(fn, value)

    pool.submit = counting_submit
    for mapper in (pool.map, pool.map_unordered):
        submitted.clear()
        results = mapper(lambda a, v: a.double.remote(v), range(5))
        assert submitted == [0, 1, 2, 3, 4], "all values are submitted before the first result is asked for"
        assert pool.has_next() and not pool.has_free()
        assert sorted(results) == [0, 2, 4, 6, 8]


def test_map_drops_results_submitted_before_it(ray) -> None:
    # Ray gh-23107: an earlier submit() that was never fetched must neither show up in map's
    # results nor hold map back.
    slow = 30
    for method in ("map", "map_unordered"):
        pool = ActorPool([AsyncWorker.remote() for _ in range(2)])
        pool.submit(lambda a, v: a.echo_after.remote(v, slow), "early")
        start = time.monotonic()
        results = list(getattr(pool, method)(lambda a, v: a.echo_after.remote(v, 0), [1, 2, 3, 4, 5]))
        assert sorted(v for v, _ in results) == [1, 2, 3, 4, 5], method
        assert all(t - start < slow / 2 for _, t in results), method
        assert not pool.has_next()


def test_get_next_timeouts(ray) -> None:
    pool = ActorPool([Worker.remote()])
    pool.submit(lambda a, v: a.double_after.remote(v, 3), 1)
    for get in (pool.get_next, pool.get_next_unordered):
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            get(timeout=0.1)
        assert time.monotonic() - start < 2
        assert pool.has_next(), "a call that timed out stays in the pool"
    # Unordered and ignored: nothing finished, so nothing is dropped and there is no result.
    assert pool.get_next_unordered(timeout=0.1, ignore_if_timedout=True) is None
    assert pool.has_next()
    # Ordered and ignored: the call is dropped (it still runs) and its actor takes new work.
    with pytest.raises(TimeoutError, match="ignored"):
        pool.get_next(timeout=0.1, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()
    pool.submit(lambda a, v: a.double.remote(v), 5)
    assert pool.get_next(timeout=30) == 10
    # A timeout long enough returns the result as usual.
    pool.submit(lambda a, v: a.double.remote(v), 6)
    assert pool.get_next(timeout=30, ignore_if_timedout=True) == 12


def test_methods_with_several_returns(ray) -> None:
    pool = ActorPool([Worker.remote() for _ in range(2)])
    for i in range(4):
        pool.submit(lambda a, v: a.split.remote(v), i)
    assert [pool.get_next(timeout=None) for _ in range(4)] == [[i, -i] for i in range(4)]
    for i in range(3):
        pool.submit(lambda a, v: a.split.remote(v), i)
    assert sorted(pool.get_next_unordered() for _ in range(3)) == [[0, 0], [1, -1], [2, -2]]
    pool.submit(lambda a, v: a.split.remote(v), 7)
    assert pool.get_next(timeout=30, ignore_if_timedout=True) == [7, -7]
    assert list(pool.map(lambda a, v: a.split.remote(v), [1, 2])) == [[1, -1], [2, -2]]


def test_pop_idle(ray) -> None:
    actor = Worker.remote()
    pool = ActorPool([actor])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.pop_idle() is None, "a busy actor cannot be taken"
    assert pool.has_free() is False
    assert pool.get_next() == 2
    assert pool.has_free()
    assert pool.pop_idle() == actor
    assert pool.has_free() is False and pool.pop_idle() is None
    # With no actor left, work waits in the pool until one is pushed.
    pool.submit(lambda a, v: a.double.remote(v), 3)
    assert not pool.has_next()
    pool.push(actor)
    assert pool.get_next() == 6


def test_push(ray) -> None:
    a1, a2, a3 = (Worker.remote() for _ in range(3))
    pool = ActorPool([a1])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.has_free() is False
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a1)  # busy in the pool
    pool.push(a2)
    assert pool.has_free()
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a2)  # idle in the pool
    pool.submit(lambda a, v: a.double.remote(v), 2)
    pool.submit(lambda a, v: a.double.remote(v), 3)  # no actor free: it waits
    assert pool.has_free() is False
    assert len(pool._pending_submits) == 1
    pool.push(a3)  # a pushed actor starts the waiting work at once
    assert len(pool._pending_submits) == 0
    assert pool.has_free() is False
    assert [pool.get_next() for _ in range(3)] == [2, 4, 6]
    assert pool.has_free()


def test_a_failing_call_keeps_its_actor(ray) -> None:
    actor = Worker.remote()
    pool = ActorPool([actor])
    pool.submit(lambda a, v: a.refuse.remote(v), 1)
    with pytest.raises(ValueError, match="will not take 1"):
        pool.get_next()
    assert pool.has_free(), "the actor is still alive and back in the pool"
    pool.submit(lambda a, v: a.refuse.remote(v), 2)
    with pytest.raises(ValueError, match="will not take 2"):
        pool.get_next_unordered()
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2])) == [2, 4]
    with pytest.raises(ValueError, match="will not take"):
        list(pool.map(lambda a, v: a.refuse.remote(v), [1, 2]))
    with pytest.raises(ValueError, match="will not take 2"):
        pool.get_next()  # the second call ran once the first result was fetched
    # fn itself failing (here: not returning a ref) leaves the actor free too.
    with pytest.raises(TypeError, match="must return the ObjectRef"):
        pool.submit(lambda a, v: v, 1)
    assert pool.has_free() and pool.pop_idle() == actor


def test_a_dead_actor_leaves_the_pool(ray) -> None:
    doomed = Worker.remote()
    pool = ActorPool([doomed])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.get_next() == 2
    ray.kill(doomed)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    with pytest.raises(aioray.ActorDiedError):
        pool.get_next(timeout=30)
    assert not pool.has_free() and pool.pop_idle() is None, "the dead actor is not handed out again"
    # Work submitted now waits for a live actor, which push() brings.
    pool.submit(lambda a, v: a.double.remote(v), 3)
    assert not pool.has_next()
    pool.push(Worker.remote())
    assert pool.get_next(timeout=30) == 6

    # In a pool of two, a map keeps going on the survivor once the dead one has failed its call.
    survivor, victim = Worker.remote(), Worker.remote()
    pool = ActorPool([survivor, victim])
    ray.kill(victim)
    with pytest.raises(aioray.ActorDiedError):
        list(pool.map(lambda a, v: a.double.remote(v), [1, 2]))
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3])) == [2, 4, 6]
    assert pool.pop_idle() == survivor and pool.pop_idle() is None
