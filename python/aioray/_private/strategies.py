"""The scheduling strategies of ``aioray.util.scheduling_strategies`` (defined here, free of
imports from the rest of aioray, so that option parsing can use them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aioray.util.placement_group import PlacementGroup


class PlacementGroupSchedulingStrategy:
    """Run in a placement group's bundle (``placement_group_bundle_index``, -1: any bundle).

    With ``placement_group_capture_child_tasks``, the tasks and actors it starts without a strategy
    of their own run in the group too."""

    def __init__(
        self,
        placement_group: PlacementGroup,
        placement_group_bundle_index: int = -1,
        placement_group_capture_child_tasks: bool | None = None,
    ) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex, as ``aioray.nodes()`` lists them).

    With ``soft=False`` the work waits for that node's resources, and fails if the node is dead or
    can never fit it. With ``soft=True`` it runs elsewhere when the node is dead or cannot fit it,
    and with ``_spill_on_unavailable`` also when the node is only busy."""

    def __init__(
        self,
        node_id: str,
        soft: bool,
        _spill_on_unavailable: bool = False,
        _fail_on_unavailable: bool = False,
    ) -> None:
        if not isinstance(node_id, str):
            node_id = node_id.hex()
        try:
            raw = bytes.fromhex(node_id)
        except ValueError:
            raw = b""
        if not raw or not any(raw):
            raise ValueError(
                f"Invalid node_id {node_id!r}: a node id is a hex string, as aioray.nodes() lists them"
            )
        if _spill_on_unavailable and not soft:
            raise ValueError("_spill_on_unavailable cannot be set when soft is False")
        if _fail_on_unavailable and soft:
            raise ValueError("_fail_on_unavailable cannot be set when soft is True")
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable


def _check_values(values: tuple[str, ...], operator: str) -> list[str]:
    if not values:
        raise ValueError(f'{operator} needs at least one value: e.g. {operator}("value1", "value2")')
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"value {i} of {operator} must be a str, got {value!r} of type {type(value)}")
    return list(values)


class In:
    """The label's value is one of these."""

    def __init__(self, *values: str) -> None:
        self.values = _check_values(values, "In")


class NotIn:
    """The label is missing, or its value is none of these."""

    def __init__(self, *values: str) -> None:
        self.values = _check_values(values, "NotIn")


class Exists:
    """The node has the label."""


class DoesNotExist:
    """The node does not have the label."""


LabelOperator = In | NotIn | Exists | DoesNotExist


class _LabelMatchExpression:
    def __init__(self, key: str, operator: LabelOperator) -> None:
        self.key = key
        self.operator = operator


def _expressions(expressions: dict[str, LabelOperator] | None, param: str) -> list[_LabelMatchExpression]:
    if expressions is None:
        return []
    if not isinstance(expressions, dict):
        raise ValueError(f'{param} must be a dict (e.g. {{"key1": In("value1")}}), got {type(expressions)}')
    out = []
    for key, operator in expressions.items():
        if not isinstance(key, str):
            raise ValueError(f"the keys of {param} must be str, got {key!r}")
        if not isinstance(operator, In | NotIn | Exists | DoesNotExist):
            raise ValueError(
                f"the value for {key!r} in {param} must be In, NotIn, Exists or DoesNotExist, got {operator!r}"
            )
        out.append(_LabelMatchExpression(key, operator))
    return out


class NodeLabelSchedulingStrategy:
    """Run on a node whose labels (``aioray start --labels``) match every ``hard`` expression,
    preferring those that also match the ``soft`` ones::

        NodeLabelSchedulingStrategy({"region": In("us", "eu"), "gpu": Exists()}, soft={"spot": In("no")})
    """

    def __init__(
        self,
        hard: dict[str, LabelOperator] | None,
        *,
        soft: dict[str, LabelOperator] | None = None,
    ) -> None:
        self.hard = _expressions(hard, "hard")
        self.soft = _expressions(soft, "soft")
        if not (self.hard or self.soft):
            raise ValueError(
                "the hard and soft expressions of NodeLabelSchedulingStrategy cannot both be empty"
            )


SchedulingStrategyT = (
    None
    | str
    | PlacementGroupSchedulingStrategy
    | NodeAffinitySchedulingStrategy
    | NodeLabelSchedulingStrategy
)

__all__ = [
    "DoesNotExist",
    "Exists",
    "In",
    "NodeAffinitySchedulingStrategy",
    "NodeLabelSchedulingStrategy",
    "NotIn",
    "PlacementGroupSchedulingStrategy",
    "SchedulingStrategyT",
]
