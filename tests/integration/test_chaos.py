"""Chaos in the suite: a map/reduce DAG with 2 MiB outputs while workers, an actor and a node die.

Every result comes back exact or as a typed RayError, within its timeout; afterwards `aioray stop`
reclaims the SIGKILLed node's segment and the leak checks find no process or segment of ours.
"""

from __future__ import annotations

import os
import subprocess
import sys

from . import chaos


def test_a_dag_survives_random_worker_actor_and_node_kills(tmp_path) -> None:
    report = chaos.run(str(tmp_path), seconds=6, maps=60, reducers=15, kill_node_after_s=3.0, seed=13)
    print(report.summary())
    assert report.node_kills == 1 and report.worker_kills >= 3, report.summary()
    assert report.exact + sum(report.typed_errors.values()) == report.rounds * (15 + 4)
    assert report.exact > 0, report.summary()
    # The node was SIGKILLed with its raylet: its segment is reclaimed by the next `aioray stop`.
    stop = subprocess.run(
        [sys.executable, "-m", "aioray", "stop"], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
