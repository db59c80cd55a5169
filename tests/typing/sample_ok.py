"""Uses the typed API as intended: ``mypy --strict`` must pass on it (tests/unit/test_typing.py).

Never run: it only has to type-check. The ``assert_type`` calls state what each expression is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, assert_type

import aioray
from aioray import ActorHandle, ActorProxy, ObjectRef, RemoteFunction


@aioray.remote
def add(x: int, y: int = 0) -> int:
    return x + y


@aioray.remote(num_cpus=1)
def label(n: int, *, prefix: str) -> str:
    return f"{prefix}{n}"


@aioray.remote(num_returns=2)
def pair(n: int) -> tuple[int, int]:
    return n, n


@aioray.remote
def count(n: int) -> Iterator[int]:
    yield from range(n)


# mypy ignores what a class decorator returns, so `@aioray.remote` on a class gives it no
# `.remote` for mypy: make the actor class with a call instead (pyright takes either form).
class CounterImpl:
    def __init__(self, start: int, *, step: int = 1) -> None:
        self.value = start
        self.step = step

    @aioray.method()
    def incr(self, times: int = 1) -> int:
        self.value += self.step * times
        return self.value

    @aioray.method(concurrency_group=None)
    async def read(self, key: str) -> bytes:
        return key.encode()

    @aioray.method(num_returns=2)
    def both(self) -> tuple[int, int]:
        return self.value, self.step

    def untyped(self, x: int) -> int:  # no @aioray.method(): callable through ActorHandle only
        return self.incr(x)  # inside the actor, a typed method is the method itself


Counter = aioray.remote(CounterImpl)


def sync_api() -> None:
    typed: RemoteFunction[[int, int], ObjectRef[int]] = add
    ref = add.remote(1, y=2)
    assert_type(ref, ObjectRef[int])
    assert_type(aioray.get(ref), int)
    assert_type(aioray.get([ref, add.remote(3)]), list[int])
    assert_type(aioray.get(ref, timeout=1.5), int)
    assert_type(label.remote(1, prefix="n"), ObjectRef[str])
    assert_type(label.options(num_cpus=2).remote(2, prefix="m"), ObjectRef[str])
    assert_type(add.options(num_returns=1).remote(1), ObjectRef[int])
    a, b = add.options(num_returns=2).remote(1)  # num_returns != 1: untyped result
    first, second = pair.remote(3)
    assert_type(count.remote(3), Any)

    put = aioray.put([1, 2])
    assert_type(put, ObjectRef[list[int]])
    assert_type(aioray.get(put), list[int])
    ready, pending = aioray.wait([ref, add.remote(5)], num_returns=1)
    assert_type(ready, list[ObjectRef[int]])
    assert_type(pending, list[ObjectRef[int]])
    mixed: list[ObjectRef[object]] = [ref, label.remote(1, prefix="")]
    assert_type(aioray.get(mixed), list[object])

    # Actor class: the constructor's arguments are checked; the handle is an ActorHandle[CounterImpl].
    handle = Counter.remote(1, step=2)
    assert_type(handle, ActorHandle[CounterImpl])
    assert_type(Counter.options(name="c").remote(0), ActorHandle[CounterImpl])
    assert_type(handle._actor_id, bytes)
    aioray.kill(handle)
    anything = handle.untyped.remote("not checked")  # a plain ActorHandle: methods are unchecked
    assert_type(anything, Any)

    # Annotated as an ActorProxy, calls of @aioray.method() methods are checked and typed.
    proxy: ActorProxy[CounterImpl] = Counter.remote(0)
    incr = proxy.incr.remote(2)
    assert_type(incr, Any | ObjectRef[int])
    total: int = aioray.get(proxy.incr.remote())
    data: bytes = aioray.get(proxy.read.remote("k"))  # async def: the awaited type
    x, y = proxy.both.remote()  # num_returns=2: untyped
    named: int = aioray.get(proxy.incr.options(name="bump").remote(1))
    if isinstance(proxy, ActorHandle):
        aioray.kill(proxy)
    del typed, a, b, first, second, total, data, x, y, named


async def async_api() -> None:
    value = await add.remote(1, 2)
    assert_type(value, int)
    text: str = await label.remote(1, prefix="p")
    proxy: ActorProxy[CounterImpl] = Counter.remote(3)
    got: bytes = await proxy.read.remote("k")
    fut = add.remote(2).future()
    assert_type(fut.result(), int)
    del text, got
