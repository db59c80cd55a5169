"""The asyncio API: `async with aioray.Cluster()`, awaitable refs, cluster.remote/put/get/wait."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import aioray


@aioray.remote
def square(x):
    return x * x


@aioray.remote
def fail():
    raise KeyError("missing")


async def test_cluster_context_and_awaitable_refs() -> None:
    async with aioray.Cluster(num_cpus=2, object_store_memory=256 << 20) as cluster:
        ref = square.remote(7)
        assert await ref == 49
        assert await asyncio.gather(*(square.remote(i) for i in range(20))) == [i * i for i in range(20)]
        assert await cluster.remote(square, 9) == 81
        # A plain function works too: cluster.remote wraps it.
        assert await cluster.remote(lambda a, b: a - b, 10, 3) == 7
        big = await cluster.put(np.arange(1_000_000))
        got = await cluster.get(big)
        assert got[-1] == 999_999 and not got.flags.writeable
        assert await cluster.get([ref, big]) is not None
        ready, not_ready = await cluster.wait([ref, square.remote(3)], num_returns=2, timeout=10)
        assert len(ready) == 2 and not not_ready
        with pytest.raises(KeyError):
            await fail.remote()
        with pytest.raises(aioray.GetTimeoutError):

            @aioray.remote
            def nap():
                time.sleep(1)

            await cluster.get(nap.remote(), timeout=0.1)
        # Awaiting from another event loop in another thread works as well.
        result: list[int] = []
        ref2 = square.remote(5)
        t = threading.Thread(target=lambda: result.append(asyncio.run(_await(ref2))))
        t.start()
        t.join(30)
        assert result == [25]
        # asyncio.wait_for on a ref behaves like any awaitable.
        assert await asyncio.wait_for(square.remote(4), 10) == 16
    assert not aioray.is_initialized()


async def _await(ref):
    return await ref


async def test_sync_init_then_asyncio_run() -> None:
    # A script that calls init() and later runs its own loop can await refs there.
    await asyncio.to_thread(aioray.init, num_cpus=1, object_store_memory=64 << 20)
    try:
        assert await square.remote(3) == 9
    finally:
        await asyncio.to_thread(aioray.shutdown)


async def test_connect_to_a_running_cluster() -> None:
    async with aioray.Cluster(num_cpus=1, object_store_memory=64 << 20) as cluster:
        address = cluster.address
        assert address.startswith("127.0.0.1:")
    # The first cluster is gone: connecting now fails with a clear error once the retry window passes.
    from aioray._private import worker_api

    old = worker_api.CONNECT_RETRY_S
    worker_api.CONNECT_RETRY_S = 0.5
    try:
        with pytest.raises(ConnectionError, match="could not reach"):
            await aioray.connect(address)
    finally:
        worker_api.CONNECT_RETRY_S = old


async def test_the_cluster_takes_a_job_runtime_env() -> None:
    @aioray.remote
    def env_of(name: str) -> str | None:
        import os

        return os.environ.get(name)

    async with aioray.Cluster(num_cpus=1, runtime_env={"env_vars": {"ASYNC_ENV": "yes"}}) as cluster:
        assert await cluster.remote(env_of, "ASYNC_ENV") == "yes"
        assert aioray.get_runtime_context().runtime_env == {"env_vars": {"ASYNC_ENV": "yes"}}
