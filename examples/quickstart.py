"""aioray in one page: remote functions through the async API and the Ray-compatible sync API."""

import asyncio
import time

import aioray


@aioray.remote
def square(x: int) -> int:
    return x * x


@aioray.remote
def total(values: list[int]) -> int:
    return sum(values)


async def main() -> None:
    async with aioray.Cluster(num_cpus=2) as cluster:
        refs = [square.remote(i) for i in range(10)]
        squares = await asyncio.gather(*refs)  # refs are awaitable
        print("async: squares =", squares)
        print("async: total   =", await cluster.remote(total, squares))
        big = await cluster.put(list(range(100_000)))
        print("async: total of a 100k-element list put in the store =", await total.remote(big))


def sync_flavour() -> None:
    ray = aioray  # a Ray Core script runs unchanged after `import aioray as ray`
    start = time.perf_counter()
    ray.init(num_cpus=2)
    print(f"sync: cluster up in {time.perf_counter() - start:.2f}s with {ray.cluster_resources()}")
    refs = [square.remote(i) for i in range(100)]
    ready, _ = ray.wait(refs, num_returns=100, timeout=30)
    print("sync: sum of 100 squares =", sum(ray.get(ready)))
    print("sync: square of a square =", ray.get(square.remote(square.remote(3))))
    ray.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    sync_flavour()
