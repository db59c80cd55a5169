"""Resource arithmetic and the value frame format."""

from __future__ import annotations

import numpy as np
import pytest

from aioray._private.common import serialization
from aioray._private.common.resources import ResourceSet, task_resources


def test_fractional_resources_do_not_drift() -> None:
    total = ResourceSet({"CPU": 1})
    tenth = ResourceSet({"CPU": 0.1})
    left = total
    for _ in range(10):
        assert tenth.fits_in(left)
        left = left - tenth
    assert left.get("CPU") == 0 and not tenth.fits_in(left)
    for _ in range(10):
        left = left + tenth
    assert left == total


def test_task_shapes() -> None:
    assert task_resources(None, None, None, 1).to_dict() == {"CPU": 1}
    assert task_resources(0, 1, {"accel": 2}, 1).to_dict() == {"GPU": 1, "accel": 2}
    assert ResourceSet({"CPU": 0}).fits_in(ResourceSet())
    with pytest.raises(ValueError, match="num_cpus"):
        task_resources(None, None, {"CPU": 1}, 1)
    with pytest.raises(ValueError, match="negative"):
        ResourceSet({"x": -1})


def test_frames_carry_out_of_band_buffers_aligned() -> None:
    arr = np.arange(1000, dtype=np.float64)
    frame = serialization.serialize({"a": arr, "b": "text"})
    assert len(frame.buffers) == 1 and frame.size % 64 == 0
    data = frame.to_bytes()
    value, is_error = serialization.deserialize(data)
    assert not is_error and value["b"] == "text"
    assert np.array_equal(value["a"], arr)
    assert not value["a"].flags.writeable, "arrays read from a frame are views, not copies"


def test_error_frames_and_unpicklable_values() -> None:
    frame = serialization.serialize(ValueError("x"), is_error=True).to_bytes()
    assert serialization.peek_flags(frame) == (0, True)
    value, is_error = serialization.deserialize(frame)
    assert is_error and isinstance(value, ValueError)
    import threading

    with pytest.raises(serialization.SerializationError, match="could not serialize"):
        serialization.serialize(threading.Lock())
