"""Broadcast a 1 GiB object from the head to 4 other nodes, each node in its own network namespace.

    sudo python benches/broadcast.py --system aioray          # needs root: ip netns, veth, a bridge
    sudo python benches/broadcast.py --system ray

Five network namespaces (`bcast0` for the head and the driver, `bcast1`..`bcast4`), each with a veth
pair whose other end is on a bridge in the root namespace, addresses 10.77.0.10-14/24. Each node is
started with the system's CLI (`aioray start` / `ray start`) inside its namespace, with 1 CPU, a custom
resource `nodeK` that pins a task to it, and an object store of `--store-gib`. The driver, in the head's
namespace, puts a `--size-gib` numpy array on the head, warms a worker on every node, then submits one
task per node that gets the object (passed inside a list, so the task times its own `get`) and returns
its start and end times. Figures: wall time from submitting the 4 tasks to having all 4 results,
the aggregate rate (4 GiB over that time), and each node's `get` time and rate.

The bench always tears down: it stops the system's processes (`aioray stop --tag`, `ray stop --force`),
kills what it started, deletes the namespaces, the veths and the bridge, and checks /dev/shm.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scale_common import RAY_VENV, available_mib, load, load_system

BRIDGE = "bcastbr0"
PREFIX = "10.77.0"
HEAD_PORT = 6390
REPO = Path(__file__).resolve().parents[1]


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shlex.split(cmd), capture_output=True, text=True, check=check)


def ns(i: int) -> str:
    return f"bcast{i}"


def ip(i: int) -> str:
    return f"{PREFIX}.{10 + i}"


def setup_network(nodes: int) -> None:
    sh(f"ip link add {BRIDGE} type bridge")
    sh(f"ip addr add {PREFIX}.1/24 dev {BRIDGE}")
    sh(f"ip link set {BRIDGE} up")
    for i in range(nodes):
        sh(f"ip netns add {ns(i)}")
        sh(f"ip link add bcv{i} type veth peer name bcv{i}p")
        sh(f"ip link set bcv{i}p netns {ns(i)}")
        sh(f"ip link set bcv{i} master {BRIDGE} up")
        sh(f"ip netns exec {ns(i)} ip link set lo up")
        sh(f"ip netns exec {ns(i)} ip addr add {ip(i)}/24 dev bcv{i}p")
        sh(f"ip netns exec {ns(i)} ip link set bcv{i}p up")
    # Check every node reaches the head (no ping here: a TCP connect refused by the head's kernel will do).
    probe = (
        "import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], 9), timeout=1)\n"
        "except ConnectionRefusedError:\n    sys.exit(0)\nexcept OSError:\n    sys.exit(1)\n"
    )
    for i in range(1, nodes):
        for _ in range(50):
            cmd = ["ip", "netns", "exec", ns(i), sys.executable, "-c", probe, ip(0)]
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{ns(i)} cannot reach the head at {ip(0)}")


def teardown_network(nodes: int) -> None:
    for i in range(nodes):
        sh(f"ip netns del {ns(i)}", check=False)  # takes its veth end, and so the pair, with it
        sh(f"ip link del bcv{i}", check=False)
    sh(f"ip link del {BRIDGE}", check=False)


def start_nodes(system: str, nodes: int, store: int, env: dict[str, str]) -> None:
    for i in range(nodes):
        resources = json.dumps({f"node{i}": 1})
        common = f"--node-ip-address {ip(i)} --num-cpus 1 --object-store-memory {store}"
        if system == "aioray":
            exe = f"{sys.executable} -m aioray start"
        else:
            exe = f"{RAY_VENV / 'bin' / 'ray'} start --disable-usage-stats"
        where = f"--head --port {HEAD_PORT}" if i == 0 else f"--address {ip(0)}:{HEAD_PORT}"
        if system == "ray" and i == 0:
            where += " --include-dashboard=false"
        cmd = [
            "ip",
            "netns",
            "exec",
            ns(i),
            *shlex.split(f"{exe} {where} {common}"),
            "--resources",
            resources,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"node {i} did not start:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        print(f"node {i} ({ns(i)}, {ip(i)}) started", flush=True)


def stop_nodes(system: str, env: dict[str, str]) -> None:
    if system == "aioray":
        cmd = [sys.executable, "-m", "aioray", "stop", "--force", "--tag", env["AIORAY_SESSION_TAG"]]
    else:
        cmd = [str(RAY_VENV / "bin" / "ray"), "stop", "--force"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    print(f"stop: {done.stdout.strip()[-500:]} {done.stderr.strip()[-500:]}", flush=True)


def driver(system: str, nodes: int, size: int, rounds: int) -> None:
    ray = load_system(system)
    import numpy as np

    @ray.remote(num_cpus=0)
    def where() -> str:
        return str(ray.get_runtime_context().get_node_id())

    @ray.remote(num_cpus=0)
    def fetch(boxed: list[Any]) -> tuple[float, float, int, int]:
        start = time.time()
        value = ray.get(boxed[0])
        end = time.time()
        return start, end, value.nbytes, int(value[:: 1 << 20].sum())

    ray.init(address=f"{ip(0)}:{HEAD_PORT}")
    try:
        deadline = time.time() + 120
        while sum(1 for n in ray.nodes() if n["Alive"]) < nodes and time.time() < deadline:
            time.sleep(0.5)
        assert sum(1 for n in ray.nodes() if n["Alive"]) == nodes, ray.nodes()
        others = range(1, nodes)
        # A worker on every node first, so the broadcast times the transfer and not worker start-up.
        placed = ray.get([where.options(resources={f"node{k}": 0.01}).remote() for k in others], timeout=300)
        assert len(set(placed)) == nodes - 1, f"the tasks ran on {placed}"
        out: dict[str, Any] = {"system": system, "nodes": nodes - 1, "GiB": size / (1 << 30), "rounds": []}
        for r in range(rounds):
            array = np.full(size, r + 1, dtype=np.uint8)
            t0 = time.perf_counter()
            ref = ray.put(array)
            put_s = time.perf_counter() - t0
            del array
            load_before = load()
            t0 = time.time()
            refs = [fetch.options(resources={f"node{k}": 0.01}).remote([ref]) for k in others]
            results = ray.get(refs, timeout=600)
            wall = time.time() - t0
            expect = (r + 1) * len(range(0, size, 1 << 20))
            assert all(nbytes == size and check == expect for _, _, nbytes, check in results), results
            per_node = [
                {
                    "node": k,
                    "start after submit s": s - t0,
                    "get s": e - s,
                    "GiB/s": size / (1 << 30) / (e - s),
                }
                for k, (s, e, _, _) in zip(others, results, strict=True)
            ]
            out["rounds"].append({
                "put s": put_s, "wall s": wall, "aggregate GiB/s": (nodes - 1) * size / (1 << 30) / wall,
                "per node": per_node, "load before": load_before, "load after": load(),
            })  # fmt: skip
            del ref, refs, results
            time.sleep(3)  # the copies are freed before the next object comes
        print("RESULT " + json.dumps(out), flush=True)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--system", choices=["aioray", "ray"], default="aioray")
    parser.add_argument("--nodes", type=int, default=5, help="the head and nodes-1 receivers")
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--store-gib", type=float, default=2.0, help="object store of each node")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = int(args.size_gib * (1 << 30))
    if args.driver:
        driver(args.system, args.nodes, size, args.rounds)
        return
    if os.geteuid() != 0:
        raise SystemExit("broadcast.py needs root (ip netns, veth pairs, a bridge)")
    store = int(args.store_gib * (1 << 30))
    shm = os.statvfs("/dev/shm")
    need = args.nodes * store
    if shm.f_bavail * shm.f_frsize < need or available_mib() * (1 << 20) < need + (4 << 30):
        raise SystemExit(f"{args.nodes} stores of {args.store_gib} GiB do not fit in /dev/shm and RAM here")
    tag = f"bcast{os.getpid()}"
    env = {
        **os.environ,
        "AIORAY_AUTH_TOKEN": secrets.token_hex(16),
        "AIORAY_SESSION_TAG": tag,
        "RAY_DISABLE_USAGE_STATS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray 2.60's head turns token auth on and its worker nodes did not find the token: off, for all.
        "RAY_AUTH_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "python"), os.environ.get("PYTHONPATH")) if p),
    }
    shm_before = set(os.listdir("/dev/shm"))
    print(f"{args.system}: {args.size_gib:g} GiB to {args.nodes - 1} nodes ({load()}, "
          f"{available_mib():,.0f} MiB available)", flush=True)  # fmt: skip
    result = None
    try:
        setup_network(args.nodes)
        start_nodes(args.system, args.nodes, store, env)
        python = sys.executable if args.system == "aioray" else str(RAY_VENV / "bin" / "python")
        cmd = ["ip", "netns", "exec", ns(0), python, __file__, "--driver", "--system", args.system,
               "--nodes", str(args.nodes), "--size-gib", str(args.size_gib), "--rounds", str(args.rounds)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise RuntimeError(f"the driver printed no result:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        result = json.loads(lines[-1][len("RESULT ") :])
    finally:
        try:
            stop_nodes(args.system, env)
        finally:
            teardown_network(args.nodes)
        # Other sessions on the machine come and go: only ours (aioray's carry the tag; Ray's, "plasma").
        left = {
            n for n in set(os.listdir("/dev/shm")) - shm_before if tag in n or "plasma" in n or "ray" == n[:3]
        }
        if left:
            print(f"left in /dev/shm: {sorted(left)}", flush=True)
    for i, r in enumerate(result["rounds"]):
        nodes = "; ".join(
            f"node {p['node']}: get {p['get s']:.2f}s ({p['GiB/s']:.2f} GiB/s, began {p['start after submit s']:.2f}s in)"
            for p in r["per node"]
        )
        print(f"round {i + 1}: put {r['put s']:.2f}s; all {len(r['per node'])} nodes have it {r['wall s']:.2f}s after "
              f"submitting ({r['aggregate GiB/s']:.2f} GiB/s aggregate) [{r['load before']}]\n  {nodes}")  # fmt: skip
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
