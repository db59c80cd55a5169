"""Where a lease request runs (seed 000, protocol b): Ray's scheduling strategies, free of I/O.

`decide` takes the request's shape and strategy, this node and the cluster view, and says whether
to queue the request here, send it on to another node (spillback), or refuse it as infeasible:

- DEFAULT is Ray's hybrid policy. Among the nodes that have the shape free now, a node whose
  utilisation (its most used resource) is below ``SPREAD_THRESHOLD`` counts as empty, so work
  packs onto the receiving node and then onto others in view order until each is half used, and
  spreads by least utilisation after that. With no node free now, the request queues here if this
  node can ever run it, else goes to the least used node that can.
- SPREAD picks the least utilised node with the shape free, rotating among equals.
- NODE_AFFINITY runs on its node, waiting for its resources. If that node is dead, unknown or can
  never fit the shape, a hard affinity is infeasible and a soft one falls back to DEFAULT; a soft
  one with ``spill_on_unavailable`` also falls back while the node is only busy.
- NODE_LABEL keeps to the nodes whose labels match every hard constraint and prefers those that
  match the soft ones, then decides as DEFAULT among them.

A shape that names placement-group resources (``common.bundles``) that no node has yet waits here
for its group's bundles to be committed rather than failing: the group may still be pending.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aioray._private.common.labels import constraints_of, matches
from aioray._private.common.resources import ResourceSet
from aioray._proto.aioray import v1 as pb

SPREAD_THRESHOLD = 0.5
Kind = pb.SchedulingStrategyKind
Op = pb.LabelConstraintOp

QUEUE = "queue"
SPILL = "spill"
INFEASIBLE = "infeasible"


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # QUEUE here, SPILL to `address`, or INFEASIBLE (`message` says why)
    address: str = ""
    message: str = ""


@dataclass(slots=True)
class Node:
    """A node as the policy sees it: plain Python values (a protocol message's fields cost
    microseconds each to read, and a decision reads every node's)."""

    node_id: bytes
    address: str
    total: ResourceSet
    available: ResourceSet
    labels: Mapping[str, str]
    local: bool = False
    _utilization: float = -1.0

    @classmethod
    def of(cls, info: pb.NodeInfo) -> Node:
        return cls(
            info.node_id,
            info.address,
            ResourceSet.from_wire(info.total.amounts),
            ResourceSet.from_wire(info.available.amounts),
            dict(info.labels),
        )

    def utilization(self) -> float:
        """The share of its most used resource in use (placement-group bundles excluded)."""
        if self._utilization < 0:
            worst = 0.0
            free = self.available
            for name, total in self.total.to_dict().items():
                if total > 0 and "_group_" not in name:
                    worst = max(worst, (total - free.get(name)) / total)
            self._utilization = worst
        return self._utilization


def nodes_of(others: Iterable[Node], local: Node) -> list[Node]:
    """The live nodes, this node first (with its own, current, figures)."""
    return [local, *(n for n in others if n.node_id != local.node_id)]


def _names_a_group(shape: ResourceSet) -> bool:
    return any("_group_" in name for name in shape.to_dict())


def _go(node: Node) -> Decision:
    return Decision(QUEUE) if node.local else Decision(SPILL, node.address)


def _hybrid(shape: ResourceSet, feasible: list[Node]) -> Node:
    free = [n for n in feasible if shape.fits_in(n.available)]
    if free:
        scores = [0.0 if (u := n.utilization()) < SPREAD_THRESHOLD else u for n in free]
        return free[min(range(len(free)), key=scores.__getitem__)]  # the first of the best: local first
    for n in feasible:
        if n.local:
            return n
    return min(feasible, key=Node.utilization)


class SpreadCursor:
    """Rotates SPREAD's choice among equally used nodes, so successive requests go round."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, shape: ResourceSet, feasible: list[Node]) -> Node:
        free = [n for n in feasible if shape.fits_in(n.available)] or feasible
        ordered = sorted(free, key=lambda n: n.node_id)
        start = next(self._counter) % len(ordered)
        rotated = ordered[start:] + ordered[:start]
        return min(rotated, key=Node.utilization)


def _describe(constraints: Sequence[pb.LabelConstraint]) -> str:
    names = {Op.IN: "in", Op.NOT_IN: "not in", Op.EXISTS: "exists", Op.DOES_NOT_EXIST: "does not exist"}
    return ", ".join(
        f"{c.key} {names[c.op]}{' ' + str(list(c.values)) if c.values else ''}" for c in constraints
    )


def decide(
    shape: ResourceSet,
    strategy: pb.SchedulingStrategy,
    nodes: list[Node],
    no_spillback: bool,
    spread: SpreadCursor,
) -> Decision:
    """Where the request goes. `nodes` are the live nodes, this node first (`nodes_of`)."""
    local = nodes[0]
    kind: int = strategy.kind
    candidates = nodes
    preferred: list[Node] = []
    if kind == Kind.NODE_AFFINITY:
        target = next((n for n in nodes if n.node_id == strategy.node_id), None)
        if target is None or not shape.fits_in(target.total):
            if not strategy.soft:
                why = "is dead or unknown" if target is None else f"has only {target.total.to_dict()}"
                return Decision(
                    INFEASIBLE, message=f"node {strategy.node_id.hex()} {why} (hard node affinity)"
                )
            kind = Kind.DEFAULT
        elif strategy.soft and strategy.spill_on_unavailable and not shape.fits_in(target.available):
            kind = Kind.DEFAULT
        else:
            return _go(target)
    elif kind == Kind.NODE_LABEL:
        hard, soft = constraints_of(strategy.hard), constraints_of(strategy.soft_labels)
        candidates = [n for n in nodes if matches(n.labels, hard)]
        preferred = [n for n in candidates if matches(n.labels, soft)] if soft else []
    feasible = [n for n in candidates if shape.fits_in(n.total)]
    if not feasible:
        if _names_a_group(shape) and kind != Kind.NODE_LABEL:
            return Decision(QUEUE)  # the group's bundles are not committed (yet): wait for them
        where = f" among the nodes with labels {_describe(strategy.hard)}" if kind == Kind.NODE_LABEL else ""
        return Decision(INFEASIBLE, message=f"no live node{where} has {shape.to_dict()}")
    if no_spillback and local in feasible:
        return Decision(QUEUE)  # sent here already: stay (a later re-plan may still move it)
    if kind == Kind.SPREAD:
        return _go(spread.pick(shape, feasible))
    if preferred:
        best = [n for n in preferred if shape.fits_in(n.total)]
        if best and (
            any(shape.fits_in(n.available) for n in best)
            or not any(shape.fits_in(n.available) for n in feasible)
        ):
            feasible = best
    return _go(_hybrid(shape, feasible))


def allowed_nodes(strategy: pb.SchedulingStrategy, nodes: Iterable[Node]) -> frozenset[bytes] | None:
    """The nodes a queued request may be moved to by a re-plan (None: any)."""
    if strategy.kind == Kind.NODE_AFFINITY and not strategy.soft:
        return frozenset((strategy.node_id,))
    if strategy.kind == Kind.NODE_LABEL:
        hard = constraints_of(strategy.hard)
        return frozenset(n.node_id for n in nodes if matches(n.labels, hard))
    return None


__all__ = ["Decision", "Node", "SpreadCursor", "allowed_nodes", "decide", "matches", "nodes_of"]
