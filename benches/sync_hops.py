"""Where the time of one synchronous call goes, hop by hop: ``get(a.f.remote())`` and ``get(f.remote())``.

python benches/sync_hops.py [--calls 2000]

For each call the driver reads the clock before ``.remote()`` (t0) and after ``get`` returns (t4);
the task events recorded on the way give the rest, on the same machine's clock (time.time()):
SUBMITTED when the driver's core worker took the call (t1), RUNNING when the executing worker
starts the function (t2), RESULT_INLINED once it returned and its result was encoded (t3). The
medians over the calls of:

- submit:  t1 - t0  the call built in the driver's thread (arguments, spec, ids)
- deliver: t2 - t1  the driver's thread to its core loop, the frame to the worker, the worker's
                    loop to the thread that runs the function
- execute: t3 - t2  the function and the encoding of its result
- return:  t4 - t3  the result frame back, the driver's loop, the driver's waiting thread woken

Recording the events costs a few microseconds per call (each is a tuple appended to a list);
the round trip without them is printed too (``AIORAY_TASK_EVENTS=0`` in a child process).
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


def timed(call: Callable[[], aioray.ObjectRef[bytes]], n: int) -> list[tuple[bytes, float, float]]:
    for _ in range(200):  # warm-up: the worker started, the function exported, a lease cached
        aioray.get(call())
    out = []
    for _ in range(n):
        start = time.time()
        ref = call()
        aioray.get(ref)
        out.append((ref.task_id(), start, time.time()))
    return out


def hops(calls: list[tuple[bytes, float, float]], name: str) -> dict[str, float]:
    wanted = {task_id.hex(): (start, end) for task_id, start, end in calls}
    deadline = time.monotonic() + 30
    rows: list[dict[str, float]] = []
    while time.monotonic() < deadline:  # the events reach the GCS a moment later
        found = {}
        for row in list_tasks(filters=[("name", "=", name)], detail=True, limit=100_000):
            if row["task_id"] in wanted:
                found[row["task_id"]] = {e["type"]: e["time"] for e in row.get("events") or ()}
        if len(found) == len(wanted) and all("RESULT_INLINED" in e for e in found.values()):
            for task_id, events in found.items():
                start, end = wanted[task_id]
                rows.append(
                    {
                        "submit": events["SUBMITTED"] - start,
                        "deliver": events["RUNNING"] - events["SUBMITTED"],
                        "execute": events["RESULT_INLINED"] - events["RUNNING"],
                        "return": end - events["RESULT_INLINED"],
                        "total": end - start,
                    }
                )
            break
        time.sleep(0.5)
    if not rows:
        raise SystemExit(f"the task events of {name} did not all reach the GCS")
    return {hop: statistics.median(r[hop] for r in rows) * 1e6 for hop in rows[0]}


def round_trip_only(n: int) -> tuple[float, float]:
    """Medians (us) of the same calls in a child process that records no task events."""
    code = (
        "import sys, time, statistics; sys.argv = ['x']; import sync_hops as s, aioray;"
        "aioray.init(num_cpus=1, include_dashboard=False); a = s.Actor.remote();"
        f"r = [statistics.median(e - b for _, b, e in s.timed(c, {n})) * 1e6 for c in (a.call.remote, s.task.remote)];"
        "print(*r); aioray.shutdown()"
    )
    path = os.pathsep.join(
        p for p in (os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH")) if p
    )
    env = {**os.environ, "AIORAY_TASK_EVENTS": "0", "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    actor_us, task_us = out.stdout.split()[-2:]
    return float(actor_us), float(task_us)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    aioray.init(num_cpus=1, include_dashboard=False)
    actor = Actor.remote()
    results = {
        "1:1 actor call": hops(timed(actor.call.remote, args.calls), "_Actor.call"),
        "task": hops(timed(task.remote, args.calls), "task"),
    }
    aioray.shutdown()
    bare = round_trip_only(args.calls)
    print(f"medians over {args.calls} synchronous calls, us")
    print("| call | submit | deliver | execute | return | total | total without task events |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (name, h), plain in zip(results.items(), bare, strict=True):
        print(
            f"| {name} | {h['submit']:.0f} | {h['deliver']:.0f} | {h['execute']:.0f} | {h['return']:.0f} "
            f"| {h['total']:.0f} | {plain:.0f} |"
        )


if __name__ == "__main__":
    main()
