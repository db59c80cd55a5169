"""Task events, the state API and the timeline on three nodes started with the CLI.

The seed walkthrough (seed 000): task A, on node a, submits B and C; B makes a large X on node b;
C needs X, runs on node c and returns a small Y. Every step of it is read back from the events the
owners, raylets and workers recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

import aioray
from aioray._private import worker_api
from aioray._private.common import process
from aioray.util import state
from aioray.util.placement_group import placement_group, remove_placement_group

from .conftest import eventually
from .multinode import MiB, Nodes, connected, node_ids_by_resource

X_MIB = 20


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    with connected({"a": 1}, {"b": {"b": 1}, "c": {"c": 1}}) as nodes:
        yield nodes


def here() -> str:
    return aioray.get_runtime_context().get_node_id()


@aioray.remote(resources={"b": 0.5})
def walk_b(mib: int) -> Any:
    return np.full(mib * MiB, 7, dtype=np.uint8)  # the large X, stored on node b


@aioray.remote(resources={"c": 0.5})
def walk_c(x: Any) -> tuple[int, int]:
    return int(x[0]), x.nbytes  # the small Y


@aioray.remote(resources={"a": 0.5})
def walk_a(mib: int) -> tuple[int, int]:
    x = walk_b.remote(mib)
    return aioray.get(walk_c.remote(x), timeout=120)


def only(name: str) -> Mapping[str, Any]:
    (task,) = state.list_tasks(filters=[("name", "=", name)], detail=True)
    return task


def steps(task: Mapping[str, Any]) -> list[str]:
    return [e["type"] for e in task["events"]]


def first(task: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next(e for e in task["events"] if e["type"] == kind)


def in_order(seen: Sequence[str], expected: Sequence[str]) -> bool:
    """`expected` appears in `seen` in this order (other events may come between)."""
    it = iter(seen)
    return all(kind in it for kind in expected)


def test_the_seed_walkthrough_reads_step_by_step_from_the_events(cluster) -> None:
    ids = node_ids_by_resource()
    node_a, node_b, node_c = ids["a"], ids["b"], ids["c"]
    assert aioray.get(walk_a.remote(X_MIB), timeout=120) == (7, X_MIB * MiB)

    expected = {
        "walk_a": ["SUBMITTED", "LEASE_REQUESTED", "LEASE_GRANTED", "RUNNING", "RESULT_INLINED", "FINISHED"],
        "walk_b": ["SUBMITTED", "LEASE_REQUESTED", "SPILLBACK", "LEASE_REQUESTED", "LEASE_GRANTED", "RUNNING",
                   "RESULT_STORED", "FINISHED", "RESULT_FREED"],
        "walk_c": ["SUBMITTED", "ARGS_RESOLVED", "LEASE_REQUESTED", "SPILLBACK", "LEASE_REQUESTED", "LEASE_GRANTED",
                   "ARGS_PULLED", "RUNNING", "RESULT_INLINED", "FINISHED"],
    }  # fmt: skip

    def complete() -> bool:
        # Each process sends its events on its own timer: wait until every recorder's are in.
        # (X is freed by its owner, A's worker, once A returned and nothing held X any more.)
        tasks = {t["name"]: t for t in state.list_tasks(detail=True, limit=1000)}
        return all(n in tasks and set(kinds) <= set(steps(tasks[n])) for n, kinds in expected.items())

    eventually(complete, timeout=30, what="the walkthrough's events reached the GCS")
    a, b, c = only("walk_a"), only("walk_b"), only("walk_c")

    # A: submitted by the driver, leased and run on node a, its small result inlined.
    assert in_order(steps(a), expected["walk_a"])
    assert first(a, "SUBMITTED")["source"] == "driver"
    assert first(a, "LEASE_GRANTED")["node_id"] == node_a
    assert a["node_id"] == node_a and first(a, "RUNNING")["node_id"] == node_a

    # B: submitted by A, asked of A's raylet (node a), spilled back to node b, run there, X stored
    # in node b's store, and freed by its owner, A, once nobody needed it.
    assert b["parent_task_id"] == a["task_id"] and c["parent_task_id"] == a["task_id"]
    assert in_order(steps(b), expected["walk_b"])
    submitted_b = first(b, "SUBMITTED")
    assert submitted_b["source"] == "worker" and submitted_b["source_worker_id"] == a["worker_id"]
    spill = first(b, "SPILLBACK")
    assert (spill["from_node_id"], spill["to_node_id"]) == (node_a, node_b)
    assert [e["node_id"] for e in b["events"] if e["type"] == "LEASE_REQUESTED"] == [node_a, node_b]
    granted = first(b, "LEASE_GRANTED")
    assert granted["node_id"] == node_b and granted["worker_id"] == b["worker_id"]
    stored = first(b, "RESULT_STORED")
    assert stored["node_id"] == node_b and stored["bytes"] >= X_MIB * MiB
    x_id = stored["object_id"]
    freed = first(b, "RESULT_FREED")
    assert freed["object_id"] == x_id and freed["node_id"] == node_b
    assert freed["source_worker_id"] == a["worker_id"], "the owner frees it"

    # C: waits for X, is asked of the node holding X (b: locality), spilled back to node c, pulls X
    # from b to c, runs on c and returns Y inline.
    assert in_order(steps(c), expected["walk_c"])
    assert [e["node_id"] for e in c["events"] if e["type"] == "LEASE_REQUESTED"] == [node_b, node_c]
    spill = first(c, "SPILLBACK")
    assert (spill["from_node_id"], spill["to_node_id"]) == (node_b, node_c)
    pulled = first(c, "ARGS_PULLED")
    assert pulled["object_id"] == x_id
    assert (pulled["from_node_id"], pulled["to_node_id"]) == (node_b, node_c)
    assert pulled["bytes"] == stored["bytes"]
    inlined = first(c, "RESULT_INLINED")
    assert inlined["node_id"] == node_c and inlined["bytes"] < 1024
    assert c["node_id"] == node_c and c["state"] == "FINISHED"
    # Each event says when it happened: one clock here, so the steps are in time order too.
    assert first(b, "RESULT_STORED")["time"] <= first(c, "ARGS_PULLED")["time"] <= first(c, "RUNNING")["time"]


def test_the_timeline_has_each_execution_on_its_node_and_worker(cluster) -> None:
    eventually(
        lambda: len(state.list_tasks(filters=[("name", "=", "walk_c")])) == 1, 60, "the walkthrough ran"
    )
    trace = aioray.timeline()
    assert trace is not None
    json.dumps(trace)  # plain JSON
    processes = {e["pid"]: e["args"]["name"] for e in trace if e["ph"] == "M" and e["name"] == "process_name"}
    runs = {e["name"]: e for e in trace if e["ph"] == "X"}
    ids = node_ids_by_resource()
    for name, node in (("walk_a", "a"), ("walk_b", "b"), ("walk_c", "c")):
        assert processes[runs[name]["pid"]] == f"node {ids[node][:12]}"
    assert len({runs[n]["pid"] for n in ("walk_a", "walk_b", "walk_c")}) == 3
    phases = [e for e in trace if e["ph"] in ("b", "e") and e["name"].startswith("walk_c")]
    assert {e["name"] for e in phases} >= {
        "walk_c: wait for arguments",
        "walk_c: wait for a lease",
        "walk_c: dispatch",
    }


def test_state_api_lists_the_cluster(cluster, tmp_path, capsys) -> None:
    ids = node_ids_by_resource()
    nodes = state.list_nodes(filters=[("state", "=", "alive")])
    assert {n["node_id"] for n in nodes} == set(ids.values())
    assert state.get_node(ids["b"])["resources_total"]["b"] == 1
    assert [n["node_id"] for n in state.list_nodes(filters=[("is_head_node", "=", "true")])] == [ids["a"]]
    assert len(state.list_nodes(limit=2)) == 2

    @aioray.remote(resources={"b": 0.1})
    class Keeper:
        def __init__(self) -> None:
            self.kept: list[Any] = []

        def keep(self, refs: list[Any]) -> int:
            self.kept.extend(refs)
            return len(self.kept)

    keeper = Keeper.options(name="keeper").remote()
    big = aioray.put(np.zeros(2 * MiB, dtype=np.uint8))
    assert aioray.get(keeper.keep.remote([big]), timeout=60) == 1
    (actor,) = state.list_actors(filters=[("name", "=", "keeper")])
    assert actor["class_name"] == "Keeper" and actor["state"] == "ALIVE" and actor["node_id"] == ids["b"]
    assert state.get_actor(actor["actor_id"])["pid"] == actor["pid"]
    assert state.summarize_actors()["cluster"]["summary"]["Keeper"]["state_counts"] == {"ALIVE": 1}
    # `_explain` says how many rows each call saw, the get_/summarize_ calls included.
    capsys.readouterr()
    state.get_actor(actor["actor_id"], _explain=True)
    state.get_node(ids["b"], _explain=True)
    state.summarize_actors(_explain=True)
    explained = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in explained] == ["list_actors", "list_nodes", "list_actors"]
    assert all(" shown " in line for line in explained)

    workers = state.list_workers()
    assert {w["node_id"] for w in workers if w["worker_type"] == "WORKER"} == set(ids.values())
    assert any(w["worker_type"] == "DRIVER" and w["pid"] == os.getpid() and w["is_alive"] for w in workers)
    assert actor["pid"] in {w["pid"] for w in workers}
    (job,) = state.list_jobs(filters=[("status", "=", "RUNNING")])
    assert job["type"] == "DRIVER" and job["driver_info"]["pid"] == str(os.getpid())

    # The driver owns `big` (pinned in node a's store) and the keeper borrows it.
    objects = state.list_objects(filters=[("object_id", "=", big.hex())], detail=True)
    mine = next(o for o in objects if o["is_owner"])
    assert (mine["type"], mine["pid"], mine["reference_type"]) == ("DRIVER", os.getpid(), "LOCAL_REFERENCE")
    assert mine["storage"] == "PINNED" and mine["node_id"] == ids["a"] and mine["object_size"] >= 2 * MiB
    assert mine["borrowers"] == 1
    theirs = next(o for o in objects if not o["is_owner"])
    assert theirs["pid"] == actor["pid"] and theirs["reference_type"] == "LOCAL_REFERENCE"
    summary = state.summarize_objects()["cluster"]
    assert summary["total_objects"] >= 2 and summary["total_size_mb"] >= 2

    group = placement_group([{"CPU": 0.1}], name="walk-group")
    assert group.wait(60)
    (row,) = state.list_placement_groups(filters=[("name", "=", "walk-group")], detail=True)
    assert row["state"] == "CREATED" and row["bundles"][0]["unit_resources"] == {"CPU": 0.1}
    remove_placement_group(group)
    aioray.kill(keeper)

    with pytest.raises(ValueError, match="not supported"):
        state.list_tasks(filters=[("no_such_column", "=", "1")])
    with pytest.raises(ValueError, match="predicate"):
        state.list_nodes(filters=[("state", ">", "1")])


def test_failures_retries_and_cancellation_are_recorded(cluster, tmp_path) -> None:
    marker = tmp_path / "first"

    @aioray.remote(resources={"a": 0.1}, max_retries=1, retry_exceptions=True)
    def flaky(path: str) -> str:
        if not os.path.exists(path):
            open(path, "w").close()
            raise ValueError("first attempt")
        return "second"

    @aioray.remote(resources={"a": 0.1}, max_retries=0)
    def broken() -> None:
        raise KeyError("always")

    @aioray.remote(resources={"a": 0.1})
    def slow() -> None:
        time.sleep(60)

    ref = flaky.remote(str(marker))
    assert aioray.get(ref, timeout=60) == "second"
    with pytest.raises(KeyError):
        aioray.get(broken.remote(), timeout=60)
    pending = slow.remote()
    eventually(
        lambda: (t := state.get_task(pending)) is not None and t["state"] == "RUNNING", 30, "slow runs"
    )
    aioray.cancel(pending)

    def attempts() -> list[Any]:
        found = state.get_task(ref)
        return found if isinstance(found, list) else []

    def settled() -> bool:
        # Each process sends its events once a second: the owner's end of the first attempt may come
        # after the worker's of the second.
        found = sorted(attempts(), key=lambda t: t["attempt_number"])
        return [t["state"] for t in found] == ["FAILED", "FINISHED"]

    eventually(settled, 30, "both attempts")
    first_try, second_try = sorted(attempts(), key=lambda t: t["attempt_number"])
    assert (first_try["state"], first_try["error_type"]) == ("FAILED", "TASK_EXECUTION_EXCEPTION")
    assert steps(first_try)[-1] == "RETRIED" and "first attempt" in first_try["error_message"]
    assert steps(second_try)[0] == "SUBMITTED" and second_try["attempt_number"] == 1
    eventually(lambda: state.list_tasks(filters=[("name", "=", "broken")]) != [], 30, "broken's events")
    (failed,) = state.list_tasks(filters=[("name", "=", "broken")], detail=True)
    assert failed["state"] == "FAILED" and "KeyError" in failed["error_message"]
    eventually(lambda: state.get_task(pending)["state"] == "FAILED", 30, "the cancelled task's events")
    cancelled = state.get_task(pending)
    assert cancelled["error_type"] == "TASK_CANCELLED" and steps(cancelled)[-1] == "CANCELLED"
    summary = state.summarize_tasks()["cluster"]
    assert summary["summary"]["flaky"]["state_counts"] == {"FAILED": 1, "FINISHED": 1}


def cli(cluster: Nodes, *args: str) -> subprocess.CompletedProcess[str]:
    # The token explicitly: the machine's cluster file may name another session's cluster by now.
    token = worker_api.require().core.token
    return subprocess.run(
        [sys.executable, "-m", "aioray", *args, "--address", cluster.address],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, process.TOKEN_ENV: token},
    )


def test_the_cli_lists_gets_summarizes_and_writes_the_timeline(cluster, tmp_path) -> None:
    eventually(
        lambda: len(state.list_tasks(filters=[("name", "=", "walk_c")])) == 1, 60, "the walkthrough ran"
    )
    (c,) = state.list_tasks(filters=[("name", "=", "walk_c")])
    nodes = cli(cluster, "list", "nodes")
    assert nodes.returncode == 0, nodes.stderr
    assert "NODE_ID" in nodes.stdout and nodes.stdout.count("ALIVE") == 3
    listed = cli(cluster, "list", "tasks", "--filter", "name=walk_c", "--detail")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert "ARGS_PULLED" in [e["type"] for e in row["events"]]
    got = cli(cluster, "get", "task", c["task_id"])
    assert got.returncode == 0 and json.loads(got.stdout)["task_id"] == c["task_id"]
    assert cli(cluster, "get", "task", "00" * 16).returncode == 1
    summary = cli(cluster, "summary", "tasks")
    assert summary.returncode == 0 and "walk_c" in summary.stdout and "FINISHED" in summary.stdout
    memory = cli(cluster, "memory")
    assert memory.returncode == 0 and "driver pid=" in memory.stdout, memory.stdout
    bad = cli(cluster, "list", "tasks", "--filter", "bogus=1")
    assert bad.returncode == 1 and "bogus" in bad.stderr
    out = tmp_path / "trace.json"
    written = cli(cluster, "timeline", "--output", str(out))
    assert written.returncode == 0, written.stderr
    assert any(e.get("name") == "walk_c" and e["ph"] == "X" for e in json.loads(out.read_text()))
