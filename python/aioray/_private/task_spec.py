"""Task specs and results as they travel on the PushTasks stream (plain tuples, pickled in batches)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Argument kinds in a spec.
ARG_INLINE = 0  # (ARG_INLINE, frame bytes)
ARG_STORE = 1  # (ARG_STORE, object id, node id, size, raylet address): read from a store

# Return kinds in a result.
RET_INLINE = 0  # (RET_INLINE, frame bytes, inner refs)
RET_STORE = 1  # (RET_STORE, node id, size, inner refs, raylet address)

# Result statuses.
OK = 0
APP_ERROR = 1  # the function raised: every return holds the error frame
SYSTEM_ERROR = 2  # aioray failed to run it (e.g. arguments could not be read): not retried
CANCELLED = 3  # cancelled while queued at or running on the worker: never retried


@dataclass(slots=True, eq=False)
class TaskSpec:
    task_id: bytes
    function_id: bytes
    name: str
    args: list[tuple[Any, ...]]
    kwarg_names: tuple[str, ...]
    num_returns: int
    owner: str
    job_id: bytes
    return_ids: list[bytes] = field(default_factory=list)
    actor_id: bytes = b""  # set for actor method calls
    method: str = ""

    def to_wire(self) -> tuple[Any, ...]:
        return (
            self.task_id,
            self.function_id,
            self.name,
            self.args,
            self.kwarg_names,
            self.num_returns,
            self.owner,
            self.job_id,
            self.return_ids,
            self.actor_id,
            self.method,
        )

    @classmethod
    def from_wire(cls, t: tuple[Any, ...]) -> TaskSpec:
        return cls(*t)


# A result on the wire: (task id, status, [return...], run time in seconds) where a return is a RET_* tuple.
Result = tuple[bytes, int, list[tuple[Any, ...]], float]


@dataclass(slots=True, eq=False)
class ActorCreationSpec:
    """What a worker needs to become an actor."""

    actor_id: bytes
    function_id: bytes  # the class, exported like a function
    class_name: str
    args: list[tuple[Any, ...]]
    kwarg_names: tuple[str, ...]
    max_concurrency: int
    is_async: bool
    owner: str
    job_id: bytes
