"""Placement groups created, waited for and removed, ten at a time (compare_ray's case): the rate,
the phases of one batch, and each process's CPU per group (from /proc, no profiler attached).

python benches/placement_groups.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import aioray
from aioray.util.placement_group import placement_group, remove_placement_group

BATCH = 10


def batch(phases: dict[str, list[float]] | None = None) -> int:
    start = time.perf_counter()
    groups = [placement_group([{"custom": 0.001}]) for _ in range(BATCH)]
    created = time.perf_counter()
    waits = []
    for pg in groups:
        before = time.perf_counter()
        assert pg.wait(timeout_seconds=30)
        waits.append(time.perf_counter() - before)
    waited = time.perf_counter()
    for pg in groups:
        remove_placement_group(pg)
    if phases is not None:
        phases["create (10 calls)"].append(created - start)
        phases["first wait"].append(waits[0])
        phases["each later wait"].append(statistics.median(waits[1:]))
        phases["remove (10 calls)"].append(time.perf_counter() - waited)
    return BATCH


def cluster_processes() -> dict[int, str]:
    """This driver and the processes of its embedded cluster (its descendants), by pid."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline") as f:
                argv = f.read().split("\0")
        except OSError:
            continue
        names[int(entry)] = argv[argv.index("-m") + 1].rsplit(".", 1)[-1] if "-m" in argv else argv[0]
    out = {os.getpid(): "driver"}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in out and pid not in out:
                out[pid] = names.get(pid, "?")
                grew = True
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    aioray.init(num_cpus=2, include_dashboard=False, resources={"custom": 1})
    for _ in range(30):  # warm-up
        batch()
    processes = cluster_processes()
    before = {pid: cpu_seconds(pid) for pid in processes}
    phases: dict[str, list[float]] = {
        k: [] for k in ("create (10 calls)", "first wait", "each later wait", "remove (10 calls)")
    }
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        done += batch(phases)
    elapsed = time.perf_counter() - start
    print(f"{done / elapsed:.0f} groups a second (create, wait, remove; {BATCH} at a time)")
    for name, values in phases.items():
        print(f"  {name}: median {statistics.median(values) * 1e3:.2f} ms")
    for pid, name in processes.items():
        print(f"  {name}: {(cpu_seconds(pid) - before[pid]) / done * 1e6:.0f} us of CPU per group")
    aioray.shutdown()


if __name__ == "__main__":
    main()
