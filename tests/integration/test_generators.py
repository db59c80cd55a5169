"""Streaming generators (issue #14): items as they are produced, errors as items, cancel,
backpressure, actor methods, "dynamic", retries without duplicates."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

import aioray
from aioray.exceptions import TaskCancelledError
from aioray.testing import SignalActor

from .conftest import eventually

T = 30


@aioray.remote
def count_to(n: int, pause: float = 0.0) -> Any:
    for i in range(n):
        time.sleep(pause)
        yield i


def test_items_arrive_while_the_task_still_runs(ray: Any) -> None:
    signal = SignalActor.remote()

    @aioray.remote
    def gated() -> Any:
        yield "first"
        aioray.get(signal.wait.remote())
        yield "second"

    gen = gated.remote()
    assert isinstance(gen, aioray.ObjectRefGenerator)
    assert aioray.get(next(gen), timeout=T) == "first"  # the task is still blocked on the signal
    aioray.get(signal.send.remote(), timeout=T)
    assert aioray.get(next(gen), timeout=T) == "second"
    with pytest.raises(StopIteration):
        next(gen)


def test_items_in_order_small_and_large(ray: Any) -> None:
    assert [aioray.get(r, timeout=T) for r in count_to.remote(5)] == [0, 1, 2, 3, 4]

    @aioray.remote(num_returns="streaming")
    def blocks() -> Any:
        for i in range(3):
            yield bytes([i]) * (1 << 20)  # over the inline limit: through the store

    sizes = [(len(v), v[0]) for v in (aioray.get(r, timeout=T) for r in blocks.remote())]
    assert sizes == [(1 << 20, 0), (1 << 20, 1), (1 << 20, 2)]


def test_an_error_midway_is_the_next_item_then_the_end(ray: Any) -> None:
    @aioray.remote
    def breaks() -> Any:
        yield 1
        yield 2
        raise ValueError("broke at the third")

    gen = breaks.remote()
    assert aioray.get(next(gen), timeout=T) == 1
    assert aioray.get(next(gen), timeout=T) == 2
    with pytest.raises(ValueError, match="broke at the third"):
        aioray.get(next(gen), timeout=T)
    with pytest.raises(StopIteration):
        next(gen)


async def test_async_for_from_a_coroutine(ray: Any) -> None:
    values = [await ref async for ref in count_to.remote(4, 0.01)]
    assert values == [0, 1, 2, 3]


def test_generator_refs_are_ordinary_refs(ray: Any) -> None:
    @aioray.remote
    def double(x: int) -> int:
        return 2 * x

    refs = list(count_to.remote(3))
    ready, _ = aioray.wait(refs, num_returns=3, timeout=T)
    assert set(ready) == set(refs)
    assert aioray.get([double.remote(r) for r in refs], timeout=T) == [0, 2, 4]


def test_cancel_a_generator(ray: Any, tmp_path: Path) -> None:
    @aioray.remote
    def endless(path: str) -> Any:
        i = 0
        while True:
            with open(path, "a") as f:
                f.write(".")
            yield i
            i += 1
            time.sleep(0.02)

    path = tmp_path / "progress"
    gen = endless.remote(str(path))
    assert aioray.get(next(gen), timeout=T) == 0
    aioray.cancel(gen)
    seen = []
    with pytest.raises(TaskCancelledError):
        for ref in gen:
            seen.append(aioray.get(ref, timeout=T))
    assert seen == list(range(1, len(seen) + 1))
    size = path.stat().st_size
    time.sleep(0.3)
    assert path.stat().st_size == size, "the generator kept running after cancel"


def test_backpressure_pauses_the_producer(ray: Any, tmp_path: Path) -> None:
    @aioray.remote(_generator_backpressure_num_objects=2)
    def produce(path: str) -> Any:
        for i in range(10):
            with open(path, "a") as f:
                f.write(".")
            yield i

    path = tmp_path / "produced"
    gen = produce.remote(str(path))
    eventually(lambda: path.exists() and path.stat().st_size == 2, T, "two items produced")
    time.sleep(0.5)
    assert path.stat().st_size == 2  # paused: two items wait for the consumer
    assert [aioray.get(r, timeout=T) for r in gen] == list(range(10))


def test_actor_methods_that_yield(ray: Any) -> None:
    @aioray.remote
    class Source:
        def __init__(self) -> None:
            self.base = 100

        def numbers(self, n: int) -> Any:
            for i in range(n):
                yield self.base + i

    @aioray.remote
    class AsyncSource:
        async def tokens(self, text: str) -> Any:
            for word in text.split():
                await asyncio.sleep(0.01)
                yield word

    s = Source.remote()
    assert [aioray.get(r, timeout=T) for r in s.numbers.remote(3)] == [100, 101, 102]
    a = AsyncSource.remote()
    assert [aioray.get(r, timeout=T) for r in a.tokens.remote("one two three")] == ["one", "two", "three"]
    gen = s.numbers.options(num_returns="streaming").remote(2)
    assert isinstance(gen, aioray.ObjectRefGenerator)
    with pytest.raises(ValueError, match="dynamic"):
        s.numbers.options(num_returns="dynamic")


def test_dynamic_returns_one_ref_of_all_items(ray: Any) -> None:
    @aioray.remote(num_returns="dynamic")
    def split(n: int) -> Any:
        for i in range(n):
            yield i * i

    ref = split.remote(4)
    assert isinstance(ref, aioray.ObjectRef)
    items = aioray.get(ref, timeout=T)
    assert isinstance(items, aioray.DynamicObjectRefGenerator)
    assert aioray.get(list(items), timeout=T) == [0, 1, 4, 9]


def test_a_retried_generator_does_not_repeat_items(ray: Any, tmp_path: Path) -> None:
    marker = tmp_path / "first-attempt"

    @aioray.remote(max_retries=1)
    def crashes_once(path: str) -> Any:
        for i in range(5):
            yield i
            if i == 2 and not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)  # the worker dies after three items; the retry yields all five again

    assert [aioray.get(r, timeout=T) for r in crashes_once.remote(str(marker))] == [0, 1, 2, 3, 4]
    assert marker.exists()


def test_generator_mistakes(ray: Any) -> None:
    @aioray.remote(num_returns="streaming")
    def not_a_generator() -> int:
        return 1

    with pytest.raises(TypeError, match="not a generator"):
        aioray.get(next(not_a_generator.remote()), timeout=T)
    with pytest.raises(ValueError, match="num_returns"):
        aioray.remote(num_returns="lots")(not_a_generator)
    with pytest.raises(ValueError, match="async def"):

        @aioray.remote
        async def coroutine_task() -> None:
            pass
