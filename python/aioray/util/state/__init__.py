"""The state API, as Ray's ``ray.util.state``: what runs and what is held in the cluster.

``list_tasks``/``list_actors``/``list_objects``/``list_nodes``/``list_jobs``/
``list_placement_groups``/``list_workers``, ``get_task``/``get_actor``/``get_node`` and
``summarize_tasks``/``summarize_actors``/``summarize_objects`` (see `api`); the CLI's
``aioray list``, ``aioray get``, ``aioray summary`` and ``aioray memory`` call them.
"""

from aioray.util.state.api import (
    get_actor,
    get_node,
    get_task,
    list_actors,
    list_jobs,
    list_nodes,
    list_objects,
    list_placement_groups,
    list_tasks,
    list_workers,
    summarize_actors,
    summarize_objects,
    summarize_tasks,
)
from aioray.util.state.common import (
    ActorState,
    JobState,
    NodeState,
    ObjectState,
    PlacementGroupState,
    TaskState,
    WorkerState,
)
from aioray.util.state.exception import RayStateApiException

__all__ = [
    "ActorState",
    "JobState",
    "NodeState",
    "ObjectState",
    "PlacementGroupState",
    "RayStateApiException",
    "TaskState",
    "WorkerState",
    "get_actor",
    "get_node",
    "get_task",
    "list_actors",
    "list_jobs",
    "list_nodes",
    "list_objects",
    "list_placement_groups",
    "list_tasks",
    "list_workers",
    "summarize_actors",
    "summarize_objects",
    "summarize_tasks",
]
