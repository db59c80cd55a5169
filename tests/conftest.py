"""Shared fixtures: unique names for shared-memory segments, and a leak check."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

# Every store segment this test session creates carries this tag (raylets read it from the
# environment), so leak checks see our segments only, even with another session running.
SESSION_TAG = f"t{os.getpid()}"
os.environ["AIORAY_SESSION_TAG"] = SESSION_TAG


@pytest.fixture
def shm_name() -> Iterator[str]:
    """A fresh segment name; the test fails if the segment outlives it."""
    name = f"aioray-test-{uuid.uuid4().hex[:12]}"
    yield name
    path = f"/dev/shm/{name}"
    if os.path.exists(path):
        os.unlink(path)
        pytest.fail(f"shared-memory segment {name} was left behind")
