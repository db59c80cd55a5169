"""What every aioray daemon process shares: its start-up handshake and its lifetime.

A parent starts a child with two inherited pipe ends:
- the *ready* pipe, on which the child writes one line (its port) once it serves;
- the *lifeline*, whose write end only the parent holds: when the parent dies
  the child reads EOF and exits, so no process outlives the driver that
  started an embedded cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import IO

READY_FD_ENV = "AIORAY_READY_FD"
LIFELINE_FD_ENV = "AIORAY_LIFELINE_FD"
TOKEN_ENV = "AIORAY_AUTH_TOKEN"
# Optional: marks every process and store segment of one test session or deployment, so that
# `aioray stop` and the orphan reclaim can keep to it (see `find_daemons`, `common.segments`).
TAG_ENV = "AIORAY_SESSION_TAG"

# The module each kind of aioray daemon runs as (`python -m MODULE`).
DAEMON_MODULES = {
    "aioray._private.supervisor": "supervisor",
    "aioray._private.gcs": "gcs",
    "aioray._private.dashboard": "dashboard",
    "aioray._private.raylet": "raylet",
    "aioray._private.core_worker": "worker",
}


def install_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a dependency; the default loop still works
        pass


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def announce_ready(message: str) -> None:
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is not None:
        with os.fdopen(int(fd), "w") as f:
            f.write(message + "\n")


def take_lifeline_fd() -> int | None:
    """The read end of this process's lifeline (EOF once the parent is gone), if it has one."""
    fd_text = os.environ.pop(LIFELINE_FD_ENV, None)
    return None if fd_text is None else int(fd_text)


def watch_lifeline(loop: asyncio.AbstractEventLoop, on_parent_death: Callable[[], None]) -> None:
    fd = take_lifeline_fd()
    if fd is None:
        return

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            on_parent_death()

    loop.add_reader(fd, readable)


class Child:
    """A daemon child process started with a ready pipe and a lifeline."""

    def __init__(self, proc: subprocess.Popen[bytes], ready: IO[str], lifeline_w: int | None, name: str):
        self.proc = proc
        self.name = name
        self._ready = ready
        self._lifeline_w = lifeline_w

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        *,
        lifeline: bool = True,
        log_path: str | None = None,
        detach: bool = False,
    ) -> Child:
        ready_r, ready_w = os.pipe()
        fds = [ready_w]
        child_env = dict(env)
        child_env[READY_FD_ENV] = str(ready_w)
        lifeline_w = None
        if lifeline:
            life_r, lifeline_w = os.pipe()
            os.set_inheritable(lifeline_w, False)
            fds.append(life_r)
            child_env[LIFELINE_FD_ENV] = str(life_r)
        stdout = stderr = None
        log_file = None
        if log_path is not None:
            log_file = open(log_path, "ab")
            stdout = stderr = log_file
        try:
            proc = subprocess.Popen(
                [sys.executable, *argv],
                env=child_env,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=detach,
            )
        finally:
            os.close(ready_w)
            if lifeline:
                os.close(fds[1])
            if log_file is not None:
                log_file.close()
        return cls(proc, os.fdopen(ready_r, "r"), lifeline_w, name)

    def wait_ready(self, timeout: float) -> str:
        """The child's ready line; raises RuntimeError if it exits or times out first."""
        import select

        r, _, _ = select.select([self._ready], [], [], timeout)
        line = self._ready.readline().strip() if r else ""
        self._ready.close()
        if not line:
            if r:  # EOF: it exited (or closed the pipe) before it was ready
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(1.0)
            code = self.proc.poll()
            self.kill()
            what = f"exited with code {code}" if code is not None else f"did not start within {timeout:.0f}s"
            raise RuntimeError(f"aioray {self.name} {what} before it was ready; see its log for the reason")
        return line

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.close_lifeline()

    def close_lifeline(self) -> None:
        if self._lifeline_w is not None:
            with contextlib.suppress(OSError):
                os.close(self._lifeline_w)
            self._lifeline_w = None

    def stop(self, timeout: float = 5.0) -> None:
        """Asks the child to exit (SIGTERM), then kills it after `timeout`."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.close_lifeline()


# -- finding daemons through /proc (Linux) ---------------------------------------------------------
def process_state(pid: int) -> str | None:
    """The state letter of `pid` (R, S, Z, ...) from /proc/PID/stat; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_gone(pid: int) -> bool:
    """No such process, or one that has exited and awaits its parent's wait (zombie, dead)."""
    return process_state(pid) in (None, "Z", "X")


def daemon_kind(pid: int) -> str | None:
    """The kind of aioray daemon `pid` is (supervisor, gcs, raylet, worker) if a live one of this user."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return None
    kind = None
    for flag, module in itertools.pairwise(args):
        if flag == b"-m":
            kind = DAEMON_MODULES.get(module.decode(errors="replace"))
            break
    if kind is None or is_gone(pid):  # a zombie's cmdline is usually empty already, but not always
        return None
    return kind


def environ_of(pid: int) -> dict[str, str] | None:
    """The environment `pid` started with (/proc/PID/environ); None if unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def find_daemons(tag: str | None = None) -> dict[int, str]:
    """Pid -> kind of every live aioray daemon of this user on this machine (not this process).

    With `tag`, only the daemons started with TAG_ENV=tag in their environment.
    """
    me = os.getpid()
    found: dict[int, str] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - not Linux
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        kind = daemon_kind(pid)
        if kind is None:
            continue
        if tag is not None and (environ_of(pid) or {}).get(TAG_ENV) != tag:
            continue
        found[pid] = kind
    return found


def setup_logging(name: str) -> logging.Logger:
    logging.basicConfig(
        level=os.environ.get("AIORAY_LOG_LEVEL", "WARNING"),
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("hpack", "h2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"aioray.{name}")


def descendants(root: int) -> list[int]:
    """Pids of every process under `root` (its children, theirs, ...), read from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: list[int] = []
    frontier = {root}
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = set(children)
    return found
