"""Side by side with Ray, in one run on this machine: the same cases, the same code, alternating rounds.

    python benches/compare_ray.py                   # every case, 3 rounds of 2 s per case and system
    python benches/compare_ray.py --cases generator --rounds 5

On first use it installs Ray (RAY_VERSION) into its own virtual environment (`.bench/ray-<version>`),
apart from aioray's. Each round starts one child process per system (`--child ray` under Ray's
interpreter, `--child aioray` under this one), in alternating order, each with an embedded 2-CPU
cluster; the child runs every case for `--duration` seconds and prints its rates as JSON. The table
gives each system's median over the rounds and the ratio aioray / Ray (above 1: aioray is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RAY_VERSION = "2.60.0"
REPO = Path(__file__).resolve().parents[1]
RAY_VENV = REPO / ".bench" / f"ray-{RAY_VERSION}"


# -- the cases: one code path for both systems (`ray` is `ray` or `aioray`) ----------------------------
def cases(ray: Any) -> dict[str, Callable[[], int]]:
    """Each case returns how many operations it did; the child times it."""

    @ray.remote
    def small() -> bytes:
        return b"ok"

    @ray.remote
    def items(n: int) -> Any:
        for _ in range(n):
            yield b"ok"

    @ray.remote
    class Actor:
        def small(self) -> bytes:
            return b"ok"

    @ray.remote
    class AsyncActor:
        async def small(self) -> bytes:
            return b"ok"

    actor = Actor.remote()
    async_actor = AsyncActor.remote()
    ray.get([actor.small.remote(), async_actor.small.remote()])
    held = ray.put(0)
    loop = asyncio.new_event_loop()

    def wait_1k_one_at_a_time() -> int:
        refs = [small.remote() for _ in range(1000)]
        while refs:
            _, refs = ray.wait(refs, num_returns=1)
        return 1

    async def asyncio_wait_1k() -> int:
        refs = [small.remote() for _ in range(1000)]
        done, _ = await asyncio.wait([asyncio.ensure_future(r) for r in refs])
        assert len(done) == 1000
        return 1

    def generator_items() -> int:
        return sum(1 for _ in items.remote(1000))

    return {
        "tasks sync": lambda: (ray.get(small.remote()), 1)[1],
        "tasks async (1k per batch)": lambda: len(ray.get([small.remote() for _ in range(1000)])),
        "1:1 actor calls sync": lambda: (ray.get(actor.small.remote()), 1)[1],
        "1:1 actor calls async (1k per batch)": lambda: len(
            ray.get([actor.small.remote() for _ in range(1000)])
        ),
        "1:1 async-actor calls sync": lambda: (ray.get(async_actor.small.remote()), 1)[1],
        "single client get calls": lambda: (ray.get(held), 1)[1],
        "single client put calls": lambda: (ray.put(0), 1)[1],
        "wait 1k refs one at a time (batches)": wait_1k_one_at_a_time,
        "asyncio.wait on 1k task refs (batches)": lambda: loop.run_until_complete(asyncio_wait_1k()),
        "generator items (1k small, one consumer)": generator_items,
    }


def child(system: str, wanted: str, duration: float) -> None:
    if system == "ray":
        import ray
    else:
        import aioray as ray  # type: ignore[no-redef]
    ray.init(num_cpus=2)
    try:
        out: dict[str, float] = {}
        for name, fn in cases(ray).items():
            if wanted not in name:
                continue
            fn()  # warm up: workers, leases, imports
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < duration:
                count += fn()
            out[name] = count / (time.perf_counter() - start)
        print("RESULT " + json.dumps(out), flush=True)
    finally:
        ray.shutdown()


# -- the parent --------------------------------------------------------------------------------------
def ray_python() -> Path:
    python = RAY_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing Ray {RAY_VERSION} into {RAY_VENV} (first use only)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(RAY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"ray=={RAY_VERSION}"], check=True)
    return python


def run_child(python: Path, system: str, wanted: str, duration: float) -> dict[str, float]:
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [str(python), __file__, "--child", system, "--cases", wanted, "--duration", str(duration)],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, float] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"the {system} run printed no result:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per case, system and round")
    parser.add_argument("--cases", default="", help="only cases whose name contains this")
    parser.add_argument("--child", choices=["ray", "aioray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cases, args.duration)
        return
    pythons = {"ray": ray_python(), "aioray": Path(sys.executable)}
    rates: dict[str, dict[str, list[float]]] = {"ray": {}, "aioray": {}}
    for round_ in range(args.rounds):
        order = ["ray", "aioray"] if round_ % 2 == 0 else ["aioray", "ray"]
        for system in order:
            for name, rate in run_child(pythons[system], system, args.cases, args.duration).items():
                rates[system].setdefault(name, []).append(rate)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    print(f"\nRay {RAY_VERSION} and aioray side by side on {os.cpu_count()} CPU(s), {args.rounds} rounds of "
          f"{args.duration:g} s per case; medians, operations per second\n")  # fmt: skip
    print(f"| case | Ray {RAY_VERSION} | aioray | aioray / Ray |\n|---|---:|---:|---:|")
    for name in rates["aioray"]:
        ours, theirs = (
            statistics.median(rates["aioray"][name]),
            statistics.median(rates["ray"].get(name, [0.0])),
        )
        ratio = f"{ours / theirs:.2f}" if theirs else "n/a"
        print(f"| {name} | {_rate(theirs)} | {_rate(ours)} | {ratio} |")


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


if __name__ == "__main__":
    main()
