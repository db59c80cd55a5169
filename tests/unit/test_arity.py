"""The submit-time arity check and the countdown that get/wait use over many futures."""

from __future__ import annotations

import asyncio

import pytest

from aioray._private.arity import CallShape
from aioray._private.core_worker.reader import wait_some


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


async def test_wait_some_wakes_after_the_needed_count() -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(5)]
    futures[0].set_result(0)  # already done counts
    waiter = asyncio.ensure_future(wait_some(futures, 3))
    futures[1].set_result(1)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not waiter.done()
    futures[2].set_exception(ValueError("an error counts as done"))
    await asyncio.wait_for(waiter, 1)
    futures[2].exception()


async def test_wait_some_timeout_leaves_no_callbacks_behind() -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await wait_some(futures, 3)
    # The futures belong to the owner and outlive this wait: no countdown may stay attached to them.
    assert all(not fut._callbacks for fut in futures)  # type: ignore[attr-defined]
