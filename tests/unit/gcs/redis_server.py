"""A throwaway Redis server for the GCS storage tests: the distribution's `redis-server`
(`make deps` installs it) on a free loopback port, without persistence, stopped after use."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aioray._private.common.rpc import free_port

START_TIMEOUT_S = 10.0


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Runs a redis-server on 127.0.0.1; yields its URL, ``redis://127.0.0.1:PORT``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run `make deps` (apt-get install redis-server)")
    port = free_port()
    log = open(workdir / f"redis-{port}.log", "wb")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server on port {port} did not start (exit code {proc.poll()}): "
                    + (workdir / f"redis-{port}.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False
