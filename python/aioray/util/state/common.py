"""The state API's records: Ray's state schemas (names, columns, filterable columns) as dicts.

A record is a dict of its columns that also reads as attributes (``task.state`` and
``task["state"]``), as Ray's state dataclasses do. ``detail=False`` rows carry the base columns,
``detail=True`` rows every column; a column a source cannot tell is None.
"""

from __future__ import annotations

from typing import Any, ClassVar

from aioray._private.common import task_events as te

DEFAULT_RPC_TIMEOUT = 30
DEFAULT_LIMIT = 100


class StateSchema(dict[str, Any]):
    """A record; subclasses name their base, detail and filterable columns."""

    BASE: ClassVar[tuple[str, ...]] = ()
    DETAIL: ClassVar[tuple[str, ...]] = ()
    FILTERABLE: ClassVar[frozenset[str]] = frozenset()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def asdict(self) -> dict[str, Any]:
        return dict(self)

    @classmethod
    def list_columns(cls, detail: bool = True) -> list[str]:
        return list(cls.DETAIL if detail else cls.BASE)

    @classmethod
    def filterable_columns(cls) -> set[str]:
        return set(cls.FILTERABLE)


class TaskState(StateSchema):
    BASE = te.TASK_COLUMNS
    DETAIL = te.TASK_DETAIL_COLUMNS
    FILTERABLE = te.TASK_FILTERABLE


class ActorState(StateSchema):
    BASE = ("actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace")
    DETAIL = (
        *BASE, "serialized_runtime_env", "required_resources", "death_cause", "is_detached",
        "placement_group_id", "repr_name", "num_restarts", "num_restarts_due_to_lineage_reconstruction",
        "num_restarts_due_to_node_preemption", "call_site", "label_selector", "fallback_strategy",
    )  # fmt: skip
    FILTERABLE = frozenset(
        {"actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace",
         "placement_group_id", "repr_name"}
    )  # fmt: skip


class PlacementGroupState(StateSchema):
    BASE = ("placement_group_id", "name", "creator_job_id", "state")
    DETAIL = (*BASE, "bundles", "is_detached", "stats", "topology_strategy", "topology_assignments")
    FILTERABLE = frozenset({"placement_group_id", "name", "creator_job_id", "state", "is_detached"})


class NodeState(StateSchema):
    BASE = (
        "node_id",
        "node_ip",
        "is_head_node",
        "state",
        "state_message",
        "node_name",
        "resources_total",
        "labels",
    )
    DETAIL = (*BASE, "start_time_ms", "end_time_ms")
    FILTERABLE = frozenset({"node_id", "node_ip", "is_head_node", "state", "node_name"})


class JobState(StateSchema):
    BASE = ("job_id", "submission_id", "entrypoint", "type", "status", "message", "error_type", "driver_info")
    DETAIL = (
        *BASE, "start_time", "end_time", "metadata", "runtime_env", "driver_agent_http_address",
        "driver_node_id", "driver_exit_code",
    )  # fmt: skip
    FILTERABLE = frozenset({"job_id", "type", "status", "submission_id"})


class WorkerState(StateSchema):
    BASE = ("worker_id", "is_alive", "worker_type", "exit_type", "node_id", "ip", "pid")
    DETAIL = (
        *BASE, "exit_detail", "worker_launch_time_ms", "worker_launched_time_ms", "start_time_ms",
        "end_time_ms", "debugger_port", "num_paused_threads",
        "state",  # aioray's own: STARTING, IDLE or LEASED (a driver's is None)
    )  # fmt: skip
    FILTERABLE = frozenset(
        {"worker_id", "is_alive", "worker_type", "exit_type", "node_id", "ip", "pid", "debugger_port",
         "num_paused_threads"}
    )  # fmt: skip


class ObjectState(StateSchema):
    BASE = (
        "object_id", "object_size", "task_status", "attempt_number", "reference_type", "call_site", "type",
        "pid", "ip",
    )  # fmt: skip
    # aioray's own columns (core_worker/memory.py), with detail=True: where the object is and why it lives.
    DETAIL = (
        *BASE, "owner_address", "is_owner", "node_id", "storage", "local_refs", "submitted_refs",
        "contained_in", "borrowers",
    )  # fmt: skip
    FILTERABLE = frozenset(
        {"object_id", "object_size", "task_status", "attempt_number", "reference_type", "call_site", "type",
         "pid", "ip", "owner_address", "is_owner", "node_id", "storage"}
    )  # fmt: skip


__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_RPC_TIMEOUT",
    "ActorState",
    "JobState",
    "NodeState",
    "ObjectState",
    "PlacementGroupState",
    "StateSchema",
    "TaskState",
    "WorkerState",
]
