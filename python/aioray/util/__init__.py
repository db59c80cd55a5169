"""Utilities on top of tasks and actors, as in ``ray.util``: ``ActorPool``, ``queue.Queue``, custom
serializers, placement groups."""

from aioray.util import queue as queue
from aioray.util.actor_pool import ActorPool
from aioray.util.placement_group import (
    PlacementGroup,
    PlacementGroupID,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from aioray.util.serialization import deregister_serializer, register_serializer

__all__ = [
    "ActorPool",
    "PlacementGroup",
    "PlacementGroupID",
    "deregister_serializer",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "queue",
    "register_serializer",
    "remove_placement_group",
]
