"""``aioray.timeline()``: the task events as a Chrome trace (JSON), which Perfetto and chrome://tracing open.

One process per node (``pid``: the node's index, named by ``process_name`` metadata), one thread
per worker lane (``tid``: the worker's OS pid, or more lanes for a worker running several tasks at
once, as an async or threaded actor does, so that slices on one lane never overlap). Each task
attempt that ran is one complete event (``ph: X``) on its worker's lane, from RUNNING to the end of
its execution (the worker's RESULT_* event, else how its owner saw it end). Its scheduling phases,
which overlap freely with other tasks', are async slices (``ph: b``/``e``, one id per attempt) on
its owner's node: waiting for arguments (SUBMITTED to ARGS_RESOLVED), waiting for a lease (to
LEASE_GRANTED) and dispatch (to RUNNING, including pulling arguments).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aioray._private.common import task_events as te

_COLORS = {"FINISHED": "thread_state_running", "FAILED": "terrible"}
_WORKER_SIDE = (te.RESULT_INLINED, te.RESULT_STORED)


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


class _Lanes:
    """Integer pids per node and tids per worker lane, with their metadata events."""

    def __init__(self) -> None:
        self.nodes: dict[str, int] = {}
        self.lanes: dict[tuple[str, int], list[float]] = {}  # (node, worker pid) -> end of each lane
        self.meta: list[dict[str, Any]] = []

    def node(self, node_id: str | None) -> int:
        key = node_id or "unknown"
        pid = self.nodes.get(key)
        if pid is None:
            pid = self.nodes[key] = len(self.nodes) + 1
            label = f"node {key[:12]}" if node_id else "unknown node"
            self.meta.append(
                {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": label}}
            )
            self.meta.append(
                {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}}
            )
        return pid

    def lane(
        self, node_id: str | None, worker_pid: int, worker_id: str | None, start: float, end: float
    ) -> tuple[int, int]:
        pid = self.node(node_id)
        ends = self.lanes.setdefault((node_id or "unknown", worker_pid), [])
        for k, lane_end in enumerate(ends):
            if lane_end <= start:
                ends[k] = end
                break
        else:
            k = len(ends)
            ends.append(end)
            name = f"worker {(worker_id or '?')[:12]} pid {worker_pid}" + (f" lane {k + 1}" if k else "")
            self.meta.append(
                {
                    "ph": "M",
                    "name": "thread_name",
                    "pid": pid,
                    "tid": _tid(worker_pid, k),
                    "args": {"name": name},
                }
            )
        return pid, _tid(worker_pid, k)


def _tid(worker_pid: int, lane: int) -> int:
    return worker_pid if lane == 0 else worker_pid * 100 + lane


def _first(
    events: list[Mapping[str, Any]], kinds: Iterable[str], after: float = 0.0
) -> Mapping[str, Any] | None:
    wanted = set(kinds)
    return next((e for e in events if e["type"] in wanted and e["time"] >= after), None)


def trace_events(tasks: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The Chrome trace events of task attempts, as ``list_tasks(detail=True)`` returns them."""
    lanes = _Lanes()
    out: list[dict[str, Any]] = []
    ordered = sorted(tasks, key=lambda t: min((e["time"] for e in t.get("events") or ()), default=0.0))
    for task in ordered:
        events = sorted(task.get("events") or (), key=lambda e: e["time"])
        name = task.get("name") or task.get("func_or_class_name") or "task"
        args = {
            "task_id": task["task_id"],
            "attempt_number": task["attempt_number"],
            "state": task["state"],
            "type": task["type"],
        }
        if task.get("error_type"):
            args["error_type"] = task["error_type"]
        running = _first(events, (te.RUNNING,))
        if running is not None:
            end = _first(events, _WORKER_SIDE, running["time"]) or _first(
                events, te.TERMINAL, running["time"]
            )
            if end is not None:
                pid, tid = lanes.lane(
                    running["node_id"], int(running.get("source_pid") or 0), running.get("source_worker_id"),
                    running["time"], end["time"],
                )  # fmt: skip
                out.append(
                    {
                        "ph": "X", "cat": f"task::{name}", "name": name, "pid": pid, "tid": tid,
                        "ts": _us(running["time"]), "dur": _us(max(0.0, end["time"] - running["time"])),
                        "cname": _COLORS.get(task["state"], "generic_work"), "args": args,
                    }
                )  # fmt: skip
        out.extend(_phases(task, events, lanes, name))
    return lanes.meta + out


def _phases(
    task: Mapping[str, Any], events: list[Mapping[str, Any]], lanes: _Lanes, name: str
) -> list[dict[str, Any]]:
    """The attempt's scheduling phases as async slices on its owner's node."""
    submitted = _first(events, (te.SUBMITTED,))
    if submitted is None:
        return []
    pid = lanes.node(submitted["node_id"])
    ident = f"{task['task_id']}:{task['attempt_number']}"
    marks: list[tuple[str, Mapping[str, Any] | None]] = [
        ("wait for arguments", _first(events, (te.ARGS_RESOLVED,))),
        ("wait for a lease", _first(events, (te.LEASE_GRANTED,))),
        ("dispatch", _first(events, (te.RUNNING,))),
    ]
    out = []
    start = submitted["time"]
    for phase, mark in marks:
        if mark is None or mark["time"] < start:
            continue
        common = {"cat": "scheduling", "name": f"{name}: {phase}", "pid": pid, "tid": 0, "id": ident}
        out.append({**common, "ph": "b", "ts": _us(start)})
        out.append({**common, "ph": "e", "ts": _us(mark["time"])})
        start = mark["time"]
    return out


def timeline(filename: str | None = None, address: str | None = None) -> list[dict[str, Any]] | None:
    """The cluster's task timeline as Chrome trace events; written to `filename` if given (then
    None is returned), as Ray's ``ray.timeline``. Events reach the GCS once per report interval:
    this process's own are sent first, then the call waits one interval for the others'."""
    from aioray._private.core_worker import object_ref
    from aioray.util.state import list_tasks

    core = object_ref.current_worker()
    if core is not None and address is None and not core.runtime.in_loop_thread():
        core.run_sync(core.flush_events(), timeout=15)
    time.sleep(te.report_interval_s())
    tasks = list_tasks(address, limit=10_000, detail=True, raise_on_missing_output=False)
    events = trace_events(tasks)
    if filename is None:
        return events
    with open(os.path.expanduser(filename), "w") as f:
        json.dump(events, f)
    return None


__all__ = ["timeline", "trace_events"]
