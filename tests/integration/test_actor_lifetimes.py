"""Actor lifetimes across drivers, and actors through the asyncio API (each test starts its own cluster)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import aioray

from .conftest import eventually
from .test_actors import Counter, _absent


def test_non_detached_actor_dies_with_its_driver_detached_lives() -> None:
    aioray.init(num_cpus=1, object_store_memory=64 << 20)
    try:
        from aioray._private import worker_api

        address = worker_api.require().gcs_address
        token = worker_api.require().core.token
        script = """
import aioray
aioray.init(address=ADDRESS)
@aioray.remote
class Keeper:
    def ping(self):
        return "pong"
k = Keeper.options(name="attached").remote()
d = Keeper.options(name="detached", lifetime="detached").remote()
print(aioray.get([k.ping.remote(), d.ping.remote()]))
aioray.shutdown()
""".replace("ADDRESS", repr(address))
        env = {**os.environ, "AIORAY_AUTH_TOKEN": token}
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
        )
        assert proc.returncode == 0, proc.stderr
        assert "pong" in proc.stdout
        assert aioray.get(aioray.get_actor("detached").ping.remote()) == "pong"
        eventually(lambda: _absent(aioray, "attached"), 10, "the attached actor dying with its driver")
        aioray.kill(aioray.get_actor("detached"))
    finally:
        aioray.shutdown()


async def test_async_api_remote_actor() -> None:
    async with aioray.Cluster(num_cpus=1, object_store_memory=64 << 20) as cluster:
        c = await cluster.remote(Counter, 3)
        assert await c.inc.remote() == 4

        class Plain:
            def __init__(self):
                raise RuntimeError("nope")

            def f(self):
                return 1

        with pytest.raises(aioray.ActorDiedError, match="nope"):
            await cluster.remote(Plain)
