"""Actor concurrency groups, as in Ray: named groups with their own limit, thread(s) or event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import aioray


@aioray.remote(concurrency_groups={"io": 2, "compute": 1})
class AsyncGroups:
    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.threads: dict[str, set[int]] = {}
        self.release = asyncio.Event()

    def _enter(self, group: str) -> None:
        self.running[group] = self.running.get(group, 0) + 1
        self.peak[group] = max(self.peak.get(group, 0), self.running[group])
        self.threads.setdefault(group, set()).add(threading.get_ident())

    @aioray.method(concurrency_group="io")
    async def io(self, seconds: float) -> str:
        self._enter("io")
        await asyncio.sleep(seconds)
        self.running["io"] -= 1
        return "io"

    @aioray.method(concurrency_group="compute")
    async def compute(self, seconds: float) -> str:
        self._enter("compute")
        await asyncio.sleep(seconds)
        self.running["compute"] -= 1
        return "compute"

    async def default(self, seconds: float) -> str:
        self._enter("default")
        await asyncio.sleep(seconds)
        self.running["default"] -= 1
        return "default"

    async def stats(self) -> tuple[dict[str, int], dict[str, int]]:
        return self.peak, {group: len(ids) for group, ids in self.threads.items()}


def test_async_groups_limit_each_group_on_its_own_loop(ray: Any) -> None:
    a = AsyncGroups.remote()
    refs = [a.io.remote(0.3) for _ in range(6)] + [a.compute.remote(0.1) for _ in range(3)]
    refs += [a.default.remote(0.3) for _ in range(6)]
    start = time.monotonic()
    assert sorted(set(aioray.get(refs, timeout=30))) == ["compute", "default", "io"]
    elapsed = time.monotonic() - start
    peak, threads = aioray.get(a.stats.remote(), timeout=30)
    assert peak["io"] == 2
    assert peak["compute"] == 1
    assert peak["default"] == 6  # the default group of an async actor allows 1000
    assert threads == {"io": 1, "compute": 1, "default": 1}
    assert elapsed < 3  # 6 io calls of 0.3 s two at a time: ~0.9 s


def test_a_call_can_choose_its_group(ray: Any) -> None:
    a = AsyncGroups.remote()
    refs = [a.default.options(concurrency_group="compute").remote(0.1) for _ in range(3)]
    assert aioray.get(refs, timeout=30) == ["default"] * 3
    peak, _ = aioray.get(a.stats.remote(), timeout=30)
    assert peak["default"] == 1  # ran in "compute", one at a time


@aioray.remote(concurrency_groups={"io": 2, "health": 1})
class ThreadedGroups:
    def __init__(self) -> None:
        self.both_in = threading.Barrier(2, timeout=10)
        self.gate = threading.Event()

    @aioray.method(concurrency_group="io")
    def io(self) -> bool:
        self.both_in.wait()  # only passes if two io calls run at the same time
        return self.gate.wait(10)

    @aioray.method(concurrency_group="health")
    def ping(self) -> str:
        return "alive"

    def open_gate(self) -> None:
        self.gate.set()


def test_threaded_groups_run_beside_each_other(ray: Any) -> None:
    a = ThreadedGroups.remote()
    busy = [a.io.remote(), a.io.remote()]
    # Both io threads are blocked; the health group still answers, the default group too.
    assert aioray.get(a.ping.remote(), timeout=30) == "alive"
    aioray.get(a.open_gate.remote(), timeout=30)
    assert aioray.get(busy, timeout=30) == [True, True]


def test_group_mistakes_are_clear_errors(ray: Any) -> None:
    with pytest.raises(ValueError, match="concurrency group 'missing'"):

        @aioray.remote(concurrency_groups={"io": 1})
        class Wrong:
            @aioray.method(concurrency_group="missing")
            def f(self) -> None:
                pass

    with pytest.raises(ValueError, match="integers >= 1"):

        @aioray.remote(concurrency_groups={"io": 0})
        class Zero:
            def f(self) -> None:
                pass

    a = AsyncGroups.remote()
    with pytest.raises(ValueError, match="no concurrency group 'gpu'"):
        a.io.options(concurrency_group="gpu")
