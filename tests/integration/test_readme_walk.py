"""The README's walk runs as written: a three-node CLI cluster, the seed walkthrough submitted as a job,
the dashboard showing the nodes and the tasks, the task events telling C's story, and `aioray stop`.

Its own TMPDIR and session tag (so `aioray stop` touches only this cluster) and free ports in place of
the README's 6379 and 8265.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from aioray._private.common import process, rpc

from ..conftest import SESSION_TAG

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 90.0


def walk_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walk -->\n```sh\n(.*?)```", text, re.S)
    assert block is not None, "the README has no walk"
    return [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        return json.load(r)


def test_the_readme_walk(tmp_path: Path) -> None:
    gcs_port, dashboard_port = rpc.free_port("127.0.0.1"), rpc.free_port("127.0.0.1")
    tag = f"{SESSION_TAG}-w{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "TMPDIR": str(tmp_path), process.TAG_ENV: tag}
    env.pop(process.TOKEN_ENV, None)
    commands = [
        c.replace("6379", str(gcs_port)).replace("8265", str(dashboard_port)) for c in walk_commands()
    ]
    assert commands[-1] == "aioray stop"
    outputs: dict[str, str] = {}

    def run(command: str) -> None:
        argv = shlex.split(command)
        assert argv[0] == "aioray"
        r = subprocess.run(
            [sys.executable, "-m", "aioray", *argv[1:]],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S * 2,
        )
        assert r.returncode == 0, f"{command}:\n{r.stdout}\n{r.stderr}"
        outputs[argv[1]] = r.stdout

    try:
        *starts_and_job, listing = commands[:-1]
        assert listing.startswith("aioray list tasks")
        for command in starts_and_job:
            run(command)
        assert "Y = 8388608" in outputs["job"] and "succeeded" in outputs["job"], outputs["job"]
        info = json.loads((tmp_path / "aioray-session" / "cluster.json").read_text())
        token, url = info["token"], info["dashboard_url"]

        # The dashboard's overview has the three nodes; its task rows have C with its events (they reach
        # the GCS within a flush interval of the job's end).
        status = get_json(f"{url}/api/cluster_status")
        assert status["alive_nodes"] == 3, status
        deadline = time.monotonic() + DEADLINE_S
        while True:
            rows = get_json(f"{url}/api/v0/tasks?name=consume&detail=1", token)["result"]
            events = [e["type"] for e in rows[0]["events"]] if rows else []
            if rows and rows[0]["state"] == "FINISHED" and "ARGS_PULLED" in events:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.2)
        assert "SPILLBACK" in events, events  # A's node sent C on to the node with "c"

        run(listing)  # the same story from the CLI
        for event in ("SUBMITTED", "SPILLBACK", "ARGS_PULLED", "LEASE_GRANTED", "RUNNING", "FINISHED"):
            assert event in outputs["list"], outputs["list"]
    finally:
        r = subprocess.run(
            [sys.executable, "-m", "aioray", "stop", "--force"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert process.find_daemons(tag) == {}
