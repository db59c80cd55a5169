"""Utilities on top of tasks and actors, as in ``ray.util``: ``ActorPool``, ``queue.Queue``."""

from aioray.util import queue as queue
from aioray.util.actor_pool import ActorPool

__all__ = ["ActorPool", "queue"]
