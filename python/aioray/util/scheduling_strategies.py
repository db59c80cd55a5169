"""Where tasks and actors run, as in ``ray.util.scheduling_strategies``.

Pass one as ``scheduling_strategy=`` to ``@remote`` or ``.options``, or the strings ``"DEFAULT"``
(prefer the local node, pack nodes below half their CPUs, then spread) and ``"SPREAD"`` (the
least loaded node).
"""

from aioray._private.strategies import (
    DoesNotExist,
    Exists,
    In,
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    NotIn,
    PlacementGroupSchedulingStrategy,
    SchedulingStrategyT,
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
