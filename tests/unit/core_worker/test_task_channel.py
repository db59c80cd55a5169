"""Task channels: frames, the token handshake, and how a channel ends (core_worker/task_channel.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aioray._private.common import task_spec
from aioray._private.core_worker import task_channel
from aioray._private.core_worker.executor import Executor
from aioray._private.core_worker.task_channel import FrameBuffer, OwnerEnd, frame, hello


def spec(n: int) -> task_spec.TaskSpec:
    return task_spec.TaskSpec(n.to_bytes(16, "big"), b"fn", "f", [], (), 1, "me:1", b"job")


class FakeExecutor:
    """Runs nothing: answers each task after `delay` seconds on the loop."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.received: list[bytes] = []

    def submit(self, specs: list[task_spec.TaskSpec], lease_id: bytes, reply: Any, items: Any = None) -> None:
        loop = asyncio.get_running_loop()
        for s in specs:
            self.received.append(s.task_id)
            if s.streaming:  # two items, then the result: on one connection, in that order
                items.send_items(s.task_id, [(0, ("first",)), (1, ("second",))])
            loop.call_later(self.delay, reply, (s.task_id, task_spec.OK, [], 0.0))


class Sink:
    def __init__(self) -> None:
        self.results: list[task_spec.Result] = []
        self.items: list[tuple[bytes, list[Any]]] = []
        self.order: list[str] = []
        self.closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def on_frame(self, results: list[task_spec.Result]) -> None:
        self.results += results
        self.order.append("results")

    def on_items(self, task_id: bytes, batch: list[Any]) -> None:
        self.items.append((task_id, batch))
        self.order.append("items")

    def on_closed(self, error: BaseException | None) -> None:
        self.closed.set_result(error)


async def open_channel(
    executor: FakeExecutor, token: str = "secret", sent: str = "secret"
) -> tuple[Any, OwnerEnd, Sink]:
    server, port = await task_channel.serve(cast(Executor, executor), token, "127.0.0.1")
    sink = Sink()
    loop = asyncio.get_running_loop()
    _, end = await loop.create_connection(lambda: OwnerEnd(sink), "127.0.0.1", port)
    assert end.transport is not None
    end.transport.write(hello(sent))
    return server, end, sink


def test_frames_are_cut_out_of_any_chunking() -> None:
    stream = frame(b"one") + frame(b"", task_channel.ITEMS) + frame(b"three" * 1000)
    for size in (1, 2, 7, len(stream)):
        buffer = FrameBuffer()
        got: list[tuple[int, bytes]] = []
        for i in range(0, len(stream), size):
            got += buffer.feed(stream[i : i + size])
        assert got == [
            (task_channel.BATCH, b"one"),
            (task_channel.ITEMS, b""),
            (task_channel.BATCH, b"three" * 1000),
        ]


async def test_batches_go_out_and_results_come_back_then_the_channel_ends_gracefully() -> None:
    executor = FakeExecutor(delay=0.05)
    server, end, sink = await open_channel(executor)
    end.send(task_spec.encode_batch(b"lease", [spec(1), spec(2)]))
    end.send(task_spec.encode_batch(b"lease", [spec(3)]))
    end.end()  # the worker still answers what it was sent before closing
    assert await asyncio.wait_for(sink.closed, 5) is None
    assert sorted(r[0] for r in sink.results) == [spec(i).task_id for i in (1, 2, 3)]
    server.close()


async def test_a_wrong_token_is_refused_without_running_anything() -> None:
    executor = FakeExecutor()
    server, end, sink = await open_channel(executor, sent="wrong!")
    end.send(task_spec.encode_batch(b"lease", [spec(1)]))
    error = await asyncio.wait_for(sink.closed, 5)
    assert error is not None, "an ungraceful end: the owner treats the worker as gone"
    assert executor.received == [] and sink.results == []
    server.close()


async def test_a_worker_that_goes_away_is_an_error_on_the_owner_side() -> None:
    loop = asyncio.get_running_loop()
    ends: list[task_channel.WorkerEnd] = []

    def worker_end() -> task_channel.WorkerEnd:
        ends.append(task_channel.WorkerEnd(cast(Executor, FakeExecutor(delay=10)), "secret"))
        return ends[-1]

    server = await loop.create_server(worker_end, "127.0.0.1", 0)
    sink = Sink()
    _, end = await loop.create_connection(
        lambda: OwnerEnd(sink), "127.0.0.1", server.sockets[0].getsockname()[1]
    )
    assert end.transport is not None
    end.transport.write(hello("secret"))
    end.send(task_spec.encode_batch(b"lease", [spec(1)]))
    await asyncio.sleep(0.05)
    worker_transport = ends[0]._transport
    assert worker_transport is not None
    worker_transport.close()  # the worker's side closes with a task still running: it died
    error = await asyncio.wait_for(sink.closed, 5)
    assert isinstance(error, ConnectionError)
    server.close()


async def test_a_generator_task_s_items_arrive_before_its_result() -> None:
    server, end, sink = await open_channel(FakeExecutor())
    generator = spec(7)
    generator.streaming = True
    end.send(task_spec.encode_batch(b"lease", [generator]))
    end.end()
    assert await asyncio.wait_for(sink.closed, 5) is None
    assert sink.order == ["items", "results"]
    assert sink.items == [(generator.task_id, [(0, ("first",)), (1, ("second",))])]
    server.close()
