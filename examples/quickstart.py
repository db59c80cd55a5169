"""aioray in one page: remote functions and actors, through the async API and the Ray-compatible sync API."""

import asyncio
import time

import aioray


@aioray.remote
def square(x: int) -> int:
    return x * x


@aioray.remote
def total(values: list[int]) -> int:
    return sum(values)


@aioray.remote
def countdown(n: int):  # a generator task: each item reaches the caller as soon as it is yielded
    for i in range(n, 0, -1):
        time.sleep(0.05)
        yield i


@aioray.remote
class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    def add(self, k: int) -> int:
        self.value += k
        return self.value


@aioray.remote
class AsyncGreeter:
    async def greet(self, name: str) -> str:
        await asyncio.sleep(0.01)  # coroutines of one async actor interleave at await
        return f"hello, {name}"


async def main() -> None:
    async with aioray.Cluster(num_cpus=2) as cluster:
        refs = [square.remote(i) for i in range(10)]
        squares = await asyncio.gather(*refs)  # refs are awaitable
        print("async: squares =", squares)
        print("async: total   =", await cluster.remote(total, squares))
        big = await cluster.put(list(range(100_000)))
        print("async: total of a 100k-element list put in the store =", await total.remote(big))
        counter = await cluster.remote(Counter, 100)  # returns once the actor is alive
        print("async: counter  =", await asyncio.gather(*(counter.add.remote(1) for _ in range(3))))
        greeter = AsyncGreeter.remote()
        print("async:", await greeter.greet.remote("aioray"))
        print("async: countdown =", [await ref async for ref in countdown.remote(3)])
        done, _ = await asyncio.wait([square.remote(i) for i in range(3)])  # refs are asyncio futures
        print("async: asyncio.wait over refs =", sorted(ref.result() for ref in done))


def sync_flavour() -> None:
    ray = aioray  # a Ray Core script runs unchanged after `import aioray as ray`
    start = time.perf_counter()
    ray.init(num_cpus=2)
    print(f"sync: cluster up in {time.perf_counter() - start:.2f}s with {ray.cluster_resources()}")
    refs = [square.remote(i) for i in range(100)]
    ready, _ = ray.wait(refs, num_returns=100, timeout=30)
    print("sync: sum of 100 squares =", sum(ray.get(ready)))
    print("sync: square of a square =", ray.get(square.remote(square.remote(3))))
    counter = Counter.options(name="counter").remote(0)
    ray.get([counter.add.remote(k) for k in range(10)])
    print("sync: named actor total   =", ray.get(ray.get_actor("counter").add.remote(0)))
    ray.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    sync_flavour()
