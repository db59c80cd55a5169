"""The node's log monitor: its workers' output files, read as they grow and published to drivers.

Each worker's stdout and stderr go to files of their own in the node's log
folder (``<session>/logs/<NODE_ID16>/worker-<WORKER_ID>-<PID>.out|.err``):
the raylet opens them (`open_files`) and the worker inherits them. They are
files rather than pipes so that a worker never waits on the raylet to print,
and its last words stay on disk when it crashes.

Every `INTERVAL_S` the monitor reads what the files gained
(`common.worker_logs.LogReader`: the worker's markers say which job, task or
actor wrote each line) and publishes it through the GCS, one `LogBatch` per
run of lines of one writer, on the channel of the writer's job; the job's
driver prints it (`core_worker/log_printer.py`). Publishing is sequential, so
the batches of this node arrive in the order they were written, and
`FlushLogs` answers once everything written so far went out (a driver calls it
before it disconnects). A backlog past `MAX_QUEUED` batches (a GCS away for
long) drops the oldest and counts them.

It also serves the node's log files to `aioray logs` (`ListLogs`, `ReadLog`).
The folder goes with the node: the raylet removes it when it stops, and
`common.segments.remove_node_files` when the raylet was killed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO

from aioray._private.common import metrics, rpc
from aioray._private.common.pubsub import log_channel
from aioray._private.common.worker_logs import LogReader, Whose, log_file_names
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.raylet")

INTERVAL_S = float(os.environ.get("AIORAY_LOG_MONITOR_INTERVAL_MS", "100")) / 1000
MAX_QUEUED = 10_000
MAX_READ_BYTES = 1 << 20  # per file and round, so that one chatty worker does not stall the loop
MAX_BATCH_LINES = 1000
FOLLOW_POLL_S = 0.2
TAIL_CHUNK = 64 << 10

LINES_PUBLISHED = metrics.REGISTRY.counter(
    "aioray_worker_log_lines_total", "Lines of worker output read from the node's log files"
)
BATCHES_DROPPED = metrics.REGISTRY.counter(
    "aioray_worker_log_batches_dropped_total",
    "Batches of worker output not published to drivers because the backlog was full",
)

Publish = Callable[[pb.PubMessage], Awaitable[None]]


@dataclass(eq=False)
class _Tailed:
    reader: LogReader
    worker_id: bytes
    pid: int
    is_err: bool


def log_dir_of(session_dir: str, node_id: bytes) -> str:
    return os.path.join(session_dir, "logs", node_id.hex()[:16])


class LogMonitor(pb.LogAgentBase):
    def __init__(
        self,
        log_dir: str,
        node_id: bytes,
        ip: str,
        publish: Publish,
        extra_files: Callable[[], dict[str, str]],
    ) -> None:
        """`publish` sends one message to the GCS's pub/sub; `extra_files()` names other logs of the
        node (the raylet's own) by their listed name."""
        self.dir = log_dir
        self._node_id = node_id
        self._ip = ip
        self._publish = publish
        self._extra_files = extra_files
        self._tailed: dict[bytes, list[_Tailed]] = {}
        self._queue: collections.deque[pb.PubMessage] = collections.deque()
        self._sent = 0  # messages published so far (or dropped), for FlushLogs
        self._queued = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    # -- the raylet's worker pool ----------------------------------------------------------------
    def open_files(self, worker_id: bytes) -> tuple[int, int]:
        """Creates a new worker's two files (named without its pid until `started`); their fds, for the
        worker's stdout and stderr (the caller closes them once the worker has them)."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fds = []
        for path in self._unnamed(worker_id):
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
        return fds[0], fds[1]

    def _unnamed(self, worker_id: bytes) -> tuple[str, str]:
        """A new worker's files before its pid is known."""
        stem = os.path.join(self.dir, f"worker-{worker_id.hex()}")
        return f"{stem}.out", f"{stem}.err"

    def started(self, worker_id: bytes, pid: int) -> None:
        """The worker runs: its files take its pid into their names and are read from now on."""
        tailed = []
        named = log_file_names(worker_id, pid)
        for unnamed, name, is_err in zip(self._unnamed(worker_id), named, (False, True), strict=True):
            path = os.path.join(self.dir, name)
            try:
                os.rename(unnamed, path)
            except OSError as e:
                log.warning("cannot name the log file of worker %s: %s", worker_id.hex()[:8], e)
                continue
            tailed.append(_Tailed(LogReader(path), worker_id, pid, is_err))
        self._tailed[worker_id] = tailed

    def not_started(self, worker_id: bytes) -> None:
        """The worker's process could not be started: its files go."""
        for path in self._unnamed(worker_id):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def exited(self, worker_id: bytes) -> None:
        """The worker is gone: what it wrote last is published, then its files are no longer read
        (they stay, for `aioray logs`, until the node stops)."""
        for t in self._tailed.pop(worker_id, ()):
            while True:
                lines = self._read(t, final=True)
                if not lines:
                    break
            t.reader.close()

    # -- reading and publishing ------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_loop()), loop.create_task(self._send_loop())]

    async def _poll_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(INTERVAL_S)
            self.poll()

    def poll(self) -> None:
        for tailed in list(self._tailed.values()):
            for t in tailed:
                self._read(t)

    def _read(self, t: _Tailed, final: bool = False) -> int:
        lines = t.reader.read(MAX_READ_BYTES, final=final)
        if not lines:
            return 0
        LINES_PUBLISHED.inc(len(lines))
        run: list[str] = []
        whose = lines[0].whose
        for line in lines:
            if line.whose != whose or len(run) >= MAX_BATCH_LINES:
                self._enqueue(t, whose, run)
                run, whose = [], line.whose
            run.append(line.text)
        self._enqueue(t, whose, run)
        return len(lines)

    def _enqueue(self, t: _Tailed, whose: Whose, lines: list[str]) -> None:
        batch = pb.LogBatch(
            node_id=self._node_id,
            ip=self._ip,
            pid=t.pid,
            worker_id=t.worker_id,
            job_id=whose.job_id,
            task_name=whose.task_name,
            actor_name=whose.actor_name,
            is_err=t.is_err,
            lines=lines,
        )
        self._queue.append(pb.PubMessage(channel=log_channel(whose.job_id), data=bytes(batch)))
        self._queued += 1
        while len(self._queue) > MAX_QUEUED:
            self._queue.popleft()
            self._sent += 1
            BATCHES_DROPPED.inc()
        self._wake.set()

    async def _send_loop(self) -> None:
        while not self.stopping:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                msg = self._queue[0]
                try:
                    await self._publish(msg)
                except rpc.GcsUnreachableError as e:
                    log.warning("worker output not published (the GCS is unreachable): %s", e)
                except Exception as e:
                    if self.stopping:
                        return
                    log.debug("publishing worker output failed: %r", e)
                if self._queue and self._queue[0] is msg:
                    self._queue.popleft()
                    self._sent += 1
                async with self._progress:
                    self._progress.notify_all()

    async def flush_logs(self, empty: pb.Empty) -> pb.Empty:
        self.poll()
        target = self._queued
        async with self._progress:
            await self._progress.wait_for(lambda: self._sent >= target or self.stopping)
        return pb.Empty()

    # -- serving the files -----------------------------------------------------------------------
    def _files(self) -> dict[str, str]:
        found = dict(self._extra_files())
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.dir):
                if entry.is_file():
                    found[entry.name] = entry.path
        return found

    async def list_logs(self, empty: pb.Empty) -> pb.LogFileList:
        files = []
        for name, path in sorted(self._files().items()):
            with contextlib.suppress(OSError):
                st = os.stat(path)
                files.append(pb.LogFile(name=name, size=st.st_size, mtime=st.st_mtime))
        return pb.LogFileList(files=files, dir=self.dir)

    async def read_log(self, read_log_request: pb.ReadLogRequest) -> AsyncIterator[pb.Blob]:
        req = read_log_request
        path = self._files().get(req.name)
        if path is None:
            raise rpc.GRPCError(rpc.Status.NOT_FOUND, f"this node has no log file {req.name!r}")
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except OSError as e:
            raise rpc.GRPCError(rpc.Status.NOT_FOUND, f"cannot open {req.name}: {e}") from None
        with f:
            if req.tail_lines >= 0:
                f.seek(tail_offset(f, req.tail_lines))
            while chunk := f.read(TAIL_CHUNK):
                yield pb.Blob(data=chunk)
            while req.follow and not self.stopping:
                await asyncio.sleep(FOLLOW_POLL_S)
                while chunk := f.read(TAIL_CHUNK):
                    yield pb.Blob(data=chunk)

    async def stop(self) -> None:
        """Publishes what the workers wrote last (briefly), then stops and removes the folder."""
        self.poll()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async with self._progress:
                    await self._progress.wait_for(lambda: self._sent >= self._queued)
        self.stopping = True
        async with self._progress:
            self._progress.notify_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for tailed in self._tailed.values():
            for t in tailed:
                t.reader.close()
        self._tailed.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def tail_offset(f: BinaryIO, lines: int) -> int:
    """The offset in the open binary file `f` where its last `lines` lines begin."""
    end = f.seek(0, os.SEEK_END)
    if lines == 0:
        return end
    seen = 0  # lines after the newline at hand (a newline ending the file starts no line)
    pos = end
    while pos > 0:
        step = min(TAIL_CHUNK, pos)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        for i in range(len(block) - 1, -1, -1):
            if block[i] == 0x0A and pos + i != end - 1:
                seen += 1
                if seen == lines:
                    return pos + i + 1
    return 0


__all__ = ["LogMonitor", "log_dir_of", "tail_offset"]
