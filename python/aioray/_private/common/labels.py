"""Node labels against label constraints (Ray's label selectors), for the raylet's scheduling
policy and the GCS's placement of bundles alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aioray._proto.aioray import v1 as pb

Op = pb.LabelConstraintOp

# (key, op, values): read once from the message, since a protocol field costs microseconds to read
# and a decision reads the constraints once per node.
Constraint = tuple[str, int, frozenset[str]]


def constraints_of(constraints: Sequence[pb.LabelConstraint]) -> list[Constraint]:
    return [(c.key, int(c.op), frozenset(c.values)) for c in constraints]


def matches(labels: Mapping[str, str], constraints: Sequence[Constraint]) -> bool:
    """Whether a node with `labels` meets every constraint (a missing label is "not in" anything)."""
    for key, op, values in constraints:
        value = labels.get(key)
        if op == Op.IN:
            ok = value is not None and value in values
        elif op == Op.NOT_IN:
            ok = value is None or value not in values
        elif op == Op.EXISTS:
            ok = value is not None
        else:
            ok = value is None
        if not ok:
            return False
    return True


__all__ = ["Constraint", "constraints_of", "matches"]
