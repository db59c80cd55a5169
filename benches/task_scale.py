"""Queue many tasks from one driver: throughput over time and driver memory per pending task, either system.

    python benches/task_scale.py --tasks 1000000 --chunk 50000                  # aioray
    python benches/task_scale.py --tasks 1000000 --chunk 50000 --system ray     # Ray, the same code

The driver submits in chunks, as fast as it can, and then waits for all of them. A waiter thread gets
the results in submission order, 1% of the tasks at a time as soon as they are submitted, and stamps
when each 1% is complete: so `done` is known at 1% resolution the same way for both systems, and the
rate per 10% of tasks completed shows whether throughput stays flat as the queue drains. A sampler
thread reads the driver's RSS every quarter second; pending = submitted - done. For aioray it also
reads the exact count of unfinished tasks the driver owns.
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
import threading
import time
from typing import Any

from scale_common import cpu_s, load, load_system, out_of_memory_guard, rss_mib, tree_memory, tree_pids


class Waiter(threading.Thread):
    """Gets the results 1% at a time, in submission order, as soon as each 1% is submitted."""

    def __init__(self, ray: Any, refs: list[Any], total: int) -> None:
        super().__init__(daemon=True)
        self.ray, self.refs, self.total = ray, refs, total
        self.step = max(1, total // 100)
        self.stamps: list[tuple[float, int]] = []  # (perf_counter when complete, tasks done)
        self.values: list[Any] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for lo in range(0, self.total, self.step):
                hi = min(lo + self.step, self.total)
                while len(self.refs) < hi:
                    time.sleep(0.005)
                self.values += self.ray.get(self.refs[lo:hi], timeout=1800)
                self.stamps.append((time.perf_counter(), hi))
        except BaseException as e:
            self.error = e

    def done_at(self, t: float) -> int:
        i = bisect.bisect_right([s for s, _ in self.stamps], t)
        return self.stamps[i - 1][1] if i else 0


class Sampler(threading.Thread):
    def __init__(self, period: float, refs: list[Any], pending: Any) -> None:
        super().__init__(daemon=True)
        self.period, self.refs, self.pending = period, refs, pending
        self.samples: list[
            tuple[float, int, int, float]
        ] = []  # (perf_counter, submitted, exact pending, RSS)
        self.cluster_peak = (0, 0.0, 0.0)  # (processes, RSS MiB, PSS MiB) at the highest total RSS
        self.cpu: list[float] = []  # CPU seconds of the driver and its cluster, at each sample
        self._done = threading.Event()

    def run(self) -> None:
        pids = tree_pids()
        while not self._done.wait(self.period):
            self.samples.append((time.perf_counter(), len(self.refs), self.pending(), rss_mib()))
            self.cpu.append(cpu_s(pids))
            out_of_memory_guard()
            if len(self.samples) % 8 == 1:  # every 2 s: the whole tree costs more to read
                pids = tree_pids()
                cluster = tree_memory()
                if cluster[1] > self.cluster_peak[1]:
                    self.cluster_peak = cluster

    def cpu_at(self, t: float) -> float:
        i = bisect.bisect_right([s[0] for s in self.samples], t)
        return self.cpu[max(i - 1, 0)] if self.cpu else 0.0

    def stop(self) -> None:
        self._done.set()
        self.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--system", choices=["aioray", "ray"], default="aioray")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--json", help="write the raw samples and stamps here")
    args = parser.parse_args()
    ray = load_system(args.system)

    @ray.remote
    def noop(i: int) -> int:
        return i

    if args.system == "aioray":
        from aioray._private.core_worker.object_ref import global_worker

        def pending() -> int:
            return len(global_worker().submitter.tasks)  # every unfinished task the driver owns
    else:

        def pending() -> int:
            return -1  # Ray has no public count; pending = submitted - done (1% resolution) below

    load_before = load()
    ray.init(num_cpus=args.num_cpus)
    try:
        ray.get([noop.remote(i) for i in range(2_000)], timeout=120)  # warm up the workers and leases
        baseline_mib = rss_mib()
        refs: list[Any] = []
        waiter = Waiter(ray, refs, args.tasks)
        sampler = Sampler(0.25, refs, pending)
        sampler.start()
        waiter.start()
        submit_rates = []
        start = time.perf_counter()
        for base in range(0, args.tasks, args.chunk):
            t0 = time.perf_counter()
            refs.extend(noop.remote(i) for i in range(base, min(base + args.chunk, args.tasks)))
            submit_rates.append(args.chunk / (time.perf_counter() - t0))
        submitted_at = time.perf_counter()
        waiter.join()
        end = time.perf_counter()
        sampler.stop()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.values == list(range(args.tasks)), "every task returns its own index"
    finally:
        ray.shutdown()
    load_after = load()

    n = args.tasks
    total_s, submit_s = end - start, submitted_at - start
    done_at_submit = waiter.done_at(submitted_at)
    print(f"{args.system}: {n:,} tasks on {args.num_cpus} CPUs ({load_before} before, {load_after} after)")
    print(f"submitted in {submit_s:.1f}s ({n / submit_s:,.0f}/s), all done in {total_s:.1f}s "
          f"({n / total_s:,.0f}/s overall)")  # fmt: skip
    print(f"completed while submitting: {done_at_submit:,} ({done_at_submit / submit_s:,.0f}/s); "
          f"after: {n - done_at_submit:,} in {end - submitted_at:.1f}s "
          f"({(n - done_at_submit) / (end - submitted_at):,.0f}/s)")  # fmt: skip
    chunk_rates = " ".join(f"{r:,.0f}" for r in submit_rates)
    print(f"submission rate per chunk of {args.chunk:,} (tasks/s): {chunk_rates}")

    deciles, per_cpu = [], []
    prev_t, prev_done, prev_cpu = start, 0, sampler.cpu_at(start)
    for t, done in waiter.stamps:
        if done * 10 % n == 0 or done == n:
            cpu = sampler.cpu_at(t)
            deciles.append((done - prev_done) / (t - prev_t))
            per_cpu.append((done - prev_done) / (cpu - prev_cpu) if cpu > prev_cpu else float("nan"))
            prev_t, prev_done, prev_cpu = t, done, cpu
    print("completion rate per 10% of tasks completed (tasks/s): " + " ".join(f"{r:,.0f}" for r in deciles))
    # The machine is shared: tasks per CPU-second the driver and its cluster spent is the load-proof figure.
    print(
        "tasks per CPU-second of the driver and cluster, per 10%: " + " ".join(f"{r:,.0f}" for r in per_cpu)
    )
    used = sampler.cpu[-1] - sampler.cpu_at(start) if sampler.cpu else 0.0
    print(
        f"CPU used by the driver and cluster: {used:.0f} s over {total_s:.0f} s ({used / total_s:.2f} cores)"
    )
    after = [
        (b[1] - a[1]) / (b[0] - a[0])
        for a, b in zip(waiter.stamps, waiter.stamps[1:], strict=False)
        if a[0] >= submitted_at
    ]
    if len(after) >= 10:
        half = len(after) // 2
        print(f"after submitting, median rate per 1% in the first half of the drain: "
              f"{statistics.median(after[:half]):,.0f}/s, second half: {statistics.median(after[half:]):,.0f}/s")  # fmt: skip

    print(
        f"{'t (s)':>6} {'submitted':>10} {'done':>9} {'pending':>9} {'exact':>9} {'RSS MiB':>8} {'KiB/pend':>8}"
    )
    best = (0, 0.0, 0, 0)  # (pending, rss, exact pending, t)
    peak_rss = max((s[3] for s in sampler.samples), default=0.0)
    for i, (t, submitted, exact, rss) in enumerate(sampler.samples):
        done = waiter.done_at(t)
        pend = submitted - done
        if pend > best[0]:
            best = (pend, rss, exact, t - start)
        if i % 8 == 0:  # every 2 s
            per = (rss - baseline_mib) * 1024 / pend if pend else float("nan")
            print(f"{t - start:6.1f} {submitted:10,} {done:9,} {pend:9,} {exact:9,} {rss:8.0f} {per:8.2f}")
    pend, rss, exact, t = best
    if pend:
        print(f"at the most pending ({pend:,} by the 1% count, t={t:.1f}s): driver RSS {rss:.0f} MiB, "
              f"{(rss - baseline_mib) * 1024 / pend:.2f} KiB per pending task ({baseline_mib:.0f} MiB before)")  # fmt: skip
    if exact > 0:
        print(
            f"  by aioray's exact count ({exact:,} pending): {(rss - baseline_mib) * 1024 / exact:.2f} KiB each"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"system": args.system, "tasks": n, "start": start, "submitted_at": submitted_at,
                       "end": end, "baseline_mib": baseline_mib, "stamps": waiter.stamps,
                       "samples": sampler.samples, "cpu": sampler.cpu, "submit_rates": submit_rates,
                       "load": [load_before, load_after]}, f)  # fmt: skip
    procs, crss, cpss = sampler.cluster_peak
    print(f"driver peak RSS {peak_rss:.0f} MiB ({(peak_rss - baseline_mib) * 1024 / n:.2f} KiB per task "
          f"submitted); whole cluster near the peak: {procs} processes, RSS {crss:.0f} MiB, PSS {cpss:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
