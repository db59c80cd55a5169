"""Utilities on top of tasks and actors, as in ``ray.util``: ``ActorPool``, ``queue.Queue``, custom
serializers."""

from aioray.util import queue as queue
from aioray.util.actor_pool import ActorPool
from aioray.util.serialization import deregister_serializer, register_serializer

__all__ = ["ActorPool", "deregister_serializer", "queue", "register_serializer"]
