"""Task channels (seed 000, protocol a): task batches from an owner to a worker, results back.

The hot path of every task and actor call. It used to be a gRPC stream; HTTP/2 framing in Python
cost ~100 us per message on each side, more than everything else of a call together. A task
channel is a plain TCP connection to the worker's task port (`GetTaskPort` names it) carrying
length-prefixed frames, the payloads of `common.task_spec` unchanged:

- The owner opens with ``MAGIC``, the token's length (2 bytes) and the cluster's auth token; a
  worker closes a connection whose token is wrong without a word.
- Each frame is its payload's length (4 bytes), a kind (1 byte) and the payload.
- owner -> worker: one ``BATCH`` frame per batch of specs (`task_spec.encode_batch`).
- worker -> owner: one ``RESULTS`` frame per batch of results (`task_spec.encode_results`), written
  as soon as the loop has them (results that finish together travel together), and ``ITEMS``
  frames, ``pickle((task_id, [(index, return)...]))``, with a generator task's items: on the same
  connection, they reach the owner before the task's result. TCP's flow control holds a producer
  that outruns its owner (`WorkerEnd.drained`); a task with backpressure reports its items over
  the ``ReportGeneratorItem`` RPC instead, whose answer the owner holds back.
- The owner half-closes once no task of the channel is in flight (its lease is returned); the
  worker closes its side after the replies of everything it was sent. Anything else ending the
  connection means the worker (or its machine) died.

Frames are written straight from the event loop's callbacks, with no task in between: a batch
goes out in the call that queues it, a result in the loop iteration that receives it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import struct
from typing import TYPE_CHECKING, Any, Protocol, cast

from aioray._private.common import rpc, serialization, task_spec
from aioray._proto.aioray import v1 as pb

if TYPE_CHECKING:
    from aioray._private.core_worker.executor import Executor

log = logging.getLogger("aioray.core_worker")

MAGIC = b"AIORAYT1"
_HEADER = struct.Struct(">IB")  # payload length, kind
_TOKEN_LENGTH = struct.Struct(">H")
MAX_FRAME = 1 << 31  # a batch of specs is small; anything near this is a corrupt stream
BATCH = 0  # owner -> worker
RESULTS = 0  # worker -> owner
ITEMS = 1  # worker -> owner

Batch = list[tuple[int, tuple[Any, ...]]]  # a generator task's items: (index, return)


def frame(payload: bytes, kind: int = BATCH) -> bytes:
    return _HEADER.pack(len(payload), kind) + payload


def hello(token: str) -> bytes:
    raw = token.encode()
    return MAGIC + _TOKEN_LENGTH.pack(len(raw)) + raw


class FrameBuffer:
    """Cuts a byte stream into frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The (kind, payload) of every frame complete so far."""
        buf = self._buf
        buf += data
        frames = []
        start = 0
        end = len(buf)
        size = _HEADER.size
        while end - start >= size:
            length, kind = _HEADER.unpack_from(buf, start)
            if length >= MAX_FRAME:
                raise ValueError(f"a task-channel frame of {length} bytes: the stream is corrupt")
            if end - start - size < length:
                break
            frames.append((kind, bytes(buf[start + size : start + size + length])))
            start += size + length
        if start:
            del buf[:start]
        return frames

    def take(self, count: int) -> bytes | None:
        """The next `count` raw bytes, once that many arrived (for the opening handshake)."""
        if len(self._buf) < count:
            return None
        out = bytes(self._buf[:count])
        del self._buf[:count]
        return out


# -- the worker's end ------------------------------------------------------------------------------


class WorkerEnd(asyncio.Protocol):
    """One owner's channel into this worker: runs the batches it sends, writes back the results."""

    def __init__(self, executor: Executor, token: str) -> None:
        self._executor = executor
        self._writable = asyncio.Event()
        self._writable.set()
        self._expected = hello(token)
        self._authenticated = False
        self._frames = FrameBuffer()
        self._transport: asyncio.Transport | None = None
        self._results: list[task_spec.Result] = []
        self._flush_scheduled = False
        self._in_flight = 0
        self._owner_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's subclasses

    def data_received(self, data: bytes) -> None:
        frames = self._frames.feed(data) if self._authenticated else self._handshake(data)
        for _, payload in frames:
            lease_id, specs = task_spec.decode_batch(payload)
            self._in_flight += len(specs)
            self._executor.submit(specs, lease_id, self._on_result, self)

    def _handshake(self, data: bytes) -> list[tuple[int, bytes]]:
        self._frames._buf += data
        opening = self._frames.take(len(self._expected))
        if opening is None:
            if not self._expected.startswith(bytes(self._frames._buf)):
                self._refuse()
            return []
        if not hmac.compare_digest(opening, self._expected):
            self._refuse()
            return []
        self._authenticated = True
        return self._frames.feed(b"")

    def _refuse(self) -> None:
        log.warning("refused a task channel with a wrong or missing auth token")
        self._frames = FrameBuffer()
        if self._transport is not None:
            self._transport.abort()

    def _on_result(self, result: task_spec.Result) -> None:
        """On the loop, from the executor: a task finished."""
        self._results.append(result)
        self._in_flight -= 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        results, self._results = self._results, []
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the owner is gone: nobody to tell
        transport.write(frame(task_spec.encode_results(results), RESULTS))
        if self._owner_done and self._in_flight == 0:
            transport.close()

    # -- a generator task's items (executor.ItemChannel) ------------------------------------------
    def send_items(self, task_id: bytes, batch: Batch) -> None:
        """On the loop: the items go out at once, ahead of the task's result."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the owner of the generator task is gone")
        transport.write(frame(serialization.dumps_plain((task_id, batch)), ITEMS))

    async def drained(self) -> None:
        """Returns once the connection takes more (at once unless the owner reads slower than the
        producer writes and the write buffer is over its high-water mark)."""
        await self._writable.wait()
        if self._transport is None:
            raise ConnectionResetError("the owner of the generator task is gone")

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def eof_received(self) -> bool:
        self._owner_done = True
        if self._in_flight == 0 and not self._results and self._transport is not None:
            self._transport.close()
        return True  # keep our side open for the replies still to come

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._writable.set()  # a producer waiting to write learns the owner is gone


async def serve(executor: Executor, token: str, host: str) -> tuple[asyncio.Server, int]:
    """Listens for task channels; returns the server and its port."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: WorkerEnd(executor, token), host, 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


# -- the owner's end -------------------------------------------------------------------------------


class ResultSink(Protocol):
    def on_frame(self, results: list[task_spec.Result]) -> None: ...
    def on_items(self, task_id: bytes, batch: Batch) -> None: ...
    def on_closed(self, error: BaseException | None) -> None: ...


class OwnerEnd(asyncio.Protocol):
    """The owner's side of one channel: batches out, results in, the end of the channel noticed."""

    def __init__(self, sink: ResultSink) -> None:
        self._sink = sink
        self._frames = FrameBuffer()
        self.transport: asyncio.Transport | None = None
        self.ended = False  # we half-closed: the worker's close is the graceful end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(payload))

    def end(self) -> None:
        self.ended = True
        if self.transport is not None and not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        for kind, payload in self._frames.feed(data):
            if kind == ITEMS:
                task_id, batch = serialization.loads_plain(payload)
                self._sink.on_items(task_id, batch)
            else:
                self._sink.on_frame(task_spec.decode_results(payload))

    def eof_received(self) -> bool:
        return False  # the worker is done (or dead): close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if exc is None and self.ended:
            self._sink.on_closed(None)
        else:
            self._sink.on_closed(exc or ConnectionResetError("the worker closed its task channel"))


class TaskChannels:
    """An owner's way to open task channels: the workers' task ports, asked once per worker."""

    def __init__(self, channels: rpc.ChannelPool, token: str) -> None:
        self.channels = channels
        self._token = token
        self._ports: dict[str, int] = {}

    async def open(self, address: str, sink: ResultSink) -> OwnerEnd:
        port = self._ports.get(address)
        if port is None:
            stub = self.channels.stub(address, pb.CoreWorkerStub)
            port = self._ports[address] = (await stub.get_task_port(pb.Empty(), timeout=30)).port
        host, _ = rpc.split_address(address)
        _, end = await asyncio.get_running_loop().create_connection(lambda: OwnerEnd(sink), host, port)
        assert end.transport is not None
        end.transport.write(hello(self._token))
        return end

    def forget(self, address: str) -> None:
        """The worker at `address` is gone (or its connection broke): ask afresh next time."""
        self._ports.pop(address, None)
        self.channels.drop(address)


__all__ = ["MAGIC", "FrameBuffer", "OwnerEnd", "TaskChannels", "WorkerEnd", "frame", "hello", "serve"]
