"""Leases end with their owner: a SIGKILLed driver of a long-lived cluster, or a worker that
submitted subtasks, leaves no CPU held and no worker running its tasks, on any node.

One CLI-started cluster for the module: a head with 2 CPUs (where drivers attach) and a second node
with 2 CPUs and a "remote" resource, which hears of the deaths only from the GCS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import aioray
from aioray.exceptions import RayError
from aioray.util.state import list_jobs

from .multinode import Nodes

DEADLINE_S = 60.0
TOTAL_CPUS = 4.0

DRIVER = """
import os, sys, time
from pathlib import Path
import aioray

out = Path(sys.argv[2])

@aioray.remote(num_cpus=1)
def hold(name):
    (out / f"task-{name}-{os.getpid()}").write_text("")
    time.sleep(600)

@aioray.remote(num_cpus=1)
class Held:
    def __init__(self):
        (out / f"actor-{os.getpid()}").write_text("")
    def ping(self):
        return "pong"

@aioray.remote(num_cpus=0)
class Survivor:
    def ping(self):
        return os.getpid()

aioray.init(address=sys.argv[1])
survivor = Survivor.options(name="survivor", namespace="owners", lifetime="detached").remote()
aioray.get(survivor.ping.remote())
held = Held.remote()
aioray.get(held.ping.remote())
refs = [hold.options(resources={"remote": 1}).remote(i) for i in range(2)] + [hold.remote(2)]
print(os.getpid(), flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    nodes = Nodes()
    try:
        nodes.start_head({}, num_cpus=2)
        nodes.add_node("other", {"remote": 2}, num_cpus=2)
        aioray.init(address=nodes.address)
        nodes.wait_alive(2)
        yield nodes
    finally:
        aioray.shutdown()
        nodes.stop()


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.1)
    return value


def free_cpus() -> float:
    return float(aioray.available_resources().get("CPU", 0.0))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids(folder: Path, prefix: str) -> list[int]:
    return [int(p.name.rsplit("-", 1)[1]) for p in folder.iterdir() if p.name.startswith(prefix)]


def job_status(driver_pid: int) -> str | None:
    for job in list_jobs():
        info = job.driver_info
        pid = info.get("pid") if isinstance(info, dict) else getattr(info, "pid", None)
        if str(pid) == str(driver_pid):
            return str(job.status)
    return None


def test_a_killed_drivers_leases_and_actors_end_on_every_node(cluster: Nodes, tmp_path: Path) -> None:
    wait_for(lambda: free_cpus() == TOTAL_CPUS, "an idle cluster")
    driver = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(DRIVER), cluster.address, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert driver.stdout is not None
        assert int(driver.stdout.readline()) == driver.pid
        tasks = wait_for(lambda: len(found := pids(tmp_path, "task-")) == 3 and found, "3 running tasks")
        (actor,) = pids(tmp_path, "actor-")
        wait_for(lambda: free_cpus() == 0.0, "every CPU leased")
        assert job_status(driver.pid) == "RUNNING"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        wait_for(lambda: job_status(driver.pid) == "SUCCEEDED", "the killed driver's job finishing")
        wait_for(lambda: free_cpus() == TOTAL_CPUS, "the killed driver's CPUs coming back")
        for pid in [*tasks, actor]:
            wait_for(lambda pid=pid: not alive(pid), f"worker {pid} of the killed driver exiting")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    # The capacity is back for the next job; a detached actor outlives its creator's job.
    assert aioray.get(aioray.remote(num_cpus=2)(lambda: "ran").remote(), timeout=DEADLINE_S) == "ran"
    survivor = aioray.get_actor("survivor", namespace="owners")
    assert alive(aioray.get(survivor.ping.remote(), timeout=DEADLINE_S))
    aioray.kill(survivor)


@aioray.remote(num_cpus=1, resources={"remote": 1})
def child(folder: str) -> None:
    (Path(folder) / f"child-{os.getpid()}").write_text("")
    time.sleep(600)


@aioray.remote(num_cpus=1, max_retries=0)
def parent(folder: str) -> None:
    children = [child.remote(folder) for _ in range(2)]
    (Path(folder) / f"parent-{os.getpid()}").write_text("")
    aioray.get(children)


def test_a_killed_workers_subtasks_release_their_leases(cluster: Nodes, tmp_path: Path) -> None:
    wait_for(lambda: free_cpus() == TOTAL_CPUS, "an idle cluster")
    ref = parent.remote(str(tmp_path))
    children = wait_for(lambda: len(found := pids(tmp_path, "child-")) == 2 and found, "2 running subtasks")
    (owner,) = wait_for(lambda: pids(tmp_path, "parent-"), "the parent running")
    # The parent lends its CPU back while it waits: the subtasks hold the other node's two.
    wait_for(lambda: free_cpus() == TOTAL_CPUS - 2, "the subtasks' CPUs leased")
    os.kill(owner, signal.SIGKILL)
    with pytest.raises(RayError):
        aioray.get(ref, timeout=DEADLINE_S)
    wait_for(lambda: free_cpus() == TOTAL_CPUS, "the dead owner's subtasks' CPUs coming back")
    for pid in children:
        wait_for(lambda pid=pid: not alive(pid), f"subtask worker {pid} exiting")
