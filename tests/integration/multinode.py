"""A harness that runs several aioray nodes on 127.0.0.1 as separate processes, started with the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import aioray
from aioray._private import worker_api
from aioray._private.common import process, rpc

MiB = 1 << 20


class Nodes:
    def __init__(self) -> None:
        self.port = rpc.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "aioray", "start", *args, "--block"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    def start_head(
        self,
        resources: dict[str, float],
        num_cpus: int = 1,
        store: int = 300 * MiB,
        extra: tuple[str, ...] = (),
    ) -> None:
        self._start(
            "head",
            ["--head", "--port", str(self.port), "--num-cpus", str(num_cpus), "--resources", json.dumps(resources),
             "--object-store-memory", str(store), *extra],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while worker_api.read_cluster_file(self.address) is None:
            if time.monotonic() > deadline or self.procs["head"].poll() is not None:
                raise RuntimeError("the head node did not start")
            time.sleep(0.05)

    def add_node(
        self,
        name: str,
        resources: dict[str, float],
        num_cpus: int = 1,
        store: int = 300 * MiB,
        env: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self._start(
            name,
            ["--address", self.address, "--num-cpus", str(num_cpus), "--resources", json.dumps(resources),
             "--object-store-memory", str(store), *extra],
            env,
        )  # fmt: skip

    def wait_alive(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while sum(n["Alive"] for n in aioray.nodes()) != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"expected {count} live nodes, have {aioray.nodes()}")
            time.sleep(0.1)

    def kill(self, name: str) -> None:
        """Kills a node's CLI process: its raylet and workers follow (lifeline), as when a machine dies."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def kill_hard(self, name: str) -> None:
        """SIGKILLs a node's CLI process and every process under it at once (raylet, workers), as
        when a machine loses power: nothing gets to clean up, not even the store segment."""
        proc = self.procs.pop(name)
        for pid in [proc.pid, *process.descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

    def gcs_pid(self) -> int:
        """The pid of the GCS serving this cluster's port."""
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        argv = f.read().split(b"\0")
                except OSError:
                    continue
                if b"aioray._private.gcs" in argv and str(self.port).encode() in argv:
                    return int(entry)
        raise RuntimeError(f"no GCS serves port {self.port}")

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "head"] + ["head"]:
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def connected(
    head: dict[str, float],
    workers: dict[str, dict[str, float]],
    env: dict[str, dict[str, str]] | None = None,
) -> Iterator[Nodes]:
    """A head and worker nodes (name -> custom resources; `env` per node name) with this driver
    connected once all are alive; everything stops afterwards."""
    nodes = Nodes()
    try:
        nodes.start_head(head)
        for name, resources in workers.items():
            nodes.add_node(name, resources, env=(env or {}).get(name))
        aioray.init(address=nodes.address)
        nodes.wait_alive(1 + len(workers))
        yield nodes
    finally:
        aioray.shutdown()
        nodes.stop()


def node_ids_by_resource() -> dict[str, str]:
    out = {}
    for n in aioray.nodes():
        if n["Alive"]:
            for key in n["Resources"]:
                if key not in ("CPU", "GPU", "memory"):
                    out[key] = n["NodeID"]
    return out


__all__ = ["MiB", "Nodes", "node_ids_by_resource"]
