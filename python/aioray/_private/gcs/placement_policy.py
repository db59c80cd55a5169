"""Where the bundles of a placement group go: the GCS's placement policy, free of I/O.

`place` assigns the bundles not placed yet to live nodes, within the nodes' free resources, as the
group's strategy asks (Ray's semantics):

- PACK: as few nodes as possible: all on one node if one has room, else filling the nodes already
  used first (soft: it spans nodes rather than wait);
- SPREAD: each bundle on the node holding fewest of the group's bundles so far (soft: it shares
  nodes rather than wait);
- STRICT_PACK: every bundle on one node (the node of the bundles already placed, if any);
- STRICT_SPREAD: every bundle on a node of its own, also apart from the bundles already placed (an
  exact bipartite matching, so a feasible spread is always found).

A bundle with a label selector only goes to nodes whose labels match it. When nothing fits, the
outcome says why, and whether the group could not fit even on idle nodes (infeasible) or only
waits for resources to free up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aioray._private.common.labels import constraints_of, matches
from aioray._private.common.resources import ResourceSet
from aioray._proto.aioray import v1 as pb

Strategy = pb.PlacementGroupInfoStrategy
Op = pb.LabelConstraintOp


@dataclass(frozen=True)
class Candidate:
    """A live node as the policy sees it."""

    node_id: bytes
    available: ResourceSet
    total: ResourceSet
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    assignment: dict[int, bytes] | None  # bundle index -> node id, for the bundles placed now
    reason: str = ""  # why there is no assignment
    infeasible: bool = False  # no assignment even if every node were idle


def _headroom(free: ResourceSet, total: ResourceSet) -> float:
    """How empty a node is, 0..1 on average over its resources (so bytes of memory weigh no more
    than CPUs)."""
    amounts = total.to_dict()
    if not amounts:
        return 0.0
    return sum(max(0.0, free.get(k)) / v for k, v in amounts.items() if v > 0) / len(amounts)


def _size(shape: ResourceSet, scale: Mapping[str, float]) -> float:
    return sum(v / scale[k] if scale.get(k) else v for k, v in shape.to_dict().items())


def _sum(shapes: Sequence[ResourceSet]) -> ResourceSet:
    out = ResourceSet()
    for s in shapes:
        out = out + s
    return out


def _match(pending: list[int], options: Mapping[int, list[bytes]]) -> dict[int, bytes] | None:
    """A node per bundle, no node twice (Kuhn's augmenting paths); `options` in preference order."""
    owner: dict[bytes, int] = {}

    def augment(i: int, seen: set[bytes]) -> bool:
        for node in options[i]:
            if node in seen:
                continue
            seen.add(node)
            if node not in owner or augment(owner[node], seen):
                owner[node] = i
                return True
        return False

    for i in pending:
        if not augment(i, set()):
            return None
    return {i: node for node, i in owner.items()}


def _assign(
    shapes: Sequence[ResourceSet],
    strategy: int,
    nodes: Sequence[Candidate],
    placed: Mapping[int, bytes],
    allowed: Callable[[int, Candidate], bool],
    capacity: Callable[[Candidate], ResourceSet],
) -> tuple[dict[int, bytes] | None, str]:
    pending = [i for i in range(len(shapes)) if i not in placed]
    if not pending:
        return {}, ""
    if not nodes:
        return None, "no node is alive"
    free = {n.node_id: capacity(n) for n in nodes}
    order = {n.node_id: k for k, n in enumerate(nodes)}
    if len(pending) > 1:
        scale: dict[str, float] = {}
        for n in nodes:
            for k, v in n.total.to_dict().items():
                scale[k] = max(scale.get(k, 0.0), v)
        # Large bundles first: first-fit-decreasing packs far better than the given order.
        pending.sort(key=lambda i: -_size(shapes[i], scale))
    used = list(dict.fromkeys(placed.values()))

    if strategy == Strategy.STRICT_SPREAD:
        taken = set(placed.values())
        options = {}
        for i in pending:
            fit = [
                n
                for n in nodes
                if n.node_id not in taken and allowed(i, n) and shapes[i].fits_in(free[n.node_id])
            ]
            fit.sort(key=lambda n: -_headroom(free[n.node_id], n.total))
            options[i] = [n.node_id for n in fit]
        matched = _match(pending, options)
        if matched is None:
            need = len(pending) + len(taken)
            return None, (
                f"STRICT_SPREAD needs {need} distinct nodes, one per bundle, each with its bundle free; "
                f"{len(nodes)} node(s) are alive"
            )
        return matched, ""

    if strategy in (Strategy.PACK, Strategy.STRICT_PACK):
        together = _sum([shapes[i] for i in pending])
        fit = [
            n
            for n in nodes
            if together.fits_in(free[n.node_id])
            and all(allowed(i, n) for i in pending)
            and (strategy == Strategy.PACK or not used or n.node_id == used[0])
        ]
        if len(fit) > 1:
            # The node already holding bundles, then the tightest fit (leaves big holes elsewhere).
            fit.sort(
                key=lambda n: (
                    n.node_id not in used,
                    _headroom(free[n.node_id] - together, n.total),
                    order[n.node_id],
                )
            )
        if fit:
            return dict.fromkeys(pending, fit[0].node_id), ""
        if strategy == Strategy.STRICT_PACK:
            return None, f"STRICT_PACK needs one node with {together.to_dict()} free"

    assignment: dict[int, bytes] = {}
    count = {n.node_id: 0 for n in nodes}
    for node_id in placed.values():
        if node_id in count:
            count[node_id] += 1
    for i in pending:
        fit = [n for n in nodes if allowed(i, n) and shapes[i].fits_in(free[n.node_id])]
        if not fit:
            return None, f"bundle {i} ({shapes[i].to_dict()}) fits on no node"
        if strategy == Strategy.SPREAD:
            fit.sort(key=lambda n: (count[n.node_id], -_headroom(free[n.node_id], n.total), order[n.node_id]))
        else:
            fit.sort(
                key=lambda n: (count[n.node_id] == 0, -_headroom(free[n.node_id], n.total), order[n.node_id])
            )
        chosen = fit[0].node_id
        assignment[i] = chosen
        free[chosen] = free[chosen] - shapes[i]
        count[chosen] += 1
    return assignment, ""


def place(
    shapes: Sequence[ResourceSet],
    strategy: int,
    nodes: Sequence[Candidate],
    placed: Mapping[int, bytes] | None = None,
    selectors: Sequence[Sequence[pb.LabelConstraint]] = (),
) -> Outcome:
    """Assigns the bundles (`shapes`, by index) missing from `placed` (index -> node id) to
    `nodes` (live ones), within their available resources."""
    placed = dict(placed or {})
    read = [constraints_of(s) for s in selectors]

    def allowed(i: int, n: Candidate) -> bool:
        return i >= len(read) or matches(n.labels, read[i])

    assignment, reason = _assign(shapes, strategy, nodes, placed, allowed, lambda n: n.available)
    if assignment is not None:
        return Outcome(assignment)
    # Would it fit if the nodes were idle (less the group's own bundles already placed)?
    idle = {n.node_id: n.total for n in nodes}
    for i, node_id in placed.items():
        if node_id in idle:
            idle[node_id] = idle[node_id] - shapes[i]
    ever, _ = _assign(shapes, strategy, nodes, placed, allowed, lambda n: idle[n.node_id])
    if ever is None:
        return Outcome(None, f"infeasible: {reason}", infeasible=True)
    return Outcome(None, f"waiting for resources: {reason}")


__all__ = ["Candidate", "Outcome", "place"]
