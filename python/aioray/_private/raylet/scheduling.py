"""The raylet's scheduling policy (seed 000, protocols b and c), free of I/O so it can be tested alone.

A lease request for a resource shape is
- INFEASIBLE when no live node of the cluster has the shape in total;
- spilled back to another node when this node cannot fit it right now and
  another node has it free (unless the request was spilled here already), or
  when this node can never fit it (nodes with the shape free first);
- otherwise queued here, and granted in arrival order as resources free up.

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


def feasible_somewhere(
    shape: ResourceSet, local_total: ResourceSet, view: Iterable[pb.NodeInfo], local_node_id: bytes
) -> bool:
    if shape.fits_in(local_total):
        return True
    return any(shape.fits_in(ResourceSet.from_wire(n.total.amounts)) for n in _others(view, local_node_id))


def spillback_target(
    shape: ResourceSet,
    local_available: ResourceSet,
    local_total: ResourceSet,
    view: Iterable[pb.NodeInfo],
    local_node_id: bytes,
    no_spillback: bool,
) -> str | None:
    """The raylet address to send a feasible request on to, or None to queue it here."""
    others = _others(view, local_node_id)
    if not no_spillback and not shape.fits_in(local_available):
        # Full here: spill back to a node with the shape free right now, if there is one.
        for n in others:
            if shape.fits_in(ResourceSet.from_wire(n.available.amounts)):
                return n.address
    if not shape.fits_in(local_total):
        able = [n for n in others if shape.fits_in(ResourceSet.from_wire(n.total.amounts))]
        # Nodes with the shape free right now first (a stable sort keeps the view's order otherwise).
        able.sort(key=lambda n: not shape.fits_in(ResourceSet.from_wire(n.available.amounts)))
        if able:
            return able[0].address
    return None


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
