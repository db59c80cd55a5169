"""Metrics and logs of a two-node cluster started with the CLI (`aioray start`).

- Worker output of every node reaches the driver of its job, prefixed as Ray does
  (``(name pid=N, ip=HOST)``), deduplicated across workers; ``log_to_driver=False`` keeps it in
  the nodes' log files, which ``aioray logs`` lists, prints and follows.
- A real Prometheus server (the distribution's ``prometheus``; ``make deps`` installs it) scrapes
  both nodes through the service discovery file the head keeps, and sees the tasks that ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import aioray
from aioray._private import node as node_mod
from aioray._private import worker_api
from aioray._private.common import process, rpc

from .multinode import Nodes, node_ids_by_resource

DEADLINE_S = 90.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    nodes = Nodes()
    try:
        nodes.start_head({"head": 1}, num_cpus=2)
        nodes.add_node("second", {"second": 1}, num_cpus=2)
        aioray.init(address=nodes.address, log_to_driver=False)
        nodes.wait_alive(2)
        yield nodes
    finally:
        aioray.shutdown()
        nodes.stop()


def cluster_env() -> dict[str, str]:
    """This cluster's token for the processes the tests start (the session folder's cluster.json may
    be another test session's by now)."""
    conn = worker_api.current()
    assert conn is not None
    return {**os.environ, process.TOKEN_ENV: conn.core.token}


def run_driver(
    cluster: Nodes, body: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs a driver script connected to the cluster; its stdout and stderr, as a user would see them."""
    script = f"import sys, aioray\nADDRESS = {cluster.address!r}\n" + body
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**cluster_env(), **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def logs_cli(cluster: Nodes, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "aioray", "logs", "--address", cluster.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster_env(),
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


PRINTING_DRIVER = """
aioray.init(address=ADDRESS)

@aioray.remote(resources={"second": 0.1})
def talk():
    print("hello from the second node")
    print("and a warning", file=sys.stderr)
    return 1

@aioray.remote(resources={"second": 0.1})
def nested_talk():
    print("hello from a nested task")
    return 2

@aioray.remote(resources={"head": 0.1})
def outer():
    return aioray.get(nested_talk.remote())

@aioray.remote(resources={"second": 0.1}, num_cpus=0)
class Greeter:
    def greet(self):
        print("hello from an actor")
        return 3

assert aioray.get([talk.remote(), outer.remote(), Greeter.remote().greet.remote()], timeout=60) == [1, 2, 3]
print("DRIVER DONE", flush=True)
aioray.shutdown()
"""


def test_output_of_a_task_on_another_node_reaches_the_driver_with_its_prefix(cluster: Nodes) -> None:
    proc = run_driver(cluster, PRINTING_DRIVER)
    out, err = proc.stdout, proc.stderr
    # Another node than the driver's (which attached to the head): its address is in the prefix.
    assert re.search(r"^\(talk pid=\d+, ip=127\.0\.0\.1\) hello from the second node$", out, re.M), out
    assert re.search(r"^\(talk pid=\d+, ip=127\.0\.0\.1\) and a warning$", err, re.M), err
    # A task submitted by a task belongs to the same job: its output comes to this driver too.
    assert re.search(r"^\(nested_talk pid=\d+, ip=127\.0\.0\.1\) hello from a nested task$", out, re.M), out
    assert re.search(r"^\(Greeter pid=\d+, ip=127\.0\.0\.1\) hello from an actor$", out, re.M), out
    assert "DRIVER DONE" in out


def test_another_drivers_output_does_not_reach_this_one(cluster: Nodes) -> None:
    """The test process is a driver too (log_to_driver=False); a second driver that prints nothing
    must not get the first one's lines."""
    quiet = run_driver(cluster, "aioray.init(address=ADDRESS)\naioray.shutdown()\n")
    assert "hello" not in quiet.stdout + quiet.stderr


def test_repeated_lines_of_many_workers_are_deduplicated(cluster: Nodes) -> None:
    body = """
aioray.init(address=ADDRESS)

@aioray.remote(num_cpus=0)
class Chatty:
    def say(self, i):
        print(f"loading shard {i} of the same model")
        return i

actors = [Chatty.remote() for _ in range(4)]  # four processes
assert sorted(aioray.get([a.say.remote(i) for i, a in enumerate(actors)], timeout=60)) == [0, 1, 2, 3]
aioray.shutdown()
"""
    # A long window: every held-back line is printed when the driver disconnects, counted.
    proc = run_driver(cluster, body, env={"AIORAY_DEDUP_LOGS_AGG_WINDOW_S": "600"})
    lines = [line for line in proc.stdout.splitlines() if "of the same model" in line]
    assert len(lines) == 2, proc.stdout
    assert re.fullmatch(
        r"\(Chatty pid=\d+(, ip=127\.0\.0\.1)?\) loading shard \d of the same model", lines[0]
    )
    assert re.search(r"loading shard \d of the same model \[repeated 3x across cluster\]", lines[1]), lines

    undeduplicated = run_driver(cluster, body, env={"AIORAY_DEDUP_LOGS": "0"})
    assert undeduplicated.stdout.count("of the same model") == 4


def worker_log_of(cluster: Nodes, node_id: str, pid: int) -> str:
    """The name of the .out file of the worker with `pid` on the node, from `aioray logs`."""
    listing = logs_cli(cluster, "--node-id", node_id).stdout
    names = re.findall(r"^\s+(worker-[0-9a-f]+-(\d+)\.out)\s", listing, re.M)
    found = [name for name, p in names if int(p) == pid]
    assert len(found) == 1, listing
    return found[0]


def test_without_log_to_driver_output_stays_in_the_nodes_log_files(cluster: Nodes) -> None:
    body = """
import os
aioray.init(address=ADDRESS, log_to_driver=False)

@aioray.remote(resources={"second": 0.1})
def quiet():
    print("kept in the log file only")
    return os.getpid()

print("PID", aioray.get(quiet.remote(), timeout=60))
aioray.shutdown()
"""
    proc = run_driver(cluster, body)
    assert "kept in the log file" not in proc.stdout + proc.stderr
    pid = int(re.search(r"^PID (\d+)$", proc.stdout, re.M).group(1))  # type: ignore[union-attr]
    second = node_ids_by_resource()["second"]
    name = worker_log_of(cluster, second, pid)
    listing = logs_cli(cluster, "--node-id", second[:8]).stdout
    assert f"node {second[:12]}" in listing and name.replace(".out", ".err") in listing
    text = logs_cli(cluster, "--node-id", second, name, "--tail", "-1").stdout
    assert ":task_name:quiet" in text and "kept in the log file only" in text
    assert logs_cli(cluster, "--node-id", second, name, "--tail", "1").stdout == "kept in the log file only\n"
    assert logs_cli(cluster, "--node-id", second, name[:-2], "--tail", "1").stdout.endswith(
        "only\n"
    )  # a prefix
    assert logs_cli(cluster, "--node-id", second, "worker-*.err").stdout.count(".err") >= 1
    head = node_ids_by_resource()["head"]
    assert f"node {head[:12]}" in logs_cli(cluster).stdout  # the head is the default
    missing = logs_cli(cluster, "--node-id", second, "no-such-file", check=False)
    assert missing.returncode == 1 and "no log file" in missing.stderr


def test_aioray_logs_follows_a_file(cluster: Nodes) -> None:
    @aioray.remote(resources={"second": 0.1}, num_cpus=0)
    class Speaker:
        def pid(self) -> int:
            return os.getpid()

        def say(self, text: str) -> None:
            print(text, flush=True)

    speaker = Speaker.remote()  # type: ignore[attr-defined]
    pid = aioray.get(speaker.pid.remote(), timeout=60)
    aioray.get(speaker.say.remote("before following"), timeout=60)
    second = node_ids_by_resource()["second"]
    name = worker_log_of(cluster, second, pid)
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aioray",
            "logs",
            "--address",
            cluster.address,
            "--node-id",
            second,
            name,
            "-f",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cluster_env(),
    )
    try:
        seen = b""
        asked = False
        deadline = time.monotonic() + DEADLINE_S
        while b"after following" not in seen:
            assert time.monotonic() < deadline, seen
            assert follower.stdout is not None
            ready, _, _ = select.select([follower.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(follower.stdout.fileno(), 4096)
                assert chunk, f"aioray logs -f ended: {follower.stderr.read() if follower.stderr else b''!r}"
                seen += chunk
            if b"before following" in seen and not asked:
                aioray.get(speaker.say.remote("after following"), timeout=60)
                asked = True
        assert seen.index(b"before following") < seen.index(b"after following")
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(15)
        except subprocess.TimeoutExpired:
            follower.kill()
            follower.wait()
        aioray.kill(speaker)
    assert follower.returncode == 0


# -- Prometheus ------------------------------------------------------------------------------------
class Prometheus:
    """A real Prometheus server reading the head's service discovery file, on a free port, with its
    configuration and data in a temporary folder (all removed on exit)."""

    def __init__(self, sd_file: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("the prometheus server is not installed: `make deps` installs it")
        self.folder = tempfile.mkdtemp(prefix="aioray-prometheus-")
        self.port = rpc.free_port()
        config = os.path.join(self.folder, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: aioray\n    file_sd_configs:\n"
                f"      - files: [{json.dumps(sd_file)}]\n        refresh_interval: 1s\n"
            )
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(self.folder, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.folder, "prometheus.log"), "wb"),
        )  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def wait_for(self, what: str, check: Any) -> Any:
        """Polls until `check()` gives something truthy (Prometheus scrapes every second)."""
        deadline = time.monotonic() + DEADLINE_S
        last: Any = None
        while True:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(OSError, ValueError):
                last = check()
                if last:
                    return last
            assert time.monotonic() < deadline, f"{what}: never happened (last seen: {last!r})\n{self.log()}"
            time.sleep(0.5)

    def log(self) -> str:
        with open(os.path.join(self.folder, "prometheus.log"), errors="replace") as f:
            return f.read()[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def test_prometheus_scrapes_both_nodes_through_the_service_discovery_file(cluster: Nodes) -> None:
    sd_file = node_mod.service_discovery_file(node_mod.session_dir(), cluster.port)
    groups = json.loads(open(sd_file).read())
    nodes = {n["NodeID"]: n for n in aioray.nodes() if n["Alive"]}
    assert {g["labels"]["aioray_node_id"] for g in groups} == set(nodes)
    assert sorted(g["targets"][0] for g in groups) == sorted(
        f"127.0.0.1:{n['MetricsExportPort']}" for n in nodes.values()
    )

    @aioray.remote(num_cpus=0.1)
    def square(x: int) -> int:
        return x * x

    on_each = [
        square.options(resources={which: 0.1}).remote(i)  # type: ignore[attr-defined]
        for i in range(10)
        for which in ("head", "second")
    ]
    assert sum(aioray.get(on_each, timeout=60)) == 2 * sum(i * i for i in range(10))

    prometheus = Prometheus(sd_file)
    try:

        def targets_up() -> bool:
            active = prometheus.api("targets")["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active)

        prometheus.wait_for("both nodes scraped", targets_up)

        def finished() -> float:
            result = prometheus.query('sum(aioray_tasks_finished_total{kind="task"})')
            return float(result[0]["value"][1]) if result else 0.0

        prometheus.wait_for("the 20 tasks counted as finished", lambda: finished() >= 20)
        # Every node ran some of them, on its own workers.
        executed = prometheus.wait_for(
            "tasks run on both nodes",
            lambda: len(r := prometheus.query('aioray_tasks_executed_total{status="ok"} > 0')) == 2 and r,
        )
        assert {r["metric"]["aioray_node_id"] for r in executed} == set(nodes)
        # The head's page carries the GCS's RPC latencies; every node its store and workers.
        gcs_calls = prometheus.query('aioray_rpc_server_latency_seconds_count{component="gcs"}')
        assert gcs_calls and all(r["metric"]["aioray_is_head"] == "true" for r in gcs_calls)
        assert len(prometheus.query("aioray_object_store_capacity_bytes")) == 2
        assert len(prometheus.query("aioray_leases_granted_total")) == 2
    finally:
        prometheus.stop()


def test_an_embedded_cluster_serves_metrics_on_the_port_it_was_given() -> None:
    """The async API's local cluster: its node's /metrics on the port asked for, with the tasks run."""
    port = rpc.free_port()
    script = f"""
import asyncio, time, urllib.request
import aioray

@aioray.remote
def one():
    print("not printed here: log_to_driver=False")
    return 1

async def main():
    async with aioray.Cluster(num_cpus=1, log_to_driver=False, metrics_export_port={port}) as cluster:
        assert sum(await asyncio.gather(*[one.remote() for _ in range(5)])) == 5
        assert aioray.nodes()[0]["MetricsExportPort"] == {port}
        deadline = time.monotonic() + 60
        while True:  # the driver and the worker report their counts to the node every second
            page = await asyncio.to_thread(
                lambda: urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            )
            wanted = ('aioray_tasks_finished_total{{kind="task"}} 5', 'aioray_tasks_executed_total{{status="ok"}} 5')
            if all(w in page for w in wanted):
                break
            assert time.monotonic() < deadline, page
            await asyncio.sleep(0.2)
        print(page)

asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "not printed here" not in proc.stdout + proc.stderr
    assert "# TYPE aioray_tasks_finished_total counter" in proc.stdout
    assert 'aioray_tasks_executed_total{status="ok"} 5' in proc.stdout
    assert re.search(r'^aioray_workers\{state="idle"\} \d+$', proc.stdout, re.M), proc.stdout
