"""Side by side with Ray, in one run on this machine: the same cases, the same code, alternating rounds.

    python benches/compare_ray.py                   # every case, 3 rounds of 2 s per case and system
    python benches/compare_ray.py --cases generator --rounds 5

On first use it installs Ray (RAY_VERSION) into its own virtual environment (`.bench/ray-<version>`),
apart from aioray's. Each round starts one child process per system (`--child ray` under Ray's
interpreter, `--child aioray` under this one), in alternating order, each with an embedded 2-CPU
cluster; the child times `init`, measures the idle cluster's memory (every process under the
child), then runs every case for `--duration` seconds and prints its figures as JSON. The table
gives each system's median over the rounds and the ratio (above 1: aioray is better; for the
time and the footprint that is Ray's figure over aioray's).
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
    """Each case returns how many operations it did; the child times it. Ray's `ray microbenchmark`
    cases (ray/_private/ray_perf.py), with batches cut to fit 2 CPUs and 2 s, plus aioray's own."""
    import numpy as np

    @ray.remote
    def small() -> bytes:
        return b"ok"

    @ray.remote
    def items(n: int) -> Any:
        for _ in range(n):
            yield b"ok"

    @ray.remote(num_cpus=0)
    class Actor:
        def small(self) -> bytes:
            return b"ok"

        def small_arg(self, x: Any) -> bytes:
            return b"ok"

    @ray.remote
    class AsyncActor:
        async def small(self) -> bytes:
            return b"ok"

        async def small_arg(self, x: Any) -> bytes:
            return b"ok"

    @ray.remote(num_cpus=0)
    class Client:
        def __init__(self, servers: list[Any]) -> None:
            self.servers = servers

        def batch(self, n: int) -> None:
            ray.get([s.small.remote() for s in self.servers for _ in range(n)])

        def batch_arg(self, n: int) -> None:
            x = ray.put(0)
            ray.get([s.small_arg.remote(x) for s in self.servers for _ in range(n)])

    @ray.remote(num_cpus=0)
    class Submitter:
        def batch(self, n: int) -> None:
            ray.get([small.remote() for _ in range(n)])

    @ray.remote
    def put_small_100() -> None:
        for _ in range(100):
            ray.put(0)

    @ray.remote
    def put_80mb_10() -> None:
        for _ in range(10):
            ray.put(np.zeros(10 * 1024 * 1024, dtype=np.int64))

    @ray.remote
    def ref_holder() -> list[Any]:
        return [ray.put(1) for _ in range(10000)]

    @ray.remote(num_cpus=0)
    def call_actors(actors: list[Any], n: int) -> None:
        ray.get([actors[i % len(actors)].small.remote() for i in range(n)])

    actor = Actor.remote()
    concurrent = Actor.options(max_concurrency=16).remote()
    async_actor = AsyncActor.remote()
    servers = [Actor.remote() for _ in range(2)]
    client = Client.remote(servers)
    async_servers = [AsyncActor.options(num_cpus=0).remote() for _ in range(2)]
    async_client = Client.remote(async_servers)
    arg_clients = [Client.remote([Actor.remote()]) for _ in range(2)]
    submitters = [Submitter.remote() for _ in range(2)]
    ray.get([actor.small.remote(), concurrent.small.remote(), async_actor.small.remote()])
    held = ray.put(0)
    big = np.zeros(100 * 1024 * 1024, dtype=np.int64)  # 800 MB, as Ray's "put gigabytes"
    containing = ref_holder.remote()
    ray.get(containing)
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

    async def await_1k() -> int:
        for r in [small.remote() for _ in range(1000)]:
            await r
        return 1

    def generator_items() -> int:
        return sum(1 for _ in items.remote(1000))

    def placement_groups(count: int = 10) -> int:
        groups = [ray.util.placement_group(bundles=[{"custom": 0.001}]) for _ in range(count)]
        assert all(pg.wait(timeout_seconds=30) for pg in groups)
        for pg in groups:
            ray.util.remove_placement_group(pg)
        return count

    return {
        "single client get calls": lambda: (ray.get(held), 1)[1],
        "single client put calls": lambda: (ray.put(0), 1)[1],
        "multi client put calls (10 tasks x 100)": lambda: (
            ray.get([put_small_100.remote() for _ in range(10)]),
            1000,
        )[1],
        "single client put gigabytes (0.8 GB per put)": lambda: (ray.put(big), 1)[1],
        "multi client put gigabytes (10 tasks x 10 x 80 MB)": lambda: (
            ray.get([put_80mb_10.remote() for _ in range(10)]),
            100,
        )[1],
        "single client get object containing 10k refs": lambda: (ray.get(containing), 1)[1],
        "tasks sync": lambda: (ray.get(small.remote()), 1)[1],
        "tasks async (1k per batch)": lambda: len(ray.get([small.remote() for _ in range(1000)])),
        "multi client tasks async (2 x 1k)": lambda: (
            ray.get([s.batch.remote(1000) for s in submitters]),
            2000,
        )[1],
        "1:1 actor calls sync": lambda: (ray.get(actor.small.remote()), 1)[1],
        "1:1 actor calls async (1k per batch)": lambda: len(
            ray.get([actor.small.remote() for _ in range(1000)])
        ),
        "1:1 actor calls concurrent (1k per batch)": lambda: len(
            ray.get([concurrent.small.remote() for _ in range(1000)])
        ),
        "1:n actor calls async (2 x 1k)": lambda: (ray.get(client.batch.remote(1000)), 2000)[1],
        "n:n actor calls async (2 tasks x 1k)": lambda: (
            ray.get([call_actors.remote(servers, 1000) for _ in range(2)]),
            2000,
        )[1],
        "n:n actor calls with arg async (2 x 1k)": lambda: (
            ray.get([c.batch_arg.remote(1000) for c in arg_clients]),
            2000,
        )[1],
        "1:1 async-actor calls sync": lambda: (ray.get(async_actor.small.remote()), 1)[1],
        "1:1 async-actor calls async (1k per batch)": lambda: len(
            ray.get([async_actor.small.remote() for _ in range(1000)])
        ),
        "1:1 async-actor calls with args async (1k)": lambda: len(
            ray.get([async_actor.small_arg.remote(i) for i in range(1000)])
        ),
        "1:n async-actor calls async (2 x 1k)": lambda: (ray.get(async_client.batch.remote(1000)), 2000)[1],
        "n:n async-actor calls async (2 tasks x 1k)": lambda: (
            ray.get([call_actors.remote(async_servers, 1000) for _ in range(2)]),
            2000,
        )[1],
        "wait 1k refs one at a time (batches)": wait_1k_one_at_a_time,
        "asyncio.wait on 1k task refs (batches)": lambda: loop.run_until_complete(asyncio_wait_1k()),
        "await 1k task refs one by one (batches)": lambda: loop.run_until_complete(await_1k()),
        "generator items (1k small, one consumer)": generator_items,
        "placement group create/removal": placement_groups,
    }


def footprint_mib() -> float:
    """Resident memory of this process and every process under it (the cluster it started), MiB."""
    total = 0
    pids = [os.getpid()]
    while pids:
        pid = pids.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                pids += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return total / (1 << 20)


def child(system: str, wanted: str, duration: float) -> None:
    if system == "ray":
        import ray
    else:
        import aioray as ray  # type: ignore[no-redef]
    start = time.perf_counter()
    ray.init(num_cpus=2, resources={"custom": 100})  # "custom": for the placement groups, as Ray's case
    out: dict[str, float] = {"init (s)": time.perf_counter() - start}
    try:
        time.sleep(2)  # idle: whatever starts in the background has started
        out["idle footprint (MiB)"] = footprint_mib()
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
    if subprocess.run([str(python), "-c", "import numpy"], capture_output=True).returncode != 0:
        # Ray's microbenchmark cases put numpy arrays; Ray itself does not require numpy.
        subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy"], check=True)
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
        # Rates: higher is better. Times and sizes (units in the name): lower is, so their ratio turns.
        lower_is_better = name.endswith(("(s)", "(MiB)"))
        if lower_is_better:
            ratio = f"{theirs / ours:.2f}" if ours else "n/a"
        else:
            ratio = f"{ours / theirs:.2f}" if theirs else "n/a"
        print(f"| {name} | {_rate(theirs)} | {_rate(ours)} | {ratio} |")


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


if __name__ == "__main__":
    main()
