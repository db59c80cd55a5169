"""Misuses the typed API: mypy must report an error on each line marked ``# E:``, and on no other.

Checked by tests/unit/test_typing.py; never run.
"""

from __future__ import annotations

import aioray
from aioray import ActorProxy


def add(x: int, y: int = 0) -> int:
    return x + y


class CounterImpl:
    def __init__(self, start: int) -> None:
        self.value = start

    @aioray.method()
    def incr(self, times: int = 1) -> int:
        self.value += times
        return self.value

    @aioray.method()
    async def read(self, key: str) -> bytes:
        return key.encode()


remote_add = aioray.remote(add)
Counter = aioray.remote(CounterImpl)


async def misuse() -> None:
    remote_add.remote("1")  # E: wrong argument type
    remote_add.remote(1, 2, 3)  # E: too many arguments
    remote_add.remote(1, z=2)  # E: unknown keyword
    remote_add.options(num_cpus=1).remote("1")  # E: options() keeps the signature
    text: str = aioray.get(remote_add.remote(1))  # E: the value is an int
    other: str = await remote_add.remote(1)  # E: so is the awaited value
    strs: list[str] = aioray.get([remote_add.remote(1)])  # E: a list of ints
    number: int = aioray.get(aioray.put("s"))  # E: put keeps the type
    aioray.wait([1, 2])  # E: wait takes refs

    Counter.remote("0")  # E: constructor argument type
    Counter.remote()  # E: constructor arity
    Counter.remote(0, 1)  # E: constructor arity
    proxy: ActorProxy[CounterImpl] = Counter.remote(0)
    proxy.incr.remote("2")  # E: method argument type
    proxy.incr.remote(1, 2)  # E: method arity
    proxy.read.remote()  # E: missing method argument
    data: str = await proxy.read.remote("k")  # E: the awaited value is bytes
    del text, other, strs, number, data
