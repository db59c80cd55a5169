"""The raylet's queue (seed 000, protocols b and c), free of I/O so it can be tested alone.

Where a new lease request goes (here, another node, or nowhere) is `policy`'s decision; a
request queued here is granted in arrival order as resources free up.

Queued requests are re-planned whenever the cluster view changes (a node
joins or reports free resources): a request the local budget cannot cover
now is sent on to a node that has its shape free, so work never waits behind
a busy node while another could run it (Ray's cluster task manager does the
same).

Dispatching the queue walks it once with a budget of the free resources: a
request that fits takes a worker if one is idle, else waits for one to start;
either way its resources leave the budget, so one free CPU starts one worker
however many requests are queued for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aioray._private.common.resources import ResourceSet
from aioray._proto.aioray import v1 as pb


def _others(view: Iterable[pb.NodeInfo], local_node_id: bytes) -> list[pb.NodeInfo]:
    return [n for n in view if n.alive and n.node_id != local_node_id]


def replan(
    queued: Sequence[ResourceSet],
    local_available: ResourceSet,
    view: Iterable[pb.NodeInfo],
    local_node_id: bytes,
    movable: Sequence[bool] | None = None,
    allowed: Sequence[frozenset[bytes] | None] | None = None,
) -> dict[int, pb.NodeInfo]:
    """Which queued requests (by index) to send on to which node, now.

    The queue is walked in order with the local free resources as a budget, as dispatch walks it:
    a request the budget covers stays (it is granted as soon as a worker is ready). One it does not
    cover goes, if it is `movable` (all are by default), to the first other live node it is
    `allowed` on (its strategy's nodes; all by default) whose free resources, less what this round
    already sends there, fit it; with no such node it stays here.
    """
    others = _others(view, local_node_id)
    budgets = {n.node_id: ResourceSet.from_wire(n.available.amounts) for n in others}
    nodes = {n.node_id: n for n in others}
    budget = local_available
    moves: dict[int, pb.NodeInfo] = {}
    for i, shape in enumerate(queued):
        if shape.fits_in(budget):
            budget = budget - shape
            continue
        if movable is not None and not movable[i]:
            continue
        for node_id, free in budgets.items():
            only = allowed[i] if allowed is not None else None
            if only is not None and node_id not in only:
                continue
            if shape.fits_in(free):
                budgets[node_id] = free - shape
                moves[i] = nodes[node_id]
                break
    return moves


@dataclass(frozen=True)
class DispatchPlan:
    grant: list[int]  # indices of the requests to grant now, in order, each to the next idle worker
    waiting: list[int]  # indices of the requests that stay queued
    workers_needed: int  # requests that fit but found no idle worker


def plan_dispatch(requests: Sequence[ResourceSet], available: ResourceSet, idle_workers: int) -> DispatchPlan:
    grant: list[int] = []
    waiting: list[int] = []
    needed = 0
    budget = available
    for i, shape in enumerate(requests):
        if not shape.fits_in(budget):
            waiting.append(i)
            continue
        budget = budget - shape
        if len(grant) < idle_workers:
            grant.append(i)
        else:
            waiting.append(i)
            needed += 1
    return DispatchPlan(grant, waiting, needed)
