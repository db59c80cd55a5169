"""From the options of a task or actor to where it may run: its `Placement`.

Resources (``num_cpus``, ``num_gpus``, ``memory``, ``resources``, ``accelerator_type``), the
scheduling strategy (``"DEFAULT"``, ``"SPREAD"``, node affinity, node labels, ``label_selector``)
and placement groups (``PlacementGroupSchedulingStrategy`` or the older ``placement_group=``
options) become one `LeaseShape`. A placement group is expressed in the resource names (see
`common.bundles`), so the raylets schedule it like any other shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aioray._private import strategies as ss
from aioray._private.common import bundles
from aioray._private.common import proto_enums as E
from aioray._private.common.lease_shape import LeaseShape, Placement
from aioray._private.common.resources import ResourceSet, task_resources
from aioray._proto.aioray import v1 as pb

Kind = pb.SchedulingStrategyKind

PLACEMENT_OPTIONS = (
    "scheduling_strategy",
    "label_selector",
    "placement_group",
    "placement_group_bundle_index",
    "placement_group_capture_child_tasks",
)
# A node has this much of "accelerator_type:<type>" per accelerator type it has (as in Ray).
ACCELERATOR_TYPE_PREFIX = "accelerator_type:"
ACCELERATOR_TYPE_AMOUNT = 0.001

_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?"
_SELECTOR = re.compile(
    rf"^(?P<neg>!)?(?:(?P<op>in)\((?P<list>{_LABEL}(?:, ?{_LABEL})*)\)|(?P<one>{_LABEL}))$"
)


def parse_label_selector(selector: Any) -> list[pb.LabelConstraint]:
    """Ray's ``label_selector``: ``{"key": "value" | "!value" | "in(a, b)" | "!in(a, b)"}``."""
    if not isinstance(selector, dict):
        raise ValueError(f"label_selector must be a dict of label names to selectors, got {selector!r}")
    constraints = []
    for key, value in selector.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"label_selector keys must be non-empty strings, got {key!r}")
        if not isinstance(value, str):
            raise ValueError(f"the label_selector value for {key!r} must be a string, got {value!r}")
        m = _SELECTOR.match(value)
        if m is None:
            raise ValueError(
                f"invalid label_selector value {value!r} for {key!r}: expected 'value', '!value', "
                "'in(a, b)' or '!in(a, b)' with values of letters, digits, '-', '_' and '.'"
            )
        values = [v.strip() for v in m.group("list").split(",")] if m.group("op") else [m.group("one")]
        constraints.append(
            pb.LabelConstraint(key=key, op=E.LABEL_NOT_IN if m.group("neg") else E.LABEL_IN, values=values)
        )
    return constraints


def _label_constraints(expressions: list[ss._LabelMatchExpression]) -> list[pb.LabelConstraint]:
    out = []
    for e in expressions:
        op = e.operator
        if isinstance(op, ss.In):
            out.append(pb.LabelConstraint(key=e.key, op=E.LABEL_IN, values=op.values))
        elif isinstance(op, ss.NotIn):
            out.append(pb.LabelConstraint(key=e.key, op=E.LABEL_NOT_IN, values=op.values))
        elif isinstance(op, ss.Exists):
            out.append(pb.LabelConstraint(key=e.key, op=E.LABEL_EXISTS))
        else:
            out.append(pb.LabelConstraint(key=e.key, op=E.LABEL_DOES_NOT_EXIST))
    return out


def _placement_group_of(options: Mapping[str, Any]) -> tuple[Any, int, bool] | None:
    """(group, bundle index, capture) from the strategy or the older ``placement_group=`` options."""
    strategy = options.get("scheduling_strategy")
    if isinstance(strategy, ss.PlacementGroupSchedulingStrategy):
        return (
            strategy.placement_group,
            strategy.placement_group_bundle_index,
            bool(strategy.placement_group_capture_child_tasks),
        )
    group = options.get("placement_group", "default")
    if group in ("default", None):
        for key, default in (
            ("placement_group_bundle_index", -1),
            ("placement_group_capture_child_tasks", False),
        ):
            value = options.get(key)
            if value is not None and (value != default or type(value) is not type(default)):
                raise ValueError(f"{key} needs placement_group= (or a PlacementGroupSchedulingStrategy)")
        return None
    if strategy not in (None, "DEFAULT"):
        raise ValueError("placement_group= cannot be combined with scheduling_strategy=")
    index = options.get("placement_group_bundle_index", -1)
    return group, -1 if index is None else index, bool(options.get("placement_group_capture_child_tasks"))


def _check_group(group: Any, index: Any) -> bytes:
    from aioray.util.placement_group import PlacementGroup

    if not isinstance(group, PlacementGroup):
        raise ValueError(f"placement_group must be a PlacementGroup, got {group!r}")
    if not isinstance(index, int) or isinstance(index, bool) or index < -1:
        raise ValueError(f"placement_group_bundle_index must be an integer >= -1, got {index!r}")
    group._wait_for_own_changes()
    if index >= group.bundle_count:
        raise ValueError(
            f"placement_group_bundle_index {index} is out of range: the group has {group.bundle_count} bundles"
        )
    pg_id: bytes = group.id.binary()
    return pg_id


def _strategy(options: Mapping[str, Any]) -> pb.SchedulingStrategy | None:
    strategy = options.get("scheduling_strategy")
    selector = options.get("label_selector")
    message: pb.SchedulingStrategy | None
    if strategy is None or strategy == "DEFAULT" or isinstance(strategy, ss.PlacementGroupSchedulingStrategy):
        message = None
    elif strategy == "SPREAD":
        message = pb.SchedulingStrategy(kind=E.STRATEGY_SPREAD)
    elif isinstance(strategy, ss.NodeAffinitySchedulingStrategy):
        if strategy._fail_on_unavailable:
            raise ValueError(
                "NodeAffinitySchedulingStrategy(_fail_on_unavailable=True) is not supported by aioray: "
                "a hard affinity waits for its node's resources"
            )
        message = pb.SchedulingStrategy(
            kind=E.STRATEGY_NODE_AFFINITY,
            node_id=bytes.fromhex(strategy.node_id),
            soft=strategy.soft,
            spill_on_unavailable=strategy._spill_on_unavailable,
        )
    elif isinstance(strategy, ss.NodeLabelSchedulingStrategy):
        message = pb.SchedulingStrategy(
            kind=E.STRATEGY_NODE_LABEL,
            hard=_label_constraints(strategy.hard),
            soft_labels=_label_constraints(strategy.soft),
        )
    else:
        raise ValueError(
            f"scheduling_strategy must be 'DEFAULT', 'SPREAD', a PlacementGroupSchedulingStrategy, a "
            f"NodeAffinitySchedulingStrategy or a NodeLabelSchedulingStrategy, got {strategy!r}"
        )
    if selector:
        constraints = parse_label_selector(selector)
        if message is None:
            message = pb.SchedulingStrategy(kind=E.STRATEGY_NODE_LABEL, hard=constraints)
        elif message.kind == Kind.NODE_LABEL:
            message.hard = [*message.hard, *constraints]
        else:
            raise ValueError("label_selector can be combined with the DEFAULT strategy or node labels only")
    return message


def placement_of(
    options: Mapping[str, Any],
    default_cpus: float,
    inherited: tuple[bytes, int, bool] | None = None,
    runtime_env: bytes = b"",
) -> Placement:
    """The placement of a task or actor with `options`. `inherited` is the placement group of the
    calling task when that one captures its children: they run in it unless they chose a strategy."""
    resources = task_resources(options.get("num_cpus"), options.get("num_gpus"), options.get("resources"), 0)
    gpus = resources.get("GPU")
    if gpus > 1 and gpus != int(gpus):
        raise ValueError(
            f"num_gpus above 1 must be a whole number (GPUs are shared only below 1), got {gpus}"
        )
    num_cpus = options.get("num_cpus")
    amounts = resources.to_dict()
    amounts["CPU"] = default_cpus if num_cpus is None else num_cpus
    memory = options.get("memory")
    if memory is not None:
        if not isinstance(memory, int | float) or isinstance(memory, bool) or memory < 0:
            raise ValueError(f"memory must be a non-negative number of bytes, got {memory!r}")
        amounts["memory"] = float(memory)
    accelerator = options.get("accelerator_type")
    if accelerator is not None:
        if not isinstance(accelerator, str) or not accelerator:
            raise ValueError(f"accelerator_type must be a non-empty string, got {accelerator!r}")
        amounts[ACCELERATOR_TYPE_PREFIX + accelerator] = ACCELERATOR_TYPE_AMOUNT
    shape = ResourceSet(amounts)
    strategy = _strategy(options)
    group = _placement_group_of(options)
    placement_group: tuple[bytes, int, bool] | None = None
    if group is not None:
        pg_id = _check_group(group[0], group[1])
        placement_group = (pg_id, group[1], group[2])
    elif (
        inherited is not None
        and inherited[2]
        and options.get("scheduling_strategy") is None
        and strategy is None
    ):
        placement_group = (inherited[0], -1, True)
    if placement_group is not None:
        shape = bundles.shape_in_bundle(shape, placement_group[0], placement_group[1])
    wire = bytes(strategy) if strategy is not None else b""
    return Placement(LeaseShape(shape, wire, runtime_env), float(amounts["CPU"]), placement_group)


__all__ = ["PLACEMENT_OPTIONS", "parse_label_selector", "placement_of"]
