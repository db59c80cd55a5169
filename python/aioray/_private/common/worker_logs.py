"""Worker output: how a worker marks whose output follows in its log files, how a reader splits
them back into attributed lines, and how a driver prefixes them.

A worker's stdout and stderr are files on its node (the raylet opens them:
``worker-<WORKER_ID>-<PID>.out`` and ``.err``). Before the first line a task
(or an actor) writes, the worker's `TaggedStream` writes marker lines saying
whose output follows, as Ray's workers do::

    :job_id:<job id hex>
    :task_name:<function name>     (or :actor_name:<class name> in an actor)

The node's log monitor reads the files with a `LogReader`, which keeps the
markers' state and hands back the other lines with it; the driver of the job
prints them as ``(name pid=N, ip=HOST) line`` (`prefix`).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JOB_MARKER = ":job_id:"
TASK_MARKER = ":task_name:"
ACTOR_MARKER = ":actor_name:"
MAX_LINE_BYTES = 64 << 10  # longer lines are cut into pieces of this size


def log_file_names(worker_id: bytes, pid: int) -> tuple[str, str]:
    stem = f"worker-{worker_id.hex()}-{pid}"
    return f"{stem}.out", f"{stem}.err"


@dataclass(frozen=True, slots=True)
class Whose:
    """Whose output it is: the job and the task or actor that wrote it."""

    job_id: str = ""
    task_name: str = ""
    actor_name: str = ""


class TaggedStream(io.TextIOBase):
    """A worker's sys.stdout or sys.stderr: writes to the log file, each time the writer changes
    preceded by the markers of the new one (`whose()` tells it, per thread). Text goes out at each
    line's end and at `flush`; a line is never cut by markers, only preceded by them."""

    def __init__(self, target: Any, whose: Callable[[], Whose]) -> None:
        self._target = target
        self._whose = whose
        self._last: Whose | None = None
        self._partial = ""
        self._line_start = True  # the file's last character ends a line
        self._lock = threading.Lock()  # threaded actors print from several threads

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self._target.fileno())

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            data = self._partial + text
            cut = data.rfind("\n") + 1
            self._partial = data[cut:]
            if cut:
                self._write_out(data[:cut])
                self._target.flush()
        return len(text)

    def _write_out(self, data: str) -> None:
        out = []
        if self._line_start:
            whose = self._whose()
            if whose != self._last:
                last = self._last or Whose()
                if whose.job_id != last.job_id:
                    out.append(f"{JOB_MARKER}{whose.job_id}\n")
                if whose.actor_name:
                    out.append(f"{ACTOR_MARKER}{whose.actor_name}\n")
                else:
                    out.append(f"{TASK_MARKER}{whose.task_name}\n")
                self._last = whose
        out.append(data)
        self._target.write("".join(out))
        self._line_start = data.endswith("\n")

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                partial, self._partial = self._partial, ""
                self._write_out(partial)
            self._target.flush()


@dataclass
class Line:
    whose: Whose
    text: str


class LogReader:
    """Reads what was appended to one log file since the last call, line by line with their writer.

    A line that is not finished yet stays for the next call (up to `MAX_LINE_BYTES`; a longer one
    is passed on in pieces)."""

    def __init__(self, path: str, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self.whose = Whose()
        self._partial = b""
        self._fd: int | None = None

    def _open(self) -> int | None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        return self._fd

    def read(self, max_bytes: int = 1 << 20, final: bool = False) -> list[Line]:
        """The complete lines appended since the last call (at most about `max_bytes` of them);
        `final`: the writer is gone, so an unfinished last line counts as a line too."""
        fd = self._open()
        if fd is None:
            return []
        try:
            chunk = os.pread(fd, max_bytes, self.offset)
        except OSError:
            return []
        self.offset += len(chunk)
        pieces = (self._partial + chunk).split(b"\n")
        self._partial = pieces.pop()
        at_end = len(chunk) < max_bytes
        if len(self._partial) > MAX_LINE_BYTES or (final and at_end and self._partial):
            pieces.append(self._partial)
            self._partial = b""
        out: list[Line] = []
        for raw in pieces:
            text = raw.decode("utf-8", errors="replace")
            if text.startswith(JOB_MARKER):
                self.whose = Whose(text[len(JOB_MARKER) :], self.whose.task_name, self.whose.actor_name)
            elif text.startswith(TASK_MARKER):
                self.whose = Whose(self.whose.job_id, text[len(TASK_MARKER) :], "")
            elif text.startswith(ACTOR_MARKER):
                self.whose = Whose(self.whose.job_id, "", text[len(ACTOR_MARKER) :])
            else:
                out.append(Line(self.whose, text))
        return out

    def has_more(self) -> bool:
        """Whether the file grew past what was read."""
        try:
            return os.stat(self.path).st_size > self.offset
        except OSError:
            return False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def prefix(task_name: str, actor_name: str, pid: int, ip: str | None) -> str:
    """Ray's prefix of a worker's line on the driver: ``(name pid=N, ip=HOST)``; no ip for a line
    from the driver's own node, no name for output outside any task."""
    name = actor_name or task_name
    who = f"{name} pid={pid}" if name else f"pid={pid}"
    return f"({who}, ip={ip})" if ip else f"({who})"


__all__ = ["LogReader", "TaggedStream", "Whose", "log_file_names", "prefix"]
