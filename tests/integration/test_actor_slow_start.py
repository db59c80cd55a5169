"""Calls to an actor that takes longer to come up than the GCS's wait for it to settle wait for it, as in
Ray: 100 actors created at once on 2 cores (benches/actor_scale.py) queue behind each other's worker
starts for longer than that wait, and their calls failed with "did not come back within 60s"."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import aioray
from aioray._private.core_worker import actor_submitter


@pytest.fixture
def short_settle_wait(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The driver asks the GCS to wait this long for the actor to settle, then asks again.
    monkeypatch.setattr(actor_submitter, "SETTLE_TIMEOUT_S", 0.2)
    aioray.init(num_cpus=2, object_store_memory=256 << 20)
    try:
        yield
    finally:
        aioray.shutdown()


@aioray.remote(num_cpus=0)
class Slow:
    def __init__(self, seconds: float) -> None:
        time.sleep(seconds)  # longer than several of the GCS's waits

    def ping(self) -> str:
        return "up"


def test_calls_wait_for_an_actor_slower_to_start_than_the_settle_wait(short_settle_wait: None) -> None:
    actors = [Slow.remote(1.5) for _ in range(3)]
    assert aioray.get([a.ping.remote() for a in actors], timeout=120) == ["up"] * 3
