"""What a core worker counts of the tasks it owns and runs (its node serves them: `metrics_reporter`).

Owners count each task once when it ends (finished, or failed with an error
value) and each retry; the tasks still open are counted by state when a
snapshot is taken, from the submitter's own tables (no bookkeeping on the hot
path), and so is the number submitted (those ended plus those open). Workers
count what they ran by outcome (`executor.EXECUTED`) and what runs now.
Every family has a ``kind`` label: ``task`` or ``actor_task``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from aioray._private.common import metrics

KINDS = ("task", "actor_task")
STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER")

_reg = metrics.REGISTRY
FINISHED = _reg.counter(
    "aioray_tasks_finished_total", "Tasks that ended with their values, by their owners", ("kind",)
)
FAILED = _reg.counter(
    "aioray_tasks_failed_total", "Tasks that ended with an error, by their owners", ("kind",)
)
RETRIED = _reg.counter(
    "aioray_tasks_retried_total", "Task attempts run again (worker or node died, retried error)", ("kind",)
)
# Indexed by bool(actor_id): one list lookup on the paths that end tasks.
FINISHED_BY_KIND = [FINISHED.labels("task"), FINISHED.labels("actor_task")]
FAILED_BY_KIND = [FAILED.labels("task"), FAILED.labels("actor_task")]
RETRIED_BY_KIND = [RETRIED.labels("task"), RETRIED.labels("actor_task")]


class OpenTask(Protocol):
    @property
    def spec(self) -> _Spec: ...
    @property
    def worker(self) -> object | None: ...


class _Spec(Protocol):
    @property
    def actor_id(self) -> bytes: ...


def open_by_state(tasks: Iterable[OpenTask], queued: int) -> dict[tuple[str, ...], float]:
    """(state, kind) -> count of the owner's open tasks: pushed to a worker, queued for a lease
    (`queued`, normal tasks only), or else still resolving arguments (or waiting for their actor)."""
    counts: dict[tuple[str, ...], float] = {(state, kind): 0.0 for state in STATES for kind in KINDS}
    for p in tasks:
        kind = KINDS[bool(p.spec.actor_id)]
        if p.worker is not None:
            counts[("SUBMITTED_TO_WORKER", kind)] += 1
        else:
            counts[("PENDING_ARGS_AVAIL", kind)] += 1
    moved = min(queued, counts[("PENDING_ARGS_AVAIL", "task")])
    counts[("PENDING_ARGS_AVAIL", "task")] -= moved
    counts[("PENDING_NODE_ASSIGNMENT", "task")] += moved
    return counts


def register_owner(tasks: Callable[[], Iterable[OpenTask]], queued: Callable[[], int]) -> None:
    """The owner's gauges, read from its submitter when a snapshot is taken."""

    def by_state() -> dict[tuple[str, ...], float]:
        return open_by_state(tasks(), queued())

    def submitted() -> dict[tuple[str, ...], float]:
        open_counts = open_by_state(tasks(), queued())
        return {
            (kind,): FINISHED_BY_KIND[i].value
            + FAILED_BY_KIND[i].value
            + sum(open_counts[(state, kind)] for state in STATES)
            for i, kind in enumerate(KINDS)
        }

    _reg.gauge(
        "aioray_tasks", "Tasks not ended yet by state, by their owners", ("state", "kind"), collect=by_state
    )
    _reg.counter(
        "aioray_tasks_submitted_total", "Tasks submitted, by their owners", ("kind",), collect=submitted
    )


def register_worker(running: Callable[[], int]) -> None:
    _reg.gauge(
        "aioray_tasks_running", "Tasks and actor calls running on this node's workers now", collect=running
    )


__all__ = [
    "FAILED_BY_KIND",
    "FINISHED_BY_KIND",
    "RETRIED_BY_KIND",
    "open_by_state",
    "register_owner",
    "register_worker",
]
