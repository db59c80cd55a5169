"""AIORAY_TASK_EVENTS=0: no process of the cluster records or sends task events."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import aioray
from aioray._private import worker_api
from aioray._private.common import task_events as te
from aioray._private.core_worker import object_ref
from aioray.util import state


@pytest.fixture
def cluster_without_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(te.ENABLED_ENV, "0")  # the raylet and its workers inherit it
    aioray.init(num_cpus=1)
    try:
        yield
    finally:
        aioray.shutdown()


@aioray.remote
def buffer_state() -> tuple[bool, int, int]:
    core = object_ref.current_worker()
    assert core is not None
    return core.task_events.enabled, len(core.task_events), core.event_flusher.sent


def test_nothing_is_recorded_anywhere(cluster_without_events: None) -> None:
    driver = worker_api.require().core
    assert aioray.get([buffer_state.remote() for _ in range(3)], timeout=60) == [(False, 0, 0)] * 3
    assert not driver.task_events.enabled and len(driver.task_events) == 0
    driver.run_sync(driver.flush_events(), timeout=10)
    assert driver.event_flusher.sent == 0
    assert state.list_tasks() == []
