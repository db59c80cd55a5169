"""The GCS task table (seed 002): every task attempt with its events, bounded.

Owners, raylets and workers send batches of events (`common.task_events`); each event lands in
its attempt's row, which keeps its state (Ray's task states) up to date as events arrive in any
order. The table holds at most ``AIORAY_TASK_EVENTS_MAX_NUM_TASK_IN_GCS`` attempts (100000, as
Ray's ``task_events_max_num_task_in_gcs``): past that the oldest finished attempts go first, then
the oldest of all. Evicted attempts and events dropped by full buffers are counted, and a query's
``total`` includes them, so that the state API can tell a partial answer (Ray's semantics). The
table lives in memory only: a restarted GCS starts empty. Batches are indexed lazily: kept as the bytes
that arrived until a query (or 32 MiB of them) needs them, so that a busy cluster nobody inspects
pays the GCS almost nothing for its events.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from aioray._private.common import ids, serialization, state_query
from aioray._private.common import task_events as te
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.gcs")

MAX_EVENTS_PER_ATTEMPT = 1000
# Batches are kept as they arrived (compact bytes, ~40 bytes an event) and indexed only when a query
# needs them or when this much piled up: while nobody asks, taking events costs the GCS one append
# per batch, not Python work per event.
MAX_PENDING_BYTES = 32 << 20

# Ray's task states, as the events move an attempt along (never backwards: events may arrive late).
_RANK = {
    "NIL": 0,
    "PENDING_ARGS_AVAIL": 1,
    "PENDING_NODE_ASSIGNMENT": 2,
    "SUBMITTED_TO_WORKER": 3,
    "RUNNING": 4,
    "FINISHED": 5,
    "FAILED": 5,
}


# One attempt's events as they arrived, each with the source that sent it: ingesting a batch costs
# one append per event; the attempt's state is worked out (`view`) only when a query asks.
Events = list[tuple[te.Event, te.Source]]


def view(task_id: bytes, attempt: int, events: Events) -> View:
    out = View(task_id, attempt)
    for (_, _, kind, at, fields), source in events:
        out.apply(kind, at, source, fields)
    return out


@dataclass(eq=False)
class View:
    task_id: bytes
    attempt: int
    info: tuple[Any, ...] | None = None
    # (type, time, node id, worker id, pid, component, fields)
    events: list[tuple[str, float, bytes, bytes, int, str, dict[str, Any]]] = field(default_factory=list)
    state: str = "NIL"
    node_id: bytes = b""
    worker_id: bytes = b""
    worker_pid: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    creation_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    finished: bool = False

    def apply(self, kind: str, at: float, source: te.Source, fields: Any) -> None:
        node, worker, pid, component = source
        if kind == te.SUBMITTED:
            if fields is not None:
                self.info = tuple(fields)
            self.creation_time = at if self.creation_time is None else min(self.creation_time, at)
            fields = {}
        if kind in (te.RESULT_INLINED, te.RESULT_STORED) and not isinstance(fields, dict):
            if isinstance(fields, int):  # the only return of a task that succeeded: FINISHED follows
                self.apply(kind, at, source, (1, fields))
                self.apply(te.FINISHED, at, source, None)
                return
            index, size = fields
            fields = {"object_id": ids.object_id(self.task_id, index), "bytes": size}
        fields = dict(fields or {})
        self.events.append((kind, at, fields.pop("node_id", node), worker, pid, component, fields))
        is_actor_task = self.info is not None and self.info[2] == te.ACTOR_TASK
        if kind == te.SUBMITTED:
            has_deps = self.info is not None and self.info[8]
            if has_deps:
                self._move("PENDING_ARGS_AVAIL")
            else:
                self._move("SUBMITTED_TO_WORKER" if is_actor_task else "PENDING_NODE_ASSIGNMENT")
        elif kind == te.ARGS_RESOLVED:
            self._move("SUBMITTED_TO_WORKER" if is_actor_task else "PENDING_NODE_ASSIGNMENT")
        elif kind == te.LEASE_GRANTED:
            self._move("SUBMITTED_TO_WORKER")
        elif kind == te.RUNNING:
            self._move("RUNNING")
            self.node_id, self.worker_id, self.worker_pid = node, worker, pid
            self.start_time = at
        elif kind == te.FINISHED:
            self._end("FINISHED", at)
        elif kind in (te.FAILED, te.RETRIED, te.CANCELLED) and not (
            self.finished and self.state == "FINISHED"
        ):
            self.error_type = fields.get("error_type") or ("TASK_CANCELLED" if kind == te.CANCELLED else None)
            self.error_message = fields.get("error_message", self.error_message)
            self._end("FAILED", at)

    def _move(self, state: str) -> None:
        if not self.finished and _RANK[state] >= _RANK[self.state]:
            self.state = state

    def _end(self, state: str, at: float) -> None:
        self.state = state
        self.finished = True
        self.end_time = at

    def row(self, detail: bool) -> dict[str, Any]:
        info = self.info
        name = info[0] if info else ""
        row: dict[str, Any] = {
            "task_id": self.task_id.hex(),
            "attempt_number": self.attempt,
            "name": name,
            "state": self.state,
            "job_id": info[3].hex() if info and info[3] else None,
            "actor_id": info[4].hex() if info and info[4] else None,
            "type": info[2] if info else te.NORMAL_TASK,
            "func_or_class_name": info[1] if info else "",
            "parent_task_id": info[5].hex() if info and info[5] else "",
            "node_id": self.node_id.hex() if self.node_id else None,
            "worker_id": self.worker_id.hex() if self.worker_id else None,
            "worker_pid": self.worker_pid,
            "error_type": self.error_type,
        }
        if not detail:
            return row
        row.update(
            language="PYTHON",
            required_resources=dict(info[6]) if info else {},
            runtime_env_info=None,
            placement_group_id=info[7].hex() if info and info[7] else None,
            events=[event_dict(e) for e in sorted(self.events, key=lambda e: e[1])],
            profiling_data=None,
            creation_time_ms=_ms(self.creation_time),
            start_time_ms=_ms(self.start_time),
            end_time_ms=_ms(self.end_time),
            task_log_info=None,
            error_message=self.error_message,
            is_debugger_paused=None,
            call_site=None,
            label_selector=None,
            fallback_strategy=None,
        )
        return row


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


def event_dict(e: tuple[str, float, bytes, bytes, int, str, dict[str, Any]]) -> dict[str, Any]:
    """An event as the state API shows it: ``type``, ``time`` (seconds), ``node_id`` and its fields."""
    kind, at, node, worker, pid, component, fields = e
    out: dict[str, Any] = {"type": kind, "time": at, "node_id": node.hex() if node else None}
    out["source"] = component
    if worker:
        out["source_worker_id"] = worker.hex()
    if pid:
        out["source_pid"] = pid
    for key, value in fields.items():
        out[key] = value.hex() if isinstance(value, bytes) else value
    return out


class TaskTable(pb.TaskInfoGcsServiceBase):
    def __init__(self, max_tasks: int | None = None) -> None:
        self.max_tasks = (
            max_tasks if max_tasks is not None else int(os.environ.get(te.MAX_TASKS_ENV, "100000"))
        )
        # Plain dicts (insertion-ordered, and cheaper to fill than OrderedDicts): oldest first.
        self.attempts: dict[tuple[bytes, int], Events] = {}
        self._finished: dict[tuple[bytes, int], None] = {}  # finished attempts, in the order they finished
        self.evicted = 0  # attempts pushed out of the table
        self.dropped_events = 0  # events the processes' buffers dropped (or failed to send)
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def add_payload(self, payload: bytes) -> None:
        """An AddTaskEvents batch, indexed later (see MAX_PENDING_BYTES)."""
        self._pending.append(payload)
        self._pending_bytes += len(payload)
        if self._pending_bytes > MAX_PENDING_BYTES:
            self.index()

    def index(self) -> None:
        """Takes the batches that arrived since the last query into the table."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for payload in pending:
            try:
                batch = te.decode(payload)
            except Exception as e:  # a sender of another version, or a corrupt batch: not the others'
                log.warning("dropped an unreadable batch of task events (%d bytes): %r", len(payload), e)
                self.dropped_events += 1
                continue
            self.add(*batch)

    def add(self, source: te.Source, dropped: int, events: list[te.Event]) -> None:
        """A batch of one process's events: an append per event (tens of thousands arrive a second)."""
        self.dropped_events += dropped
        attempts, finished, terminal = self.attempts, self._finished, te.TERMINAL
        get = attempts.get
        for event in events:
            key = event[:2]  # (task id, attempt)
            row = get(key)
            if row is None:
                row = attempts[key] = []
                if len(attempts) > self.max_tasks:
                    self._evict()
            if len(row) < MAX_EVENTS_PER_ATTEMPT:
                row.append((event, source))
            if event[2] in terminal and key not in finished:
                finished[key] = None

    def _evict(self) -> None:
        if self._finished:
            key = next(iter(self._finished))
            del self._finished[key]
            self.attempts.pop(key, None)
        else:
            key = next(iter(self.attempts))
            del self.attempts[key]
        self.evicted += 1

    def query(self, query: dict[str, Any]) -> dict[str, Any]:
        self.index()
        filters = state_query.check_filters(query.get("filters"), te.TASK_FILTERABLE, "tasks")
        limit = state_query.check_limit(query.get("limit", state_query.DEFAULT_LIMIT))
        detail = bool(query.get("detail"))
        candidates = list(self.attempts.items())
        wanted_id = next(
            (v for c, p, v in filters if c == "task_id" and p == "=" and isinstance(v, str)), None
        )
        if wanted_id is not None:  # a lookup by id need not build every row
            try:
                wanted = bytes.fromhex(wanted_id)
            except ValueError:
                wanted = b""
            candidates = [(key, events) for key, events in candidates if key[0] == wanted]
        rows = (view(t, a, events).row(detail) for (t, a), events in candidates)
        kept, matched = state_query.select(rows, filters, limit)
        columns = te.TASK_DETAIL_COLUMNS if detail else te.TASK_COLUMNS
        result = [state_query.shape(r, columns) for r in kept]
        missing = self.evicted + self.dropped_events
        return {
            "result": result,
            "total": len(self.attempts) + missing,
            "num_after_truncation": len(self.attempts),
            "num_filtered": matched,
        }

    # -- the service ---------------------------------------------------------------------------
    async def add_task_events(self, blob: pb.Blob) -> pb.Empty:
        self.add_payload(blob.data)
        return pb.Empty()

    async def get_tasks(self, blob: pb.Blob) -> pb.Blob:
        return pb.Blob(data=serialization.dumps_plain(self.query(serialization.loads_plain(blob.data))))


__all__ = ["TaskTable", "View", "event_dict", "view"]
