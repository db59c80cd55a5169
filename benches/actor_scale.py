"""Many actors on one machine: time to create them, calls per second, memory per actor, either system.

    python benches/actor_scale.py --system aioray --steps 100,500,1000,max
    python benches/actor_scale.py --system ray --steps 100,250,500,max

Each step runs in a fresh child process with an embedded 2-CPU cluster: it creates N actors with
`num_cpus=0` (so that they all fit, as Ray's scalability envelope does), calls each once (the call
returns once the actor is up: "create"), then calls each once more, all at once ("calls/s") and one
after the other ("sync calls/s"). Memory per actor is the growth of the summed RSS and PSS of every
process under the driver (the cluster and its actor processes) over the idle cluster, divided by N;
PSS counts a page shared by k processes as 1/k each, so it is what the actors really take.

Before each step the parent predicts the step's memory from the previous step's PSS per actor and
stops when it would leave less than 4 GiB available (`max`: the most that the previous step's
PSS per actor says fit above that floor); the child also watches and kills the run below
4 GiB. Run the Ray steps with Ray's venv interpreter or let `--system ray` re-execute under it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from scale_common import FLOOR_MIB, available_mib, load, load_system, out_of_memory_guard, tree_memory


def child(system: str, n: int) -> None:
    ray = load_system(system)

    @ray.remote(num_cpus=0)
    class Actor:
        def ping(self) -> int:
            return os.getpid()

    stop = threading.Event()

    def guard() -> None:
        while not stop.wait(0.5):
            out_of_memory_guard()

    threading.Thread(target=guard, daemon=True).start()
    out: dict[str, Any] = {"system": system, "actors": n, "load before": load()}
    ray.init(num_cpus=2)
    try:
        time.sleep(2)  # idle: whatever starts in the background has started
        _, idle_rss, idle_pss = tree_memory()
        out["idle RSS MiB"], out["idle PSS MiB"] = idle_rss, idle_pss
        start = time.perf_counter()
        actors = [Actor.remote() for _ in range(n)]
        out["handles s"] = time.perf_counter() - start
        pids = ray.get([a.ping.remote() for a in actors], timeout=3600)
        out["create s"] = time.perf_counter() - start
        assert len(set(pids)) == n, f"{len(set(pids))} processes for {n} actors"
        start = time.perf_counter()
        ray.get([a.ping.remote() for a in actors], timeout=600)
        out["calls/s"] = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for a in actors:
            ray.get(a.ping.remote(), timeout=60)
        out["sync calls/s"] = n / (time.perf_counter() - start)
        time.sleep(2)
        procs, rss, pss = tree_memory()
        out["processes"], out["RSS MiB"], out["PSS MiB"] = procs, rss, pss
        out["RSS MiB/actor"] = (rss - idle_rss) / n
        out["PSS MiB/actor"] = (pss - idle_pss) / n
        out["available MiB"] = available_mib()
        out["load after"] = load()
        print("RESULT " + json.dumps(out), flush=True)
    finally:
        stop.set()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--system", choices=["aioray", "ray"], default="aioray")
    parser.add_argument(
        "--steps", default="100,500,1000,max", help="actor counts, comma-separated; max: as many as fit"
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.system, args.child)
        return
    if args.system == "ray":
        load_system("ray")  # re-executes under Ray's interpreter when this one has no Ray
    results = []
    per_actor = 0.0
    for step in args.steps.split(","):
        if step == "max":  # as many as the last step's PSS per actor says fit, 100s, keeping the floor
            if not per_actor:
                break
            n = int((available_mib() - FLOOR_MIB - 1024) / (per_actor * 1.2)) // 100 * 100
            if n <= results[-1]["actors"]:
                print(f"no room for more than {results[-1]['actors']} actors")
                break
        else:
            n = int(step)
        need = per_actor * n * 1.2 + 1024  # the cluster itself and a margin
        if per_actor and available_mib() - need < FLOOR_MIB:
            print(
                f"stopping before {n} actors: ~{need:,.0f} MiB needed, {available_mib():,.0f} MiB available"
            )
            break
        print(f"{args.system}: {n} actors ({load()})...", flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--system", args.system, "--child", str(n)],
            capture_output=True, text=True, timeout=7200,
        )  # fmt: skip
        if args.system == "ray":
            subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "stop", "--force"],
                           capture_output=True)  # fmt: skip
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            log = os.path.join(tempfile.gettempdir(), f"actor_scale-{args.system}-{n}.log")
            with open(log, "w") as f:
                f.write(done.stdout + "\n" + done.stderr)
            print(f"{n} actors failed (whole output in {log}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            break
        result = json.loads(lines[-1][len("RESULT ") :])
        results.append(result)
        per_actor = result["PSS MiB/actor"]
        print(json.dumps(result), flush=True)
    print("\n| system | actors | create all (s) | calls/s | sync calls/s | RSS MiB/actor | PSS MiB/actor "
          "| total PSS MiB | load before -> after |\n|---|---:|---:|---:|---:|---:|---:|---:|---|")  # fmt: skip
    for r in results:
        print(f"| {r['system']} | {r['actors']:,} | {r['create s']:.1f} | {r['calls/s']:,.0f} | "
              f"{r['sync calls/s']:,.0f} | {r['RSS MiB/actor']:.1f} | {r['PSS MiB/actor']:.1f} | "
              f"{r['PSS MiB']:,.0f} | {r['load before'][5:]} -> {r['load after'][5:]} |")  # fmt: skip


if __name__ == "__main__":
    main()
