"""Latency of one synchronous round trip (a task, an actor call): percentiles, or where it goes hop by hop.

python benches/sync_latency.py [--calls 3000]           # p10 / p50 / p90 of each
python benches/sync_latency.py --hops [--calls 2000]    # the medians of each hop (below)

Rates over a second or two swing by ±20% on a 2-core machine; the median of thousands of
single-call latencies is steady enough to compare two installs (run it with each interpreter, or
with PYTHONPATH set to another tree's python/, alternating).

With --hops, the driver reads the clock before ``.remote()`` (t0) and after ``get`` returns (t4);
the task events recorded on the way give the rest, on the same machine's clock (time.time()):
SUBMITTED when the driver's core worker took the call (t1), RUNNING when the executing worker
starts the function (t2), RESULT_INLINED once it returned and its result was encoded (t3):

- submit:  t1 - t0  the call built in the driver's thread (arguments, spec, ids)
- deliver: t2 - t1  the driver's thread to the channel, the frame to the worker, the worker's
                    loop to the thread that runs the function
- execute: t3 - t2  the function and the encoding of its result
- return:  t4 - t3  the result frame back, the driver's loop, the driver's waiting thread woken

Recording the events costs a few microseconds per call; the p50 of the same calls in a child
process that records none (``AIORAY_TASK_EVENTS=0``) is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import aioray
from aioray.util.state import list_tasks


@aioray.remote
def task() -> bytes:
    return b"ok"


class _Actor:
    def call(self) -> bytes:
        return b"ok"


Actor = aioray.remote(_Actor)
HOPS = ("submit", "deliver", "execute", "return", "total")


def timed(call: Callable[[], aioray.ObjectRef[bytes]], n: int) -> list[tuple[bytes, float, float]]:
    """(task id, clock before .remote(), clock after get) of `n` calls, after a warm-up."""
    for _ in range(200):  # workers started, functions exported, leases cached
        aioray.get(call())
    out = []
    for _ in range(n):
        start = time.time()
        ref = call()
        aioray.get(ref)
        out.append((ref.task_id(), start, time.time()))
    return out


def percentiles(calls: list[tuple[bytes, float, float]]) -> tuple[float, float, float]:
    lat = sorted(end - start for _, start, end in calls)
    n = len(lat)
    return lat[n // 10] * 1e6, lat[n // 2] * 1e6, lat[n * 9 // 10] * 1e6


def hops(calls: list[tuple[bytes, float, float]], name: str) -> dict[str, float]:
    """The median of each hop (us), from the calls' task events in the GCS."""
    wanted = {task_id.hex(): (start, end) for task_id, start, end in calls}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the events reach the GCS a moment later
        found = {}
        for row in list_tasks(filters=[("name", "=", name)], detail=True, limit=100_000):
            if row["task_id"] in wanted:
                found[row["task_id"]] = {e["type"]: e["time"] for e in row.get("events") or ()}
        if len(found) == len(wanted) and all("RESULT_INLINED" in e for e in found.values()):
            rows = []
            for task_id, events in found.items():
                start, end = wanted[task_id]
                t1, t2, t3 = events["SUBMITTED"], events["RUNNING"], events["RESULT_INLINED"]
                rows.append((t1 - start, t2 - t1, t3 - t2, end - t3, end - start))
            return {hop: statistics.median(r[i] for r in rows) * 1e6 for i, hop in enumerate(HOPS)}
        time.sleep(0.5)
    raise SystemExit(f"the task events of {name} did not all reach the GCS")


def p50_without_events(calls: int) -> list[float]:
    """The p50 (us) of each case, measured by this script in a child that records no events."""
    env = {**os.environ, "AIORAY_TASK_EVENTS": "0"}
    argv = [sys.executable, os.path.abspath(__file__), "--calls", str(calls), "--num-cpus", "1"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    return [float(line.split("p50 ")[1].split(" us")[0]) for line in out.splitlines() if "p50 " in line]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--hops", action="store_true", help="where each call's time goes, hop by hop")
    args = parser.parse_args()
    aioray.init(num_cpus=1 if args.hops else args.num_cpus, include_dashboard=False)
    try:
        actor = Actor.remote()
        cases = {"actor call": (actor.call.remote, "_Actor.call"), "task": (task.remote, "task")}
        measured = {name: timed(call, args.calls) for name, (call, _) in cases.items()}
        if not args.hops:
            for name, calls in measured.items():
                p10, p50, p90 = percentiles(calls)
                print(f"{name}: p10 {p10:.0f} us, p50 {p50:.0f} us, p90 {p90:.0f} us")
            return
        results = {name: hops(measured[name], event_name) for name, (_, event_name) in cases.items()}
    finally:
        aioray.shutdown()
    plain = p50_without_events(args.calls)
    print(f"medians over {args.calls} synchronous calls, us")
    print("| call | submit | deliver | execute | return | total | p50 without task events |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (name, h), p50 in zip(results.items(), plain, strict=True):
        print(f"| {name} | " + " | ".join(f"{h[hop]:.0f}" for hop in HOPS) + f" | {p50:.0f} |")


if __name__ == "__main__":
    main()
