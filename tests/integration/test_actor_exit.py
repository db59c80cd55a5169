"""How actors end, as in Ray: exit_actor(), __ray_terminate__, __ray_shutdown__, atexit, kill, out of scope."""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import aioray
from aioray.actor import exit_actor
from aioray.exceptions import ActorDiedError, ActorUnavailableError, AsyncioActorExit, RayActorError

from .conftest import eventually


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before, or between open and read
        return True


def _pid_of(actor: Any) -> int:
    pid: int = aioray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    return pid


@aioray.remote
class Journal:
    """Writes what happens to it into a folder: `atexit`, `shutdown`, `after_exit` lines."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        atexit.register(self._note, "atexit")

    def _note(self, what: str) -> None:
        with open(self.folder / "journal", "a") as f:
            f.write(what + "\n")

    def __ray_shutdown__(self) -> None:
        self._note("shutdown")

    def exit(self) -> None:
        exit_actor()
        self._note("after_exit")

    def exit_but_catch(self) -> str:
        try:
            exit_actor()
        except SystemExit:
            pass
        self._note("after_caught_exit")
        return "returned"

    def ping(self) -> str:
        return "pong"

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _journal(folder: Path) -> list[str]:
    path = folder / "journal"
    return path.read_text().splitlines() if path.exists() else []


def test_ray_ready_and_ray_call(ray: Any, tmp_path: Path) -> None:
    a = Journal.remote(str(tmp_path))
    assert aioray.get(a.__ray_ready__.remote(), timeout=30) is True
    assert aioray.get(a.__ray_call__.remote(lambda self, x: (type(self).__name__, x), 7), timeout=30) == (
        "Journal",
        7,
    )


def test_exit_actor_fails_the_call_and_everything_after_it_and_runs_hooks_once(
    ray: Any, tmp_path: Path
) -> None:
    a = Journal.remote(str(tmp_path))
    pid = _pid_of(a)
    exiting = a.exit.remote()
    queued = [a.ping.remote() for _ in range(20)]
    with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
        aioray.get(exiting, timeout=30)
    for ref in queued:
        with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
            aioray.get(ref, timeout=30)
    with pytest.raises(RayActorError):
        aioray.get(a.ping.remote(), timeout=30)
    eventually(lambda: _pid_gone(pid), 10, "the actor's worker exiting")
    assert _journal(tmp_path) == ["shutdown", "atexit"]  # once each, in that order; nothing after exit


def test_exit_actor_caught_by_the_user_still_exits(ray: Any, tmp_path: Path) -> None:
    a = Journal.remote(str(tmp_path))
    aioray.get(a.__ray_ready__.remote(), timeout=30)
    with pytest.raises(RayActorError):
        aioray.get(a.exit_but_catch.remote(), timeout=30)
    with pytest.raises(RayActorError):
        aioray.get(a.ping.remote(), timeout=30)
    eventually(lambda: "atexit" in _journal(tmp_path), 10, "the atexit handler")
    assert "after_caught_exit" in _journal(tmp_path)  # the method went on, but its result is not sent


def test_exit_actor_is_not_a_restart(ray: Any, tmp_path: Path) -> None:
    a = Journal.options(max_restarts=3, max_task_retries=-1).remote(str(tmp_path))
    aioray.get(a.__ray_ready__.remote(), timeout=30)
    with pytest.raises(ActorDiedError):
        aioray.get(a.exit.remote(), timeout=30)
    with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
        aioray.get(a.ping.remote(), timeout=30)


def test_exit_actor_outside_an_actor_is_a_type_error(ray: Any) -> None:
    with pytest.raises(TypeError, match="non-actor worker"):
        exit_actor()

    @aioray.remote
    def task() -> None:
        exit_actor()

    with pytest.raises(TypeError, match="non-actor worker"):
        aioray.get(task.remote(), timeout=30)


def test_exit_actor_in_a_constructor(ray: Any, tmp_path: Path) -> None:
    @aioray.remote
    class ExitsAtOnce:
        def __init__(self, folder: str) -> None:
            atexit.register(lambda: (Path(folder) / "atexit").write_text("ran"))
            exit_actor()
            (Path(folder) / "after_exit").write_text("ran")  # never

        def ping(self) -> str:
            return "pong"

    a = ExitsAtOnce.remote(str(tmp_path))
    with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
        aioray.get(a.ping.remote(), timeout=30)
    eventually(lambda: (tmp_path / "atexit").exists(), 10, "the atexit handler")
    assert not (tmp_path / "after_exit").exists()


def test_exit_actor_in_async_actors(ray: Any, tmp_path: Path) -> None:
    @aioray.remote
    class AsyncExit:
        def __init__(self, folder: str) -> None:
            self.folder = Path(folder)
            atexit.register(lambda: (self.folder / "atexit").write_text("ran"))

        async def exit(self, catch: bool) -> None:
            try:
                exit_actor()
            except AsyncioActorExit:
                if not catch:
                    raise
            (self.folder / "after_exit").write_text("caught" if catch else "never")

        async def ping(self) -> str:
            return "pong"

    for catch in (False, True):
        folder = tmp_path / str(catch)
        folder.mkdir()
        a = AsyncExit.remote(str(folder))
        aioray.get(a.__ray_ready__.remote(), timeout=30)
        with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
            aioray.get(a.exit.remote(catch), timeout=30)
        with pytest.raises(ActorDiedError):
            aioray.get(a.ping.remote(), timeout=30)
        eventually(lambda folder=folder: (folder / "atexit").exists(), 10, "the atexit handler")
        assert (folder / "after_exit").exists() == catch


def test_exit_actor_from_an_asyncio_task_started_in_the_constructor(ray: Any, tmp_path: Path) -> None:
    @aioray.remote
    class ExitsSoon:
        def __init__(self, folder: str) -> None:
            atexit.register(lambda: (Path(folder) / "atexit").write_text("ran"))
            asyncio.get_running_loop().create_task(self.leave())

        async def leave(self) -> None:
            await asyncio.sleep(0.2)
            exit_actor()

        async def ping(self) -> str:
            return "pong"

    a = ExitsSoon.remote(str(tmp_path))
    eventually(lambda: (tmp_path / "atexit").exists(), 15, "the atexit handler")
    with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
        aioray.get(a.ping.remote(), timeout=30)


def test_ray_terminate_runs_after_earlier_calls_and_is_final(ray: Any, tmp_path: Path) -> None:
    a = Journal.options(max_restarts=2).remote(str(tmp_path))
    slow = a.sleep.remote(0.3)
    a.__ray_terminate__.remote()
    assert aioray.get(slow, timeout=30) is None  # the call before it finished
    with pytest.raises(ActorDiedError, match="__ray_terminate__"):
        aioray.get(a.ping.remote(), timeout=30)
    eventually(lambda: _journal(tmp_path) == ["shutdown", "atexit"], 10, "shutdown, then atexit")


def test_a_raising_ray_shutdown_does_not_stop_the_exit(ray: Any, tmp_path: Path) -> None:
    @aioray.remote
    class BadShutdown:
        def __init__(self, folder: str) -> None:
            atexit.register(lambda: (Path(folder) / "atexit").write_text("ran"))

        def __ray_shutdown__(self) -> None:
            raise ValueError("cleanup failed")

    a = BadShutdown.remote(str(tmp_path))
    pid = _pid_of(a)
    a.__ray_terminate__.remote()
    eventually(lambda: (tmp_path / "atexit").exists(), 10, "the atexit handler")
    eventually(lambda: _pid_gone(pid), 10, "the worker exiting")


def test_kill_runs_no_shutdown_hooks(ray: Any, tmp_path: Path) -> None:
    a = Journal.remote(str(tmp_path))
    pid = _pid_of(a)
    a.sleep.remote(3600)
    aioray.kill(a)
    eventually(lambda: _pid_gone(pid), 10, "the killed worker exiting")
    assert _journal(tmp_path) == []


def test_dropping_the_last_handle_exits_gracefully(ray: Any, tmp_path: Path) -> None:
    def use_and_drop() -> int:
        a = Journal.remote(str(tmp_path))
        return _pid_of(a)

    pid = use_and_drop()
    eventually(lambda: _journal(tmp_path) == ["shutdown", "atexit"], 15, "shutdown, then atexit")
    eventually(lambda: _pid_gone(pid), 10, "the worker exiting")


def test_a_detached_actor_outlives_its_handles(ray: Any, tmp_path: Path) -> None:
    a = Journal.options(name="keeps-going", lifetime="detached").remote(str(tmp_path))
    aioray.get(a.ping.remote(), timeout=30)
    del a
    time.sleep(1)
    again = aioray.get_actor("keeps-going")
    assert aioray.get(again.ping.remote(), timeout=30) == "pong"
    assert _journal(tmp_path) == []
    aioray.kill(again)


def test_kill_right_after_creation(ray: Any) -> None:
    a = Journal.remote("/nonexistent")
    aioray.kill(a)
    with pytest.raises(ActorDiedError, match="killed"):
        aioray.get(a.ping.remote(), timeout=30)


def test_kill_without_no_restart_restarts(ray: Any, tmp_path: Path) -> None:
    a = Journal.options(max_restarts=1).remote(str(tmp_path))
    first = _pid_of(a)
    aioray.kill(a, no_restart=False)
    assert aioray.get(a.ping.remote(), timeout=30) == "pong"
    assert _pid_of(a) != first
    aioray.kill(a, no_restart=False)  # restarts used up: now it is dead
    with pytest.raises(ActorDiedError):
        aioray.get(a.ping.remote(), timeout=30)


def test_a_call_lost_to_a_restart_is_actor_unavailable(ray: Any, tmp_path: Path) -> None:
    a = Journal.options(max_restarts=1).remote(str(tmp_path))
    pid = _pid_of(a)
    lost = a.sleep.remote(30)
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorUnavailableError, match="not retried"):
        aioray.get(lost, timeout=30)
    assert aioray.get(a.ping.remote(), timeout=30) == "pong"  # it is back


def test_per_call_max_task_retries(ray: Any, tmp_path: Path) -> None:
    a = Journal.options(max_restarts=1).remote(str(tmp_path))
    pid = _pid_of(a)
    retried = a.sleep.options(max_task_retries=-1).remote(1)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    assert aioray.get(retried, timeout=60) is None


def test_actor_method_options_refuse_what_they_do_not_know(ray: Any, tmp_path: Path) -> None:
    a = Journal.remote(str(tmp_path))
    with pytest.raises(ValueError, match="tensor_transport"):
        a.ping.options(tensor_transport="nccl")
    with pytest.raises(ValueError, match="no concurrency group 'io'"):
        a.ping.options(concurrency_group="io")
    assert aioray.get(a.ping.options(name="custom-name").remote(), timeout=30) == "pong"
