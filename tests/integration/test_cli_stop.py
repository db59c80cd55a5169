"""`aioray start`/`aioray stop` with real processes: supervised nodes, crash-safe segments, a stop that
finds everything whatever the session files say.

Each test runs the CLI with a TMPDIR of its own (its own session folder) and a session tag of its own
(AIORAY_SESSION_TAG), so its `aioray stop` touches only its own daemons and segments, never those of
the other tests' clusters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aioray._private.common import process, segments

from ..conftest import SESSION_TAG
from .conftest import eventually

MiB = 1 << 20


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.tag = f"{SESSION_TAG}-c{uuid.uuid4().hex[:6]}"
        self.env = {**os.environ, "TMPDIR": str(tmp_path), process.TAG_ENV: self.tag}
        self.env.pop(process.TOKEN_ENV, None)
        self.sessions = tmp_path / "aioray-session"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aioray", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_head(self) -> dict[str, Any]:
        r = self.run("start", "--head", "--num-cpus", "1", "--object-store-memory", str(64 * MiB))
        assert r.returncode == 0, r.stderr
        assert "started; GCS at" in r.stdout and "auth token" in r.stdout
        return self.cluster()

    def add_node(self, *extra: str) -> dict[str, Any]:
        address = self.cluster()["gcs_address"]
        r = self.run("start", f"--address={address}", "--num-cpus", "1", "--object-store-memory", str(64 * MiB), *extra)  # fmt: skip
        assert r.returncode == 0, r.stderr
        short = r.stdout.split()[2]  # "aioray node <id12> started; ..."
        (path,) = self.sessions.glob(f"node-{short}*.json")
        info: dict[str, Any] = json.loads(path.read_text())
        return info

    def cluster(self) -> dict[str, Any]:
        info: dict[str, Any] = json.loads((self.sessions / "cluster.json").read_text())
        return info

    def daemons(self) -> dict[int, str]:
        return process.find_daemons(self.tag)

    def segments(self) -> set[str]:
        return {n for n in os.listdir(segments.SHM_DIR) if n.startswith(f"aioray-{self.tag}-")}


def pid_of(info: dict[str, Any], kind: str) -> int:
    (pid,) = [p for p in info["pids"] if process.daemon_kind(p) == kind]
    return int(pid)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    c = Cli(tmp_path)
    try:
        yield c
    finally:
        for pid in c.daemons():  # a test that stopped processes (SIGSTOP) and failed
            os.kill(pid, signal.SIGCONT)
        r = c.run("stop", "--force")
        assert r.returncode == 0, r.stdout + r.stderr
        assert c.daemons() == {}
        assert c.segments() == set()


def test_a_sigkilled_raylet_leaves_no_segment_on_a_supervised_node(cli: Cli) -> None:
    head = cli.start_head()
    node = cli.add_node()
    assert {head["store_name"], node["store_name"]} == cli.segments()
    assert segments.parse(node["store_name"]) == (cli.tag, pid_of(node, "raylet"), node["node_id"][:16])
    os.kill(pid_of(node, "raylet"), signal.SIGKILL)
    # Its supervisor unlinks the segment at once, then ends the node: no raylet restart.
    eventually(lambda: node["store_name"] not in cli.segments(), 5, "the segment being removed")
    eventually(lambda: process.is_gone(node["supervisor_pid"]), 10, "the node's supervisor exiting")
    assert not (cli.sessions / f"node-{node['node_id']}.json").exists()
    assert "exited with code -9" in (cli.sessions / "supervisor.log").read_text()
    assert cli.segments() == {head["store_name"]}
    assert cli.run("status").returncode == 0  # the head is unharmed
    r = cli.run("stop")
    assert r.returncode == 0, r.stderr
    assert "1 supervisor" in r.stdout and "1 gcs" in r.stdout and "1 raylet" in r.stdout
    assert cli.daemons() == {} and cli.segments() == set()
    assert not (cli.sessions / "cluster.json").exists()


def test_stop_finds_everything_whatever_the_session_files_say(cli: Cli) -> None:
    head = cli.start_head()
    node = cli.add_node("--prestart-workers")
    eventually(lambda: "worker" in cli.daemons().values(), 30, "a prestarted worker")
    (cli.sessions / "cluster.json").unlink()  # missing
    (cli.sessions / f"node-{node['node_id']}.json").write_text("{")  # garbled
    stale = {**node, "pids": [2**22 + 1, 2**22 + 2], "node_id": "f" * 32}
    (cli.sessions / f"node-{'f' * 32}.json").write_text(json.dumps(stale))  # of processes long gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = segments.segment_name(cli.tag, dead.pid, "e" * 16)  # as a SIGKILLed raylet leaves it
    Path(segments.SHM_DIR, orphan).write_bytes(b"\0" * 4096)
    (cli.sessions / f"spill-{'e' * 16}").mkdir()
    running = cli.daemons()
    assert sorted(running.values()) == [
        "dashboard", "gcs", "raylet", "raylet", "supervisor", "supervisor", "worker"
    ]  # fmt: skip

    r = cli.run("stop")

    assert r.returncode == 0, r.stderr
    assert f"stopped {len(running)} aioray process(es)" in r.stdout
    for kind in ("2 supervisor", "1 gcs", "1 dashboard", "2 raylet", "1 worker"):
        assert kind in r.stdout
    # The garbled file went with its supervisor, or as stale.
    assert orphan in r.stdout and f"node-{'f' * 32}.json" in r.stdout
    assert cli.daemons() == {} and cli.segments() == set()
    assert all(process.is_gone(p) for p in running)
    assert sorted(p.name for p in cli.sessions.glob("*.json")) == []
    assert not (cli.sessions / f"spill-{'e' * 16}").exists()
    assert head["store_name"] not in cli.segments()

    again = cli.run("stop")
    assert again.returncode == 0 and "no aioray processes" in again.stdout


@pytest.mark.parametrize("flags", [["--force"], ["--grace", "2"]])
def test_sigkill_after_the_grace_period(cli: Cli, flags: list[str]) -> None:
    head = cli.start_head()
    frozen = [head["supervisor_pid"], pid_of(head, "raylet")]
    for pid in frozen:  # SIGTERM stays pending on a stopped process; SIGKILL does not
        os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    r = cli.run("stop", *flags)
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    grace = 1.0 if flags == ["--force"] else 2.0
    assert grace <= took < grace + 8, took
    assert f"sent SIGKILL after {grace:g} s" in r.stdout
    assert "1 supervisor" in r.stdout.split("SIGKILL")[1] and "1 raylet" in r.stdout.split("SIGKILL")[1]
    # The raylet had no chance to remove its segment: the reclaim did.
    assert head["store_name"] in r.stdout
    assert cli.daemons() == {} and cli.segments() == set()
    assert all(process.is_gone(p) for p in frozen)


def test_the_supervisor_restarts_a_killed_gcs_on_its_port(cli: Cli) -> None:
    head = cli.start_head()
    assert cli.run("status").returncode == 0
    old = pid_of(head, "gcs")
    os.kill(old, signal.SIGKILL)

    def restarted() -> bool:
        try:
            pids = cli.cluster()["pids"]
        except (OSError, ValueError):
            return False
        return any(p != old and process.daemon_kind(p) == "gcs" for p in pids)

    eventually(restarted, 30, "a new GCS")
    assert cli.cluster()["gcs_address"] == head["gcs_address"]
    r = cli.run("status")
    assert r.returncode == 0, r.stderr
    assert f"cluster at {head['gcs_address']}" in r.stdout
    log = (cli.sessions / "supervisor.log").read_text()
    assert "restarting the GCS" in log and "is back" in log
    assert process.daemon_kind(pid_of(head, "raylet")) == "raylet"  # the node lives on


def test_stop_ends_the_cluster_but_a_crash_keeps_its_state_for_the_next_head(cli: Cli) -> None:
    head = cli.start_head()
    port = head["gcs_address"].rsplit(":", 1)[1]
    storage = cli.sessions / f"gcs-{port}.sqlite3"
    eventually(storage.exists, 10, "the GCS's default SQLite storage")
    os.kill(head["supervisor_pid"], signal.SIGKILL)  # a crash: the state stays for a restarted head
    eventually(lambda: cli.daemons() == {}, 15, "the daemons exiting")
    assert storage.exists()
    r = cli.run("start", "--head", "--port", port, "--num-cpus", "1", "--object-store-memory", str(64 * MiB))
    assert r.returncode == 0, r.stderr
    assert cli.run("stop").returncode == 0  # on purpose: the cluster ends, the next head starts afresh
    assert not storage.exists()


def test_a_sigkilled_supervisor_takes_its_daemons_down(cli: Cli) -> None:
    head = cli.start_head()
    os.kill(head["supervisor_pid"], signal.SIGKILL)
    # The GCS and the raylet read EOF on their lifelines and stop; the raylet removes its segment.
    eventually(lambda: cli.daemons() == {}, 15, "the daemons exiting")
    eventually(lambda: cli.segments() == set(), 5, "the segment being removed")
    r = cli.run("stop")
    assert r.returncode == 0, r.stderr
    assert "no aioray processes" in r.stdout and "1 stale session file(s): cluster.json" in r.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_block_runs_the_node_until_the_cli_goes(cli: Cli, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aioray", "start", "--head", "--block", "--num-cpus", "1",
         "--object-store-memory", str(64 * MiB)],
        env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        eventually(lambda: (cli.sessions / "cluster.json").exists(), 30, "the cluster file")
        info = cli.cluster()
        assert sorted(cli.daemons().values()) == ["dashboard", "gcs", "raylet", "supervisor"]
        assert cli.run("status").returncode == 0
        proc.send_signal(sig)
        assert proc.wait(30) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        eventually(lambda: cli.daemons() == {}, 15, "the daemons exiting")
        eventually(lambda: cli.segments() == set(), 5, "the segment being removed")
        # Stopped cleanly (through its lifeline after a SIGKILL): the supervisor removed its session file.
        eventually(lambda: not (cli.sessions / "cluster.json").exists(), 5, "the session file going")
        # A process in the middle of exiting shows no command line (so it is no daemon any more) but is
        # not a zombie yet: give it a moment.
        eventually(lambda: all(process.is_gone(p) for p in info["pids"]), 5, "the node's processes exiting")
    finally:
        proc.kill()
        proc.wait()


def test_the_heads_prometheus_targets_follow_the_nodes_and_go_with_the_cluster(cli: Cli) -> None:
    r = cli.run(
        "start", "--head", "--num-cpus", "1", "--object-store-memory", str(64 * MiB), "--prestart-workers"
    )
    assert r.returncode == 0, r.stderr
    head = cli.cluster()
    sd_file = Path(head["metrics_service_discovery_file"])
    assert sd_file.parent == cli.sessions and f"Prometheus targets (file_sd_configs): {sd_file}" in r.stdout
    assert f"metrics:            http://127.0.0.1:{head['metrics_export_port']}/metrics" in r.stdout

    def targets() -> list[str]:
        try:
            return sorted(g["targets"][0] for g in json.loads(sd_file.read_text()))
        except (OSError, ValueError):
            return []

    eventually(lambda: targets() == [f"127.0.0.1:{head['metrics_export_port']}"], 10, "the head listed")
    node = cli.add_node("--prestart-workers")
    both = sorted(f"127.0.0.1:{info['metrics_export_port']}" for info in (head, node))
    eventually(lambda: targets() == both, 10, "both nodes listed")
    status = cli.run("status").stdout
    assert all(f"metrics: http://{target}/metrics" in status for target in both), status
    logs = cli.sessions / "logs"
    folders = {logs / info["node_id"][:16] for info in (head, node)}

    def worker_logs() -> bool:  # each node's prestarted worker has its two files
        return all(len(list(f.glob("worker-*"))) == 2 for f in folders if f.exists()) and all(
            f.exists() for f in folders
        )

    eventually(worker_logs, 30, "the workers' log files")
    # Every process at once, as a power cut: nobody removes the file or the worker log folders
    # (all are stopped first, so that none sees another die and cleans up)...
    victims = cli.daemons()
    for pid in victims:
        os.kill(pid, signal.SIGSTOP)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: cli.daemons() == {}, 15, "the daemons dying")
    assert sd_file.exists()
    # ...until `aioray stop`.
    r = cli.run("stop")
    assert r.returncode == 0, r.stderr
    assert sd_file.name in r.stdout and not sd_file.exists()
    assert list(logs.iterdir()) == []
