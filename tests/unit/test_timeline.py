"""The timeline's Chrome trace: shape, lanes and phases (what Perfetto needs to open it)."""

from __future__ import annotations

import json
from typing import Any

from aioray._private.timeline import trace_events

NODE_A, NODE_B = "aa" * 16, "bb" * 16


def event(
    kind: str, at: float, node: str, pid: int = 0, worker: str | None = None, **fields: Any
) -> dict[str, Any]:
    out = {"type": kind, "time": at, "node_id": node, "source": "worker", **fields}
    if pid:
        out["source_pid"] = pid
    if worker:
        out["source_worker_id"] = worker
    return out


def task(name: str, task_id: str, start: float, end: float, worker_pid: int = 100) -> dict[str, Any]:
    return {
        "task_id": task_id, "attempt_number": 0, "name": name, "state": "FINISHED", "type": "NORMAL_TASK",
        "func_or_class_name": name, "error_type": None,
        "events": [
            event("SUBMITTED", start - 0.5, NODE_A, 1),
            event("ARGS_RESOLVED", start - 0.4, NODE_A, 1),
            event("LEASE_GRANTED", start - 0.2, NODE_B),
            event("RUNNING", start, NODE_B, worker_pid, "ww" * 16),
            event("RESULT_INLINED", end, NODE_B, worker_pid, "ww" * 16, bytes=10),
            event("FINISHED", end + 0.01, NODE_A, 1),
        ],
    }  # fmt: skip


def check_shape(trace: list[dict[str, Any]]) -> None:
    json.loads(json.dumps(trace))
    opened: dict[tuple[int, str], int] = {}
    for e in trace:
        assert e["ph"] in ("X", "M", "b", "e") and isinstance(e["name"], str)
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "X":
            assert e["ts"] >= 0 and e["dur"] >= 0 and isinstance(e["args"], dict)
        if e["ph"] in ("b", "e"):
            key = (e["pid"], e["id"])
            opened[key] = opened.get(key, 0) + (1 if e["ph"] == "b" else -1)
            assert e["cat"] == "scheduling"
    assert all(v == 0 for v in opened.values()), "every async slice ends"


def test_each_execution_is_a_complete_event_on_its_node_and_worker() -> None:
    trace = trace_events([task("f", "01" * 16, 10.0, 10.5), task("g", "02" * 16, 11.0, 11.25)])
    check_shape(trace)
    runs = [e for e in trace if e["ph"] == "X"]
    assert [(e["name"], e["ts"], e["dur"]) for e in runs] == [("f", 10e6, 0.5e6), ("g", 11e6, 0.25e6)]
    names = {
        (e["pid"], e.get("tid")): e["args"]["name"] for e in trace if e["ph"] == "M" and "name" in e["args"]
    }
    assert names[(runs[0]["pid"], 0)] == f"node {NODE_B[:12]}"
    assert names[(runs[0]["pid"], 100)] == f"worker {'ww' * 6} pid 100"
    assert runs[0]["tid"] == runs[1]["tid"] == 100, "one lane: they did not overlap"
    phases = [e["name"] for e in trace if e["ph"] == "b" and e["id"].startswith("01")]
    assert phases == ["f: wait for arguments", "f: wait for a lease", "f: dispatch"]


def test_overlapping_executions_of_one_worker_get_lanes_of_their_own() -> None:
    trace = trace_events([task("m1", "01" * 16, 10.0, 12.0), task("m2", "02" * 16, 11.0, 13.0)])
    check_shape(trace)
    lanes = [e["tid"] for e in trace if e["ph"] == "X"]
    assert lanes[0] != lanes[1]


def test_a_task_that_never_ran_has_only_its_scheduling_phases() -> None:
    pending = task("p", "03" * 16, 10.0, 10.5)
    pending["events"] = pending["events"][:2]
    trace = trace_events([pending])
    check_shape(trace)
    assert not [e for e in trace if e["ph"] == "X"]
    assert [e["name"] for e in trace if e["ph"] == "b"] == ["p: wait for arguments"]
