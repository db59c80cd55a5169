"""Exceptions of aioray, named as in Ray so `except ray.exceptions.X` keeps working.

Catch :class:`RayError` for anything aioray raises on its own behalf; an error
raised by your task arrives as :class:`RayTaskError` *and* as your own
exception class, so ``except ValueError`` works across process boundaries.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActorDiedError",
    "ActorUnavailableError",
    "AsyncioActorExit",
    "GetTimeoutError",
    "NodeDiedError",
    "ObjectExistsError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "RayActorError",
    "RayError",
    "RayTaskError",
    "RuntimeEnvSetupError",
    "TaskCancelledError",
    "WorkerCrashedError",
]


class RayError(Exception):
    """Base class of every error aioray raises itself."""


class RayTaskError(RayError):
    """A task or actor method raised; the message carries the remote traceback.

    Instances raised by ``get``/``await`` are also instances of the user's own
    exception class (see :meth:`as_instanceof_cause`).
    """

    def __init__(self, function_name: str = "", traceback_str: str = "", cause: BaseException | None = None):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"{type(self.cause).__name__}" if self.cause is not None else "RayTaskError"
        where = f" in {self.function_name}" if self.function_name else ""
        return f"{head}{where}: the remote call failed.\n{self.traceback_str}".rstrip()

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.function_name, self.traceback_str, self.cause)
        if type(self) is RayTaskError:
            return (RayTaskError, args)
        # A dual class (see `as_instanceof_cause`) is made at run time: rebuild it on unpickling.
        return (_rebuild_dual, args)

    def as_instanceof_cause(self) -> RayTaskError:
        """This error as an instance of both ``RayTaskError`` and the cause's class.

        A cause that is itself a ``RayTaskError`` (a nested task's failure that its caller did
        not catch) is unwrapped to the user's original exception, as in Ray. As in Ray too, the
        error stays a plain ``RayTaskError`` when that is already an instance of the cause's class
        (``raise Exception(...)``), and when the cause is one of aioray's own errors (a
        ``GetTimeoutError`` inside the task is not a timeout of the caller's)."""
        cause = self.cause
        while isinstance(cause, RayTaskError) and cause.cause is not None:
            cause = cause.cause
        if cause is None or isinstance(cause, RayTaskError):
            return self
        cause_cls = type(cause)
        if issubclass(RayTaskError, cause_cls) or issubclass(cause_cls, RayError):
            return self
        try:
            cls = _dual_class(cause_cls)
            err = cls.__new__(cls)
            # Keep the cause's own state (args, attributes) so handlers see what they expect.
            err.__dict__.update(getattr(cause, "__dict__", {}))
            err.args = (self._message(),)
            err.function_name = self.function_name
            err.traceback_str = self.traceback_str
            err.cause = cause
            return err
        except TypeError:
            return self


def _rebuild_dual(function_name: str, traceback_str: str, cause: BaseException | None) -> RayTaskError:
    return RayTaskError(function_name, traceback_str, cause).as_instanceof_cause()


_dual_classes: dict[type[BaseException], type[RayTaskError]] = {}


def _dual_class(cause_cls: type[BaseException]) -> type[RayTaskError]:
    cls = _dual_classes.get(cause_cls)
    if cls is None:

        def __str__(self: RayTaskError) -> str:
            return self._message()

        cls = type(  # a class that is both RayTaskError and the cause's class
            f"RayTaskError({cause_cls.__name__})",
            (RayTaskError, cause_cls),
            {"__str__": __str__, "__module__": cause_cls.__module__},
        )
        _dual_classes[cause_cls] = cls
    return cls


class GetTimeoutError(RayError, TimeoutError):
    """``get``/``wait``/``await`` did not finish within its timeout."""


class RayActorError(RayError):
    """The actor behind a handle died or could not be created."""


class ActorDiedError(RayActorError):
    """The actor is dead: killed, crashed past its restarts, exited, or its constructor raised."""


class ActorUnavailableError(RayActorError):
    """The actor is alive (restarting, or restarted) but this call was lost on the way and was not
    retried: calling again may succeed (``max_task_retries`` retries such calls automatically)."""


class AsyncioActorExit(RayError):
    """Raised by ``aioray.actor.exit_actor()`` inside an async actor; the actor exits once its method
    returns, even if this is caught."""


class WorkerCrashedError(RayError):
    """The worker process running the task died (after every retry was used)."""


class OutOfMemoryError(RayError):
    """The node's memory monitor killed the worker running the task (after every retry was used).

    The message names the node, its memory usage and limit, and the threshold
    (``AIORAY_MEMORY_USAGE_THRESHOLD``) that was crossed."""


class ObjectLostError(RayError):
    """Every copy of the object is gone and it cannot be reconstructed."""


class OwnerDiedError(ObjectLostError):
    """The process that owned the object died, so the object cannot be reached."""


class ObjectStoreFullError(RayError):
    """The node's object store cannot hold the object; free objects or give it more memory."""


class ObjectExistsError(RayError):
    """An object with this id is already in the store."""


class TaskCancelledError(RayError):
    """The task was cancelled before it produced a result."""


class RuntimeEnvSetupError(RayError):
    """The runtime environment of a task or actor could not be set up (the message says why)."""


class NodeDiedError(RayError):
    """The node the work ran on died."""
