"""aioray.util.queue.Queue on a real cluster: the driver, tasks and actors sharing one queue, its
blocking, timeout, non-blocking, async and batch forms, and its shutdown (as ray.util.queue)."""

from __future__ import annotations

import asyncio
import pickle
import queue as stdlib_queue
import time

import pytest

import aioray
from aioray.util.queue import Empty, Full, Queue

from .conftest import eventually


@aioray.remote
def produce(q, items):
    for item in items:
        q.put(item)
    q.put(None)
    return len(items)


@aioray.remote
def take_one(q):
    return q.get(block=True)


@aioray.remote
def put_one(q, item):
    q.put(item, block=True)
    return "put"


@aioray.remote
class Consumer:
    def drain(self, q):
        got = []
        while (item := q.get(timeout=30)) is not None:
            got.append(item)
        return got


@aioray.remote
class AsyncConsumer:
    async def drain(self, q):
        got = []
        while (item := await q.get_async(timeout=30)) is not None:
            got.append(item)
        return got


def test_put_get_sizes(ray) -> None:
    q = Queue()
    assert q.empty() and not q.full() and q.qsize() == 0
    for i in range(10):
        q.put(i)
    assert q.qsize() == q.size() == len(q) == 10
    assert not q.empty() and not q.full(), "an unbounded queue is never full"
    assert [q.get() for _ in range(10)] == list(range(10))
    assert q.empty()
    q.put({"any": ["picklable", "value"]})
    assert q.get_nowait() == {"any": ["picklable", "value"]}


def test_get_on_an_empty_queue(ray) -> None:
    assert issubclass(Empty, stdlib_queue.Empty)
    q = Queue()
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=False)
    start = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    assert 0.1 <= time.monotonic() - start < 2
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    q.put(1)
    assert q.get(timeout=0.2) == 1
    q.put(2)
    assert q.get(timeout=0) == 2, "an item already there is returned even with no time to wait"


def test_put_on_a_full_queue(ray) -> None:
    assert issubclass(Full, stdlib_queue.Full)
    q = Queue(maxsize=1)
    assert q.maxsize == 1
    q.put(0, block=False)
    assert q.full()
    with pytest.raises(Full):
        q.put_nowait(1)
    with pytest.raises(Full):
        q.put(1, block=False)
    start = time.monotonic()
    with pytest.raises(Full):
        q.put(1, timeout=0.1)
    assert 0.1 <= time.monotonic() - start < 2
    with pytest.raises(ValueError, match="non-negative"):
        q.put(1, timeout=-1)
    assert q.get() == 0
    q.put(1, timeout=0.2)
    assert q.qsize() == 1 and q.get() == 1


def test_blocked_calls_wait_for_the_other_side(ray) -> None:
    q = Queue()
    waiting_get = take_one.remote(q)
    with pytest.raises(aioray.GetTimeoutError):
        ray.get(waiting_get, timeout=0.3)  # still waiting, not cancelled
    q.put("hello")
    assert ray.get(waiting_get, timeout=30) == "hello"

    q = Queue(maxsize=1)
    q.put(1)
    waiting_put = put_one.remote(q, 2)
    with pytest.raises(Full):
        q.put_nowait(3)
    with pytest.raises(aioray.GetTimeoutError):
        ray.get(waiting_put, timeout=0.3)
    assert q.get() == 1
    assert ray.get(waiting_put, timeout=30) == "put"
    assert q.get(timeout=5) == 2


def test_producer_task_and_consumer_actors(ray) -> None:
    q = Queue(maxsize=5)  # smaller than what goes through it: the producer waits for consumers
    pickle.loads(pickle.dumps(q))  # a Queue travels by pickling its actor handle
    consumer = Consumer.remote()
    drained = consumer.drain.remote(q)
    assert ray.get(produce.remote(q, list(range(20))), timeout=60) == 20
    assert ray.get(drained, timeout=60) == list(range(20))

    async_consumer = AsyncConsumer.remote()
    drained = async_consumer.drain.remote(q)
    q.put_nowait_batch(["a", "b", "c", None])
    assert ray.get(drained, timeout=60) == ["a", "b", "c"]
    assert q.empty()


async def test_async_api_from_a_coroutine(ray) -> None:
    q = Queue(maxsize=1)
    await q.put_async(0)
    assert await q.get_async(block=False) == 0
    await q.put_async(1, timeout=0.2)
    assert await q.get_async(timeout=0.2) == 1
    with pytest.raises(Empty):
        await q.get_async(block=False)
    with pytest.raises(Empty):
        await q.get_async(timeout=0.1)
    with pytest.raises(ValueError):
        await q.get_async(timeout=-1)
    await q.put_async(2, block=False)
    with pytest.raises(Full):
        await q.put_async(3, block=False)
    with pytest.raises(Full):
        await q.put_async(3, timeout=0.1)
    with pytest.raises(ValueError):
        await q.put_async(3, timeout=-1)
    assert await q.get_async() == 2

    # A waiting get_async does not block the event loop: the put that serves it runs meanwhile.
    async def put_later() -> None:
        await asyncio.sleep(0.2)
        await q.put_async("late")

    got, _ = await asyncio.gather(q.get_async(timeout=30), put_later())
    assert got == "late"


def test_batches(ray) -> None:
    q = Queue(maxsize=1)
    with pytest.raises(Full):
        q.put_nowait_batch([1, 2])
    assert q.empty(), "a batch that does not fit puts nothing"
    with pytest.raises(Empty):
        q.get_nowait_batch(1)
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError):
        q.get_nowait_batch("1")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)

    big = Queue(maxsize=100)
    big.put_nowait_batch(i for i in range(100))
    assert big.full()
    with pytest.raises(Empty):
        big.get_nowait_batch(101)
    assert big.qsize() == 100, "a batch get that cannot be served takes nothing"
    assert big.get_nowait_batch(0) == []
    assert big.get_nowait_batch(60) == list(range(60))
    assert big.get_nowait_batch(40) == list(range(60, 100))


def test_shutdown(ray) -> None:
    q = Queue()
    q.put(1)
    actor = q.actor
    start = time.monotonic()
    q.shutdown()
    assert time.monotonic() - start < 5
    assert q.actor is None
    with pytest.raises(aioray.RayActorError):
        ray.get(actor.qsize.remote(), timeout=30)
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(2)
    q.shutdown()  # twice is fine

    q = Queue()
    actor = q.actor
    q.shutdown(force=True)
    with pytest.raises(aioray.RayActorError):
        ray.get(actor.qsize.remote(), timeout=30)


def test_actor_options(ray) -> None:
    def cpus() -> float:
        return ray.available_resources().get("CPU", 0.0)

    before = cpus()
    q = Queue()
    q.put(1)  # the actor is up
    assert cpus() == before, "by default the queue's actor takes no CPU"
    q.shutdown()

    q = Queue(actor_options={"num_cpus": 1})
    q.put(1)
    eventually(lambda: cpus() == before - 1, what="the queue's actor holding 1 CPU")
    q.shutdown()
    eventually(lambda: cpus() == before, what="the CPU being released")
