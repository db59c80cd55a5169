"""The node's log monitor on real files: workers' files, reading as they grow, publishing in order,
flushing, listing and reading files for `aioray logs`, and the folder going with the node."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from aioray._private.common import rpc
from aioray._private.common.pubsub import log_channel
from aioray._private.raylet.log_monitor import LogMonitor, tail_offset
from aioray._proto.aioray import v1 as pb

WORKER = bytes.fromhex("aa" * 16)
PID = 4242


class Published:
    def __init__(self) -> None:
        self.messages: list[pb.PubMessage] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, message: pb.PubMessage) -> None:
        await self.gate.wait()
        self.messages.append(message)

    def batches(self) -> list[tuple[str, pb.LogBatch]]:
        return [(m.channel, pb.LogBatch().parse(m.data)) for m in self.messages]


def write(fd: int, text: str) -> None:
    os.write(fd, text.encode())


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    daemon_log = tmp_path / "raylet.log"
    daemon_log.write_text("raylet says\n")
    return tmp_path / "logs" / "node", {"raylet.log": str(daemon_log)}


async def test_worker_output_is_published_by_writer_in_order(files: tuple[Path, dict[str, str]]) -> None:
    folder, extra = files
    published = Published()
    monitor = LogMonitor(str(folder), b"node", "10.0.0.7", published, lambda: extra)
    out_fd, err_fd = monitor.open_files(WORKER)
    monitor.started(WORKER, PID)
    out_name, err_name = f"worker-{WORKER.hex()}-{PID}.out", f"worker-{WORKER.hex()}-{PID}.err"
    assert sorted(p.name for p in folder.iterdir()) == [err_name, out_name]
    monitor.start()
    try:
        write(
            out_fd, "before any task\n:job_id:0a\n:task_name:f\nhello\nworld\n:job_id:0b\n:actor_name:A\nhi"
        )
        write(err_fd, ":job_id:0a\n:task_name:f\noops\n")
        await monitor.flush_logs(pb.Empty())
        got = [
            (ch, b.job_id, b.task_name, b.actor_name, b.is_err, list(b.lines))
            for ch, b in published.batches()
        ]
        assert got == [
            (log_channel(""), "", "", "", False, ["before any task"]),
            (log_channel("0a"), "0a", "f", "", False, ["hello", "world"]),
            (log_channel("0a"), "0a", "f", "", True, ["oops"]),
        ]
        first = published.batches()[0][1]
        assert (first.node_id, first.ip, first.pid, first.worker_id) == (b"node", "10.0.0.7", PID, WORKER)
        # The worker exits: its unfinished last line goes out too, and its files stay.
        os.close(out_fd)
        os.close(err_fd)
        monitor.exited(WORKER)
        await monitor.flush_logs(pb.Empty())
        assert [(b.actor_name, list(b.lines)) for _, b in published.batches()[3:]] == [("A", ["hi"])]
        listing = await monitor.list_logs(pb.Empty())
        assert [f.name for f in listing.files] == ["raylet.log", err_name, out_name]
        assert listing.dir == str(folder)
    finally:
        await monitor.stop()
    assert not folder.exists()


async def test_flush_waits_for_what_is_being_published(files: tuple[Path, dict[str, str]]) -> None:
    folder, extra = files
    published = Published()
    published.gate.clear()  # the GCS is slow
    monitor = LogMonitor(str(folder), b"node", "h", published, lambda: extra)
    out_fd, err_fd = monitor.open_files(WORKER)
    monitor.started(WORKER, PID)
    monitor.start()
    try:
        write(out_fd, "a line\n")
        flushing = asyncio.ensure_future(monitor.flush_logs(pb.Empty()))
        for _ in range(50):  # the monitor's tasks run; the publish waits at the gate however long
            await asyncio.sleep(0)
        assert not flushing.done() and published.messages == []
        published.gate.set()
        await asyncio.wait_for(flushing, 10)
        assert [list(b.lines) for _, b in published.batches()] == [["a line"]]
    finally:
        os.close(out_fd)
        os.close(err_fd)
        await monitor.stop()


async def test_files_are_read_whole_from_the_tail_or_followed(files: tuple[Path, dict[str, str]]) -> None:
    folder, extra = files
    monitor = LogMonitor(str(folder), b"node", "h", Published(), lambda: extra)
    out_fd, err_fd = monitor.open_files(WORKER)
    monitor.started(WORKER, PID)
    name = f"worker-{WORKER.hex()}-{PID}.out"
    try:
        write(out_fd, "".join(f"line {i}\n" for i in range(5)))

        async def read(**kwargs: object) -> bytes:
            req = pb.ReadLogRequest(name=name, **kwargs)  # type: ignore[arg-type]
            return b"".join([chunk.data async for chunk in monitor.read_log(req)])

        assert await read(tail_lines=-1) == b"".join(f"line {i}\n".encode() for i in range(5))
        assert await read(tail_lines=2) == b"line 3\nline 4\n"
        assert await read(tail_lines=0) == b""
        with pytest.raises(rpc.GRPCError, match="no log file"):
            await anext(monitor.read_log(pb.ReadLogRequest(name="../raylet.log")))

        got = b""
        follow = monitor.read_log(pb.ReadLogRequest(name=name, tail_lines=1, follow=True))
        got += (await asyncio.wait_for(anext(follow), 10)).data
        write(out_fd, "appended\n")
        got += (await asyncio.wait_for(anext(follow), 10)).data
        assert got == b"line 4\nappended\n"
        await follow.aclose()
    finally:
        os.close(out_fd)
        os.close(err_fd)
        await monitor.stop()


async def test_a_worker_that_did_not_start_leaves_no_files(files: tuple[Path, dict[str, str]]) -> None:
    folder, extra = files
    monitor = LogMonitor(str(folder), b"node", "h", Published(), lambda: extra)
    out_fd, err_fd = monitor.open_files(WORKER)
    os.close(out_fd)
    os.close(err_fd)
    monitor.not_started(WORKER)
    assert list(folder.iterdir()) == []
    await monitor.stop()


def test_tail_offsets(tmp_path: Path) -> None:
    path = tmp_path / "f"
    for text, lines, want in [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),
        (b"a\nb\nc\n", 5, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 1, b"c\n"),
        (b"", 3, b""),
        (b"\n\n\n", 2, b"\n\n"),
    ]:
        path.write_bytes(text)
        with open(path, "rb") as f:
            f.seek(tail_offset(f, lines))
            assert f.read() == want, (text, lines)
