"""Task frames: task specs and results as they travel between an owner and a worker.

They travel over task channels (`core_worker.task_channel`, plain TCP with length-prefixed
frames). betterproto's per-field cost is far above one pickle of plain tuples, so the frames
carry aioray's own compact encoding, defined only here:

- owner -> worker, one blob per batch: ``pickle((lease_id, [spec...]))`` where a
  spec is `TaskSpec.to_wire()`, a tuple ``(task_id, function_id, name, args,
  kwarg_names, num_returns, owner, job_id, return_ids, actor_id, method, ...)`` (every
  field of `TaskSpec`, in order).
  Each of ``args`` is ``(ARG_INLINE, frame)`` or ``(ARG_STORE, object_id,
  node_id, size, raylet_address)``; keyword arguments come last, named by
  ``kwarg_names``. ``lease_id`` is empty on an actor's stream.
- worker -> owner, one blob per batch of finished tasks: ``pickle([result...])``
  where a result is ``(task_id, status, [return...], run_time_s)`` and each
  return ``(RET_INLINE, frame, inner_refs)`` or ``(RET_STORE, node_id, size,
  inner_refs, raylet_address)``; ``inner_refs`` lists ``(object_id, owner)`` of
  the refs inside the value, already registered with their owners.
- `CoreWorker.CreateActor` carries one `ActorCreationSpec` the same way, and
  answers an empty blob on success or the constructor's error frame.

The owner ends its side once every result arrived; the worker then ends its.
A frame is a value serialized by `common.serialization` (flags byte first).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field
from typing import Any

from aioray._private.common import serialization

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
    concurrency_group: str = ""  # an actor call's group, when the caller chose one (else the method's)
    streaming: bool = False  # a generator task: items are reported one by one (core_worker/generators)
    num_cpus: float = 0.0  # the CPUs its lease holds (a task's OMP_NUM_THREADS follows them, as in Ray)
    backpressure: int = 0  # a generator task reports item by item, pausing as its owner says
    gpu_ids: tuple[int, ...] = ()  # the GPUs of the lease it runs under (its CUDA_VISIBLE_DEVICES)
    # (group id, bundle index, capture child tasks) when it runs in a placement group
    placement_group: tuple[bytes, int, bool] | None = None
    attempt: int = 0  # 0 for the first run; each retry or re-run from lineage adds one
    events: bool = True  # record its task events (common.task_events) everywhere it goes

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
            self.concurrency_group,
            self.streaming,
            self.num_cpus,
            self.backpressure,
            self.gpu_ids,
            self.placement_group,
            self.attempt,
            self.events,
        )

    @classmethod
    def from_wire(cls, t: tuple[Any, ...]) -> TaskSpec:
        return cls(*t)


def encode_batch(lease_id: bytes, specs: list[TaskSpec]) -> bytes:
    return serialization.dumps_plain((lease_id, [s.to_wire() for s in specs]))


def decode_batch(data: bytes) -> tuple[bytes, list[TaskSpec]]:
    lease_id, wire_specs = serialization.loads_plain(data)
    return lease_id, [TaskSpec.from_wire(t) for t in wire_specs]


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
    # Named groups of methods with their own concurrency limit (and thread or event loop), and the
    # group each method belongs to; methods in no group share the default one (`max_concurrency`).
    concurrency_groups: dict[str, int] = field(default_factory=dict)
    method_groups: dict[str, str] = field(default_factory=dict)
    placement_group: tuple[bytes, int, bool] | None = None  # as TaskSpec.placement_group
    events: bool = True  # as TaskSpec.events

    def encode(self) -> bytes:
        return serialization.dumps_plain(astuple(self))

    @classmethod
    def decode(cls, data: bytes) -> ActorCreationSpec:
        return cls(*serialization.loads_plain(data))


def encode_results(results: list[Result]) -> bytes:
    return serialization.dumps_plain(results)


def decode_results(data: bytes) -> list[Result]:
    results: list[Result] = serialization.loads_plain(data)
    return results
