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


def watch_lifeline(loop: asyncio.AbstractEventLoop, on_parent_death: Callable[[], None]) -> None:
    fd_text = os.environ.pop(LIFELINE_FD_ENV, None)
    if fd_text is None:
        return
    fd = int(fd_text)

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
            self.kill()
            raise RuntimeError(
                f"aioray {self.name} did not start within {timeout:.0f}s (exit code {self.proc.poll()}); "
                "see its log for the reason"
            )
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


def setup_logging(name: str) -> logging.Logger:
    logging.basicConfig(
        level=os.environ.get("AIORAY_LOG_LEVEL", "WARNING"),
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("hpack", "h2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"aioray.{name}")
