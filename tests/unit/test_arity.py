"""The submit-time arity check: a wrong call fails at .remote() with bind's message."""

from __future__ import annotations

import pytest

from aioray._private.arity import CallShape


def f(a, b, c=3):
    return a + b + c


def g(a, *rest, key):
    return a


def h(*args, **kwargs):
    return args


def test_plain_positional_calls_within_bounds_pass() -> None:
    shape = CallShape.of(f)
    shape.check("f", (1, 2), {})
    shape.check("f", (1, 2, 3), {})
    shape.check("f", (1,), {"b": 2})  # keywords go through bind


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1,), {}, "missing a required argument: 'b'"),
        ((1, 2, 3, 4), {}, "too many positional arguments"),
        ((1, 2), {"d": 4}, "got an unexpected keyword argument 'd'"),
    ],
)
def test_wrong_calls_get_binds_message_with_the_label(args, kwargs, message) -> None:
    with pytest.raises(TypeError, match=rf"^f\.remote\(\): {message}"):
        CallShape.of(f).check("f", args, kwargs)


def test_required_keyword_only_parameter_is_never_skipped() -> None:
    shape = CallShape.of(g)
    with pytest.raises(TypeError, match="missing a required argument: 'key'"):
        shape.check("g", (1, 2, 3), {})
    shape.check("g", (1, 2, 3), {"key": 0})


def test_var_positional_accepts_any_count_and_no_signature_accepts_anything() -> None:
    CallShape.of(h).check("h", tuple(range(100)), {"x": 1})
    CallShape(None).check("builtin", (1, 2, 3), {"x": 1})
