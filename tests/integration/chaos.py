"""A chaos run: a map/reduce DAG with store-sized objects on a CLI-started 3-node cluster while
workers, actors and one whole node are SIGKILLed at random.

Shared by the suite's chaos test (short) and `benches/chaos.py` (as long as you like). Every
result must come back exact or as a typed `RayError`; nothing may hang, and nothing (process,
segment) may be left behind, which the suite's leak checks verify after the cluster is stopped.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import aioray
from aioray._private.common import process

from .multinode import MiB, Nodes


@aioray.remote(max_retries=-1)
def produce(i: int, mib: int, log_dir: str) -> np.ndarray:
    _note(log_dir, "map", i)
    time.sleep(0.05)
    return np.full(mib * MiB, i % 251, dtype=np.uint8)


@aioray.remote(max_retries=-1)
def reduce_sum(j: int, log_dir: str, *parts: np.ndarray) -> int:
    _note(log_dir, "reduce", j)
    return int(sum(int(p[0]) * p.nbytes for p in parts))


@aioray.remote(max_restarts=-1, max_task_retries=-1)
class Checker:
    """An actor in the DAG: it checks a map output (and is killed now and then)."""

    def first_byte(self, part: np.ndarray) -> int:
        return int(part[0])


def _note(log_dir: str, stage: str, index: int) -> None:
    """Appends one line per execution, so re-runs can be counted afterwards."""
    with open(os.path.join(log_dir, f"{stage}.log"), "a") as f:
        f.write(f"{index}\n")


def worker_pids(tag: str) -> list[int]:
    """Worker processes (task workers and actors) of the cluster whose session tag is `tag`."""
    return [pid for pid, kind in process.find_daemons(tag).items() if kind == "worker"]


@dataclass
class Report:
    rounds: int = 0
    exact: int = 0
    typed_errors: dict[str, int] = field(default_factory=dict)
    worker_kills: int = 0
    node_kills: int = 0
    map_runs: int = 0
    maps: int = 0
    reduce_runs: int = 0
    reduces: int = 0
    wall_s: float = 0.0

    @property
    def reruns(self) -> int:
        return self.map_runs - self.maps + self.reduce_runs - self.reduces

    def summary(self) -> str:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.typed_errors.items())) or "none"
        return (
            f"{self.rounds} round(s) in {self.wall_s:.1f}s: {self.exact} exact result(s), typed errors: {errors}; "
            f"survived {self.worker_kills} worker/actor kill(s) and {self.node_kills} node kill(s); "
            f"{self.reruns} task re-run(s) ({self.map_runs} runs of {self.maps} map tasks, "
            f"{self.reduce_runs} runs of {self.reduces} reduce tasks)"
        )


class Killer(threading.Thread):
    """SIGKILLs a random worker every `low`..`high` seconds, and one whole node after `node_after_s`."""

    def __init__(
        self, nodes: Nodes, tag: str, victim_node: str | None, node_after_s: float, seed: int
    ) -> None:
        super().__init__(daemon=True)
        self.nodes, self.tag, self.victim_node, self.node_after_s = nodes, tag, victim_node, node_after_s
        self.random = random.Random(seed)
        self.stop_event = threading.Event()
        self.worker_kills = 0
        self.node_kills = 0

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop_event.wait(self.random.uniform(0.3, 0.8)):
            if self.victim_node is not None and time.monotonic() - start > self.node_after_s:
                self.nodes.kill_hard(self.victim_node)
                self.victim_node = None
                self.node_kills += 1
                continue
            pids = worker_pids(self.tag)
            if pids:
                try:
                    os.kill(self.random.choice(pids), signal.SIGKILL)
                    self.worker_kills += 1
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def run_round(report: Report, log_dir: str, maps: int, reducers: int, mib: int, timeout: float) -> None:
    """One DAG: `maps` producers of `mib` MiB each, `reducers` reducers over a slice each, one actor check."""
    parts = [produce.remote(i, mib, log_dir) for i in range(maps)]
    checker = Checker.remote()
    checks = [checker.first_byte.remote(parts[i]) for i in range(0, maps, max(1, maps // 4))]
    per = max(1, maps // reducers)
    slices = [list(range(j * per, min(maps, (j + 1) * per))) for j in range(reducers)]
    sums = [reduce_sum.remote(j, log_dir, *[parts[i] for i in s]) for j, s in enumerate(slices)]
    expected_sums = [sum((i % 251) * mib * MiB for i in s) for s in slices]
    expected_checks = [i % 251 for i in range(0, maps, max(1, maps // 4))]
    for ref, want in [*zip(sums, expected_sums, strict=True), *zip(checks, expected_checks, strict=True)]:
        try:
            got = aioray.get(ref, timeout=timeout)
        except aioray.exceptions.RayError as e:
            name = type(e).__name__
            report.typed_errors[name] = report.typed_errors.get(name, 0) + 1
            continue
        assert got == want, f"wrong result under chaos: {got} != {want}"
        report.exact += 1
    report.maps += maps
    report.reduces += reducers
    report.rounds += 1
    aioray.kill(checker)


def count_runs(report: Report, log_dir: str) -> None:
    for stage in ("map", "reduce"):
        path = os.path.join(log_dir, f"{stage}.log")
        runs = sum(1 for _ in open(path)) if os.path.exists(path) else 0
        if stage == "map":
            report.map_runs = runs
        else:
            report.reduce_runs = runs


def start_cluster(num_cpus: int = 2, store: int = 300 * MiB) -> Nodes:
    nodes = Nodes()
    nodes.start_head({}, num_cpus=num_cpus, store=store)
    nodes.add_node("b", {}, num_cpus=num_cpus, store=store)
    nodes.add_node("c", {}, num_cpus=num_cpus, store=store)
    return nodes


def run(
    log_dir: str,
    *,
    seconds: float,
    maps: int = 120,
    reducers: int = 30,
    mib: int = 2,
    kill_node_after_s: float = 4.0,
    seed: int = 0,
    round_timeout_s: float = 180.0,
) -> Report:
    """Runs rounds of the DAG under chaos for at least `seconds` (one round at least), then stops."""
    tag = os.environ.get("AIORAY_SESSION_TAG", "")
    if not tag:
        raise RuntimeError("set AIORAY_SESSION_TAG: the killer only aims at this session's workers")
    report = Report()
    nodes = start_cluster()
    try:
        aioray.init(address=nodes.address)
        nodes.wait_alive(3)
        killer = Killer(nodes, tag, "b", kill_node_after_s, seed)
        start = time.monotonic()
        killer.start()
        try:
            while report.rounds == 0 or time.monotonic() - start < seconds:
                run_round(report, log_dir, maps, reducers, mib, round_timeout_s)
        finally:
            killer.stop()
        report.wall_s = time.monotonic() - start
        report.worker_kills, report.node_kills = killer.worker_kills, killer.node_kills
        count_runs(report, log_dir)
    finally:
        aioray.shutdown()
        nodes.stop()
    return report


__all__ = ["Report", "run"]
