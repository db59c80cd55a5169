"""What the scale benches share: running one code path under Ray or aioray, and measuring memory.

`load_system("ray")` imports Ray; when this interpreter has no Ray it re-executes the same command line
under the Ray venv's interpreter (`.bench/ray-<version>`, made by `benches/compare_ray.py`), so
`python benches/task_scale.py --system ray` works from aioray's venv too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

RAY_VERSION = "2.60.0"
REPO = Path(__file__).resolve().parents[1]
RAY_VENV = REPO / ".bench" / f"ray-{RAY_VERSION}"
if not RAY_VENV.exists():  # a git worktree: the venv lives in the main checkout
    RAY_VENV = Path("/work/main/.bench") / f"ray-{RAY_VERSION}"


def load_system(name: str) -> Any:
    if name == "aioray":
        import aioray

        return aioray
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        python = RAY_VENV / "bin" / "python"
        if not python.exists():
            raise SystemExit(
                f"no Ray here and no {python}: run benches/compare_ray.py once to make it"
            ) from None
        os.execv(str(python), [str(python), *sys.argv])
    if ray.__version__ != RAY_VERSION:
        print(f"note: Ray {ray.__version__}, not {RAY_VERSION}", file=sys.stderr)
    return ray


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f}, {five:.2f}, {fifteen:.2f}"


def available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tree_pids(root: int | None = None) -> list[int]:
    """This process (or `root`) and every process under it."""
    out, todo = [], [root or os.getpid()]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes (those still alive)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_memory(root: int | None = None) -> tuple[int, float, float]:
    """(processes, RSS MiB, PSS MiB) summed over `root` and every process under it. PSS counts a page
    shared by k processes as 1/k to each, so the sum is what the processes really take."""
    count, rss, pss = 0, 0, 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = dict(line.split()[:2] for line in f if line.endswith("kB\n"))
        except OSError:
            continue
        count += 1
        rss += int(fields.get("Rss:", 0))
        pss += int(fields.get("Pss:", 0))
    return count, rss / 1024, pss / 1024


FLOOR_MIB = 4096.0


def out_of_memory_guard(floor_mib: float = FLOOR_MIB) -> bool:
    """Call it often: when the machine has less than `floor_mib` available, SIGKILL every process under
    this one and exit, rather than let the machine run out of memory."""
    if available_mib() >= floor_mib:
        return False
    print(
        f"ABORT: only {available_mib():.0f} MiB available (floor {floor_mib:.0f}): killing the run",
        flush=True,
    )
    for pid in reversed(tree_pids()[1:]):
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    os._exit(3)
