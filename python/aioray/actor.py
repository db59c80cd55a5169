"""Actors, as in ``ray.actor``: handle and class types, and ``exit_actor()``."""

from __future__ import annotations

from typing import NoReturn

from aioray._private.actor import ActorClass, ActorHandle, ActorMethod, method
from aioray._private.core_worker import object_ref
from aioray.exceptions import AsyncioActorExit

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor", "method"]


def exit_actor() -> NoReturn:
    """Ends the actor this is called in, gracefully and for good (no restart).

    Nothing more runs in it: calls queued behind this one fail with ``ActorDiedError`` naming
    ``exit_actor()``, as does the call that made it. Its ``__ray_shutdown__`` method and the
    process's atexit handlers run once, then the worker exits. Raises ``SystemExit`` in a sync actor
    and ``AsyncioActorExit`` in an async one; catching it does not stop the exit.

    Raises:
        TypeError: outside an actor (in the driver or a plain task).
    """
    core = object_ref.current_worker()
    executor = core.executor if core is not None else None
    if executor is None or executor.actor_id is None:
        raise TypeError(
            "exit_actor API is called on a non-actor worker: call it inside an actor's method or constructor"
        )
    executor.request_exit("exit_actor() was called", drain=False)
    if executor.hosts_async_actor:
        raise AsyncioActorExit("exit_actor() was called: the actor exits")
    raise SystemExit(0)
