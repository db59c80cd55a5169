"""Queue 100,000 tasks from one driver: throughput over time and memory per pending task.

A sampler thread reads the driver's count of unfinished tasks and its RSS every
quarter second while the driver submits in chunks and then waits for all of
them. Flat completion rates across the run mean no step costs more as the
queue grows. Run: python benches/task_scale.py [--tasks 100000] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import aioray
from aioray._private.core_worker.object_ref import global_worker


@aioray.remote
def noop(i: int) -> int:
    return i


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Sampler(threading.Thread):
    def __init__(self, period: float, refs: list[aioray.ObjectRef]) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.refs = refs  # grows one ref at a time while the driver submits
        self.samples: list[tuple[float, int, int, float]] = []  # (t, submitted, pending, rss MiB)
        self._done = threading.Event()
        self._tasks = global_worker().submitter.tasks  # every unfinished task the driver owns

    def run(self) -> None:
        start = time.perf_counter()
        while not self._done.wait(self.period):
            submitted = len(self.refs)  # read before the pending count, so done is never over-counted
            self.samples.append((time.perf_counter() - start, submitted, len(self._tasks), _rss_mib()))

    def stop(self) -> None:
        self._done.set()
        self.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()

    aioray.init(num_cpus=args.num_cpus)
    try:
        aioray.get([noop.remote(i) for i in range(2_000)], timeout=60)  # warm up the workers and leases
        baseline_mib = _rss_mib()
        refs: list[aioray.ObjectRef] = []
        sampler = Sampler(0.25, refs)
        sampler.start()
        submit_rates = []
        start = time.perf_counter()
        for base in range(0, args.tasks, args.chunk):
            t0 = time.perf_counter()
            refs.extend(noop.remote(i) for i in range(base, min(base + args.chunk, args.tasks)))
            submit_rates.append(args.chunk / (time.perf_counter() - t0))
        submitted_s = time.perf_counter() - start
        values = aioray.get(refs, timeout=600)
        total_s = time.perf_counter() - start
        sampler.stop()
        assert values == list(range(args.tasks)), "every task returns its own index"
    finally:
        aioray.shutdown()

    print(f"{args.tasks:,} tasks on {args.num_cpus} CPUs: submitted in {submitted_s:.2f}s, "
          f"all done in {total_s:.2f}s ({args.tasks / total_s:,.0f} tasks/s overall)")  # fmt: skip
    chunk_rates = " ".join(f"{r:,.0f}" for r in submit_rates)
    print(f"submission rate per chunk of {args.chunk:,} (tasks/s): {chunk_rates}")
    print(
        f"{'t (s)':>6} {'submitted':>10} {'pending':>8} {'done':>8} {'done/s':>8} {'RSS MiB':>8} {'KiB/pending':>11}"
    )
    rates = []
    prev_t, prev_done = 0.0, 0
    for t, submitted, pending, rss in sampler.samples:
        done = max(submitted - pending, prev_done)
        rate = (done - prev_done) / (t - prev_t)
        per_pending = (rss - baseline_mib) * 1024 / pending if pending else float("nan")
        print(f"{t:6.2f} {submitted:10,} {pending:8,} {done:8,} {rate:8,.0f} {rss:8.1f} {per_pending:11.2f}")
        if pending and submitted == args.tasks:
            rates.append((pending, rate))
        prev_t, prev_done = t, done
    if len(rates) >= 4:
        deep = [r for p, r in rates if p > args.tasks // 2]
        shallow = [r for p, r in rates if p <= args.tasks // 2]
        if deep and shallow:
            print(f"median completion rate with > {args.tasks // 2:,} pending: {statistics.median(deep):,.0f}/s; "
                  f"with fewer: {statistics.median(shallow):,.0f}/s")  # fmt: skip
    peak = max(sampler.samples, key=lambda s: s[2], default=None)
    if peak is not None and peak[2]:
        print(f"memory per pending task at the peak ({peak[2]:,} pending): "
              f"{(peak[3] - baseline_mib) * 1024 / peak[2]:.2f} KiB (driver RSS {peak[3]:.0f} MiB, "
              f"{baseline_mib:.0f} MiB before submitting)")  # fmt: skip


if __name__ == "__main__":
    main()
