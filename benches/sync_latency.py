"""Latency of one synchronous round trip (a task, an actor call), as percentiles over thousands of calls.

Rates over a second or two swing by ±20% on a 2-core machine; the median of
thousands of single-call latencies is steady enough to compare two installs
(run it with each interpreter, alternating). Run: python benches/sync_latency.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import aioray


@aioray.remote
def task() -> bytes:
    return b"ok"


class _Actor:
    def call(self) -> bytes:
        return b"ok"


Actor = aioray.remote(_Actor)


def percentiles(call: Callable[[], object], n: int) -> tuple[float, float, float]:
    for _ in range(200):  # warm-up: workers started, functions exported, leases cached
        call()
    lat = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        lat.append(time.perf_counter() - start)
    lat.sort()
    return lat[n // 10] * 1e6, lat[n // 2] * 1e6, lat[n * 9 // 10] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    aioray.init(num_cpus=args.num_cpus)
    try:
        actor = Actor.remote()
        cases: dict[str, Callable[[], object]] = {
            "actor call": lambda: aioray.get(actor.call.remote()),
            "task": lambda: aioray.get(task.remote()),
        }
        for name, call in cases.items():
            p10, p50, p90 = percentiles(call, args.calls)
            print(f"{name}: p10 {p10:.0f} us, p50 {p50:.0f} us, p90 {p90:.0f} us")
    finally:
        aioray.shutdown()


if __name__ == "__main__":
    main()
