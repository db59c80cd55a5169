"""A `__ray_shutdown__` that hangs is cut short (AIORAY_ACTOR_GRACEFUL_SHUTDOWN_TIMEOUT_MS), on a cluster of its own."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import aioray

from .conftest import eventually
from .test_actor_exit import _pid_gone, _pid_of


def test_graceful_exit_has_a_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `__ray_shutdown__` that hangs is cut short after the graceful-shutdown timeout."""
    monkeypatch.setenv("AIORAY_ACTOR_GRACEFUL_SHUTDOWN_TIMEOUT_MS", "1000")
    aioray.init(num_cpus=1, object_store_memory=64 << 20)
    try:

        @aioray.remote
        class Hangs:
            def __ray_shutdown__(self) -> None:
                (tmp_path / "started").write_text("yes")
                time.sleep(30)
                (tmp_path / "finished").write_text("never")

        a = Hangs.remote()
        pid = _pid_of(a)
        del a
        eventually(lambda: (tmp_path / "started").exists(), 10, "__ray_shutdown__ starting")
        eventually(lambda: _pid_gone(pid), 10, "the worker being killed after the timeout")
        assert not (tmp_path / "finished").exists()
    finally:
        aioray.shutdown()
