"""Options of `@remote`: Ray's options aioray does not implement yet are refused, never ignored."""

from __future__ import annotations

import pytest

import aioray


def f() -> int:
    return 1


class A:
    pass


@pytest.mark.parametrize(
    "option",
    [
        {"scheduling_strategy": "SPREAD"},
        {"runtime_env": {"env_vars": {"X": "1"}}},
        {"memory": 1 << 30},
    ],
)
def test_options_that_would_be_ignored_are_refused(option: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="not supported by aioray yet"):
        aioray.remote(**option)(f)
    with pytest.raises(ValueError, match="not supported by aioray yet"):
        aioray.remote(**option)(A)
    with pytest.raises(ValueError, match="not supported by aioray yet"):
        aioray.remote(f).options(**option)


@pytest.mark.parametrize(
    "option",
    [{"scheduling_strategy": "DEFAULT"}, {"scheduling_strategy": None}, {"runtime_env": {}}, {"memory": 0}],
)
def test_their_defaults_are_accepted(option: dict[str, object]) -> None:
    aioray.remote(**option)(f)
    aioray.remote(**option)(A)


def test_unknown_options_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown option.*no_such_option.*valid: "):
        aioray.remote(no_such_option=1)(f)


def test_options_aioray_does_not_know_are_refused_by_name() -> None:
    """`label_selector` (node labels come with issue 15) and any other unknown option: a clear error."""
    for target in (f, A):
        with pytest.raises(ValueError, match=r"unknown option.*label_selector"):
            aioray.remote(label_selector={"zone": "a"})(target)
    with pytest.raises(ValueError, match=r"unknown option.*no_such_option"):
        aioray.remote(f).options(no_such_option=1)
