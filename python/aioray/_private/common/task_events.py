"""Task events (seed 002's task table): what owners, raylets and workers saw happen to a task attempt.

Each process keeps one `TaskEventBuffer`. Recording an event is one bounded list append (a full
buffer drops the event and counts it); an `EventFlusher` on the process's event loop sends what
piled up to the GCS every ``AIORAY_TASK_EVENTS_REPORT_INTERVAL_MS`` (1000, Ray's
``task_events_report_interval_ms``), never from inside a task's submission or execution.
``AIORAY_TASK_EVENTS=0`` turns recording off in a process; a task's ``enable_task_events=False``
turns it off for that task everywhere (its spec carries the flag to the worker and its lease
request carries no task id to the raylet).

Event types, who records them and their fields (the recording process's node is the event's node
unless the fields name another ``node_id``):

=================  =======  ==============================================================
SUBMITTED          owner    the task's description (a `TaskInfo` tuple), kept in its row
ARGS_RESOLVED      owner    every ObjectRef argument exists
LEASE_REQUESTED    raylet   a lease for it reached this node
SPILLBACK          raylet   ``from_node_id``, ``to_node_id``: the request was sent on
LEASE_GRANTED      raylet   ``worker_id``: a worker of this node was leased for it
ARGS_PULLED        raylet   ``object_id``, ``from_node_id``, ``to_node_id``, ``bytes``
RUNNING            worker   its function started (arguments read)
RESULT_INLINED     worker   ``object_id``, ``bytes``: the return travels in the reply
RESULT_STORED      worker   ``object_id``, ``bytes``: the return was written to this node's store
                            (recorded as ``(return index, bytes)``; the GCS names the object)
FINISHED           worker   it returned without error (as in Ray, its worker records it)
FAILED             owner    ``error_type``, ``error_message``
RETRIED            owner    ``error_type``: this attempt failed; the next attempt was submitted
CANCELLED          owner    cancelled before or while it ran
RESULT_FREED       owner    ``object_id``, ``node_id``: the owner freed the stored return
=================  =======  ==============================================================

On the wire (``TaskInfoGcsService.AddTaskEvents``, a Blob): ``pickle((source, dropped, events))``
with ``source = (node_id, worker_id, pid, component)``, ``dropped`` the events this process lost
since its last batch, and each event ``(task_id, attempt, type, time, fields)`` (``fields`` a dict,
or for SUBMITTED a `TaskInfo` tuple, for RESULT_INLINED/RESULT_STORED ``(index, bytes)`` or, for the
only return of a task that succeeded, ``bytes`` alone, which stands for that event and FINISHED: the
common case costs one record), or None. ``GetTasks`` takes ``pickle(query)`` where
``query = {"filters": [(key, op, value)], "limit": n, "detail": bool}`` and answers
``pickle({"result": [row...], "total": n, "num_after_truncation": n, "num_filtered": n})``; a row
has the columns of Ray's ``TaskState`` (`TASK_COLUMNS`, `TASK_DETAIL_COLUMNS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aioray._private.common import serialization
from aioray._private.common.resources import ResourceSet

log = logging.getLogger("aioray.task_events")

ENABLED_ENV = "AIORAY_TASK_EVENTS"
BUFFER_ENV = "AIORAY_TASK_EVENTS_BUFFER_SIZE"
INTERVAL_ENV = "AIORAY_TASK_EVENTS_REPORT_INTERVAL_MS"
MAX_TASKS_ENV = "AIORAY_TASK_EVENTS_MAX_NUM_TASK_IN_GCS"

SUBMITTED = "SUBMITTED"
ARGS_RESOLVED = "ARGS_RESOLVED"
LEASE_REQUESTED = "LEASE_REQUESTED"
SPILLBACK = "SPILLBACK"
LEASE_GRANTED = "LEASE_GRANTED"
ARGS_PULLED = "ARGS_PULLED"
RUNNING = "RUNNING"
RESULT_INLINED = "RESULT_INLINED"
RESULT_STORED = "RESULT_STORED"
FINISHED = "FINISHED"
FAILED = "FAILED"
RETRIED = "RETRIED"
CANCELLED = "CANCELLED"
RESULT_FREED = "RESULT_FREED"
TYPES = (
    SUBMITTED, ARGS_RESOLVED, LEASE_REQUESTED, SPILLBACK, LEASE_GRANTED, ARGS_PULLED, RUNNING,
    RESULT_INLINED, RESULT_STORED, FINISHED, FAILED, RETRIED, CANCELLED, RESULT_FREED,
)  # fmt: skip
TERMINAL = frozenset({FINISHED, FAILED, RETRIED, CANCELLED})

# Ray's task types.
NORMAL_TASK = "NORMAL_TASK"
ACTOR_TASK = "ACTOR_TASK"
ACTOR_CREATION_TASK = "ACTOR_CREATION_TASK"

# (task id, attempt, type, time, fields)
Event = tuple[bytes, int, str, float, Any]
Source = tuple[bytes, bytes, int, str]  # (node id, worker id, pid, component)

MAX_BATCH = 10_000  # events per AddTaskEvents call
SEND_TIMEOUT_S = 10.0

# Ray's TaskState columns: the base ones, then those only `detail=True` shows.
TASK_COLUMNS = (
    "task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type", "func_or_class_name",
    "parent_task_id", "node_id", "worker_id", "worker_pid", "error_type",
)  # fmt: skip
TASK_DETAIL_COLUMNS = (
    *TASK_COLUMNS, "language", "required_resources", "runtime_env_info", "placement_group_id", "events",
    "profiling_data", "creation_time_ms", "start_time_ms", "end_time_ms", "task_log_info",
    "error_message", "is_debugger_paused", "call_site", "label_selector", "fallback_strategy",
)  # fmt: skip
TASK_FILTERABLE = frozenset(
    {"task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type", "func_or_class_name",
     "parent_task_id", "node_id", "worker_id", "worker_pid", "error_type", "language",
     "placement_group_id", "is_debugger_paused"}
)  # fmt: skip


# What SUBMITTED says about a task (its row's description), a plain tuple: cheaper to build on the
# submitting thread than any class. Its fields, by index:
INFO_NAME, INFO_FUNC, INFO_TYPE, INFO_JOB, INFO_ACTOR, INFO_PARENT, INFO_RESOURCES, INFO_GROUP, INFO_DEPS = (
    range(9)
)
TaskInfo = tuple[str, str, str, bytes, bytes, bytes, dict[str, float], bytes, bool]

_resources: dict[int, tuple[ResourceSet, dict[str, float]]] = {}


def plain_resources(shape: ResourceSet) -> dict[str, float]:
    """The shape as a dict, one per shape object: a batch pickles a shared dict once (pickle's memo)."""
    cached = _resources.get(id(shape))
    if cached is not None and cached[0] is shape:
        return cached[1]
    if len(_resources) > 1000:
        _resources.clear()
    plain = shape.to_dict()
    _resources[id(shape)] = (shape, plain)  # keeps the shape alive: its id is not reused meanwhile
    return plain


def enabled_by_env() -> bool:
    return os.environ.get(ENABLED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def report_interval_s() -> float:
    return float(os.environ.get(INTERVAL_ENV, "1000")) / 1000


class TaskEventBuffer:
    """One process's events until the next flush: bounded, appended to from any thread."""

    def __init__(self, capacity: int | None = None, enabled: bool | None = None) -> None:
        self.enabled = enabled_by_env() if enabled is None else enabled
        self.capacity = capacity if capacity is not None else int(os.environ.get(BUFFER_ENV, "100000"))
        if not self.enabled:
            # Events of tasks that enable them may still reach this process (a worker where
            # AIORAY_TASK_EVENTS=0): a zero capacity turns each into a drop, with no check per event.
            self.capacity = 0
        self.events: list[Event] = []
        # Counted without a lock: a rare lost increment under contention only undercounts drops.
        self.dropped = 0

    def record(self, task_id: bytes, attempt: int, kind: str, fields: Any = None) -> None:
        events = self.events
        if len(events) < self.capacity:
            events.append((task_id, attempt, kind, time.time(), fields))
        else:
            self.dropped += 1

    def take(self, limit: int = MAX_BATCH) -> tuple[list[Event], int]:
        """The oldest `limit` events and the drops since the last take. Slicing and deleting a
        slice are each atomic under the GIL, so events appended meanwhile by other threads stay."""
        events = self.events
        n = min(len(events), limit)
        batch = events[:n]
        del events[:n]
        dropped, self.dropped = self.dropped, 0
        return batch, dropped

    def __len__(self) -> int:
        return len(self.events)


def encode(source: Source, dropped: int, events: list[Event]) -> bytes:
    # Plain values only, recorded as such: no pass over the events here.
    return serialization.dumps_plain((source, dropped, events))


def decode(payload: bytes) -> tuple[Source, int, list[Event]]:
    source, dropped, events = serialization.loads_plain(payload)
    node_id, worker_id, pid, component = source
    return (node_id, worker_id, pid, component), int(dropped), events


class EventFlusher:
    """Sends a buffer's events to the GCS on a timer, off every task's critical path.

    A batch that cannot be sent (the GCS is away) is dropped and counted, so that a process never
    holds more than its buffer while the GCS restarts; the GCS learns of the loss from the count."""

    def __init__(
        self,
        buffer: TaskEventBuffer,
        source: Callable[[], Source],
        send: Callable[[bytes], Awaitable[Any]],
        interval_s: float | None = None,
    ) -> None:
        self.buffer = buffer
        self._source = source
        self._send = send
        self.interval_s = report_interval_s() if interval_s is None else interval_s
        self._task: asyncio.Task[None] | None = None
        self._lost = 0
        self.sent = 0

    def start(self) -> None:
        if self.buffer.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def flush(self) -> None:
        while len(self.buffer) or self.buffer.dropped or self._lost:
            batch, dropped = self.buffer.take()
            dropped += self._lost
            self._lost = 0
            try:
                await asyncio.wait_for(self._send(encode(self._source(), dropped, batch)), SEND_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("could not send %d task event(s) to the GCS: %r", len(batch), e)
                self._lost = dropped + len(batch)
                return
            self.sent += len(batch)

    async def close(self, timeout: float = 2.0) -> None:
        """Stops the timer and sends what is left, for at most `timeout` seconds."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.buffer.enabled:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), timeout)


ERROR_TYPES = (
    # (exception class name, Ray's error type), most specific first: matched along the class's MRO.
    ("TaskCancelledError", "TASK_CANCELLED"),
    ("OutOfMemoryError", "OUT_OF_MEMORY"),
    ("WorkerCrashedError", "WORKER_DIED"),
    ("ActorUnavailableError", "ACTOR_UNAVAILABLE"),
    ("ActorDiedError", "ACTOR_DIED"),
    ("RayActorError", "ACTOR_DIED"),
    ("OwnerDiedError", "OWNER_DIED"),
    ("ObjectLostError", "OBJECT_LOST"),
    ("RuntimeEnvSetupError", "RUNTIME_ENV_SETUP_FAILED"),
    ("TaskUnschedulableError", "TASK_UNSCHEDULABLE_ERROR"),
    ("RayTaskError", "TASK_EXECUTION_EXCEPTION"),
)


def error_type_of(err: BaseException) -> str:
    """Ray's name for the kind of failure `err` is."""
    names = {cls.__name__ for cls in type(err).__mro__}
    for name, kind in ERROR_TYPES:
        if name in names:
            return kind
    return "TASK_EXECUTION_EXCEPTION"


def error_fields(frame: bytes) -> dict[str, str]:
    """``error_type`` and ``error_message`` of an error frame (a failed task's return)."""
    try:
        err, _ = serialization.deserialize(frame)
    except Exception as e:
        return {"error_type": "TASK_EXECUTION_EXCEPTION", "error_message": f"unreadable error: {e}"}
    if not isinstance(err, BaseException):
        return {"error_type": "TASK_EXECUTION_EXCEPTION", "error_message": repr(err)[:2000]}
    return {"error_type": error_type_of(err), "error_message": str(err)[:2000]}


__all__ = [
    "ACTOR_CREATION_TASK",
    "ACTOR_TASK",
    "NORMAL_TASK",
    "TASK_COLUMNS",
    "TASK_DETAIL_COLUMNS",
    "TYPES",
    "EventFlusher",
    "TaskEventBuffer",
    "TaskInfo",
    "decode",
    "encode",
    "error_fields",
    "error_type_of",
    "plain_resources",
]
