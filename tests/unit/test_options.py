"""Options of `@remote`: unknown ones and bad values are refused by name, never ignored.

`tests/integration/test_every_option.py` walks every accepted option (showing its effect) and every
Ray option aioray does not accept (refused)."""

from __future__ import annotations

import pytest

import aioray
from aioray.util.scheduling_strategies import In, NodeAffinitySchedulingStrategy, NodeLabelSchedulingStrategy


def f() -> int:
    return 1


class A:
    pass


def test_unknown_options_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown option.*no_such_option.*valid: "):
        aioray.remote(no_such_option=1)(f)
    with pytest.raises(ValueError, match=r"unknown option.*no_such_option"):
        aioray.remote(f).options(no_such_option=1)
    with pytest.raises(ValueError, match=r"unknown option.*no_such_option"):
        aioray.remote(no_such_option=1)(A)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"scheduling_strategy": "EVERYWHERE"}, "scheduling_strategy must be"),
        ({"scheduling_strategy": 3}, "scheduling_strategy must be"),
        ({"label_selector": ["zone"]}, "label_selector must be a dict"),
        ({"label_selector": {"zone": "in()"}}, "invalid label_selector value"),
        (
            {"label_selector": {"zone": "a"}, "scheduling_strategy": "SPREAD"},
            "label_selector can be combined",
        ),
        ({"memory": -1}, "memory must be a non-negative number"),
        ({"accelerator_type": ""}, "accelerator_type must be a non-empty string"),
        ({"num_gpus": 2.5}, "whole number"),
        ({"placement_group_bundle_index": 0}, "needs placement_group="),
        ({"placement_group": "not a group"}, "must be a PlacementGroup"),
    ],
)
def test_bad_placement_options_are_refused_when_declared(option: dict[str, object], message: str) -> None:
    for target in (f, A):
        with pytest.raises(ValueError, match=message):
            aioray.remote(**option)(target)


def test_strategy_objects_check_their_arguments() -> None:
    with pytest.raises(ValueError, match="Invalid node_id"):
        NodeAffinitySchedulingStrategy("xyz", soft=True)
    with pytest.raises(ValueError, match="_spill_on_unavailable cannot be set"):
        NodeAffinitySchedulingStrategy("ab" * 16, soft=False, _spill_on_unavailable=True)
    with pytest.raises(ValueError, match="_fail_on_unavailable"):
        aioray.remote(
            scheduling_strategy=NodeAffinitySchedulingStrategy("ab" * 16, False, _fail_on_unavailable=True)
        )(f)
    with pytest.raises(ValueError, match="cannot both be empty"):
        NodeLabelSchedulingStrategy({})
    with pytest.raises(ValueError, match="must be In, NotIn, Exists or DoesNotExist"):
        NodeLabelSchedulingStrategy({"zone": "a"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one value"):
        In()
