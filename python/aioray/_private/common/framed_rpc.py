"""Unary RPCs over plain framed TCP, served on each gRPC server's own port.

A grpclib call costs ~1.5 ms round trip on a loaded 2-core machine, almost all of it HTTP/2 framing
and HPACK in Python on both sides (h2); the same bytes in a length-prefixed frame cost ~65 us. Every
unary call of a stub from `rpc.ChannelPool` therefore goes over one plain connection per peer
instead, with the same routes, the same betterproto messages, the same handlers and the same
errors (`GRPCError` with a grpc `Status`); streams (pub/sub) stay on gRPC.

The server tells the two apart by a connection's first bytes: HTTP/2's preface goes to grpclib,
``MAGIC`` to `ServerConnection`. The client opens with ``MAGIC``, the token's length (2 bytes) and the
cluster's auth token; a call made with a wrong token is answered UNAUTHENTICATED, as gRPC's are.
Each frame is its payload's length (4 bytes), a kind (1 byte) and the call's id (4 bytes):

- client -> server ``CALL``: the route's length (2 bytes), the route, the timeout in ms (4 bytes,
  0 for none), the request; ``CANCEL`` (empty): the caller gave up, the handler is cancelled (as
  a reset gRPC stream cancels it). A caller's timeout raises TimeoutError on its side, as
  grpclib's does; the server ends the handler only ``DEADLINE_SLACK_S`` later (DEADLINE_EXCEEDED),
  a backstop should the CANCEL not come. A request too big for a frame is refused before it is
  sent (RESOURCE_EXHAUSTED), a malformed call answered INVALID_ARGUMENT.
- server -> client ``REPLY``: the reply; ``ERROR``: the status (1 byte), then its message.

A connection that ends fails its calls in flight with ConnectionResetError, which the GCS stubs'
retries (`rpc._GcsRetrying`) treat as a GCS away for a moment, as they treat a broken gRPC stream.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

log = logging.getLogger("aioray.rpc")

MAGIC = b"AIORAYU1"
_HEADER = struct.Struct(">IBI")  # payload length, kind, call id
_ROUTE = struct.Struct(">H")
_TIMEOUT = struct.Struct(">I")
_TOKEN_LENGTH = struct.Struct(">H")
MAX_FRAME = 1 << 31
DEADLINE_SLACK_S = 1.0  # how much longer than its caller the server lets a call with a timeout run
CALL, CANCEL = 0, 1  # client -> server
REPLY, ERROR = 0, 1  # server -> client

Observe = Callable[[str, float], None]  # (route, seconds): a served call's latency


def _frame(kind: int, call_id: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), kind, call_id) + payload


def _error(call_id: int, error: GRPCError) -> bytes:
    return _frame(ERROR, call_id, bytes([int(error.status.value)]) + (error.message or "").encode())


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Writer:
    """Writes a connection's frames: the first of a loop step at once, the others of that step
    together at its end. Calls or replies that go out in a burst cost one system call (~40 us each
    on a small VM), a lone one waits for nothing."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] | None = None  # None: nothing written in this loop step yet

    def write(self, frame: bytes) -> None:
        if self._held is not None:
            self._held.append(frame)
            return
        self._transport.write(frame)
        self._held = []
        asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(b"".join(held))


class _Frames:
    """Cuts a byte stream into (kind, call id, payload) frames."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self.buf
        buf += data
        frames = []
        start, end, size = 0, len(buf), _HEADER.size
        while end - start >= size:
            length, kind, call_id = _HEADER.unpack_from(buf, start)
            if length >= MAX_FRAME:
                raise ValueError(f"an RPC frame of {length} bytes: the stream is corrupt")
            if end - start - size < length:
                break
            frames.append((kind, call_id, bytes(buf[start + size : start + size + length])))
            start += size + length
        if start:
            del buf[:start]
        return frames


def _feed(frames: _Frames, data: bytes, close: Callable[[], None]) -> list[tuple[int, int, bytes]]:
    """The frames complete so far; none, and the connection closed, if the stream is corrupt."""
    try:
        return frames.feed(data)
    except ValueError as e:
        log.warning("closing an RPC connection: %s", e)
        close()
        return []


# -- the server's end ----------------------------------------------------------------------------


class _Stream:
    """What a betterproto handler (``__rpc_<method>(stream)``) uses of a grpclib stream."""

    __slots__ = ("reply", "request")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.reply: Any = None

    async def recv_message(self) -> Any:
        return self.request

    async def send_message(self, message: Any, **_: Any) -> None:
        self.reply = message


class ServerConnection(asyncio.Protocol):
    """One client's connection: each call runs its grpclib handler in a task of its own.

    Duck-types grpclib's per-connection ``Handler`` (``closing``, ``close``, ``wait_closed``,
    ``check_closed``), so the grpclib server it belongs to cancels its calls when it closes."""

    closing = False

    def __init__(self, mapping: Mapping[str, Any], token: str, observe: Observe | None) -> None:
        self._mapping = mapping
        self._expected = MAGIC + _TOKEN_LENGTH.pack(len(token.encode())) + token.encode()
        self._observe = observe
        self._hello = bytearray()
        self._authenticated: bool | None = None  # None: the hello is not complete yet
        self._frames = _Frames()
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._cancelled: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._writer = _Writer(self._transport)
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        if self._authenticated is None:
            data = self._read_hello(data)
            if self._authenticated is None:
                return
        for kind, call_id, payload in _feed(self._frames, data, self._close_transport):
            if kind == CALL:
                task = asyncio.get_running_loop().create_task(self._serve(call_id, payload))
                self._calls[call_id] = task
            elif kind == CANCEL:
                cancelled = self._calls.pop(call_id, None)
                if cancelled is not None:
                    cancelled.cancel()
                    self._cancelled.add(cancelled)
                    cancelled.add_done_callback(self._cancelled.discard)

    def _read_hello(self, data: bytes) -> bytes:
        self._hello += data
        header = len(MAGIC) + _TOKEN_LENGTH.size
        if len(self._hello) < header:
            return b""
        (length,) = _TOKEN_LENGTH.unpack_from(self._hello, len(MAGIC))
        if len(self._hello) < header + length:
            return b""
        got = bytes(self._hello[: header + length])
        rest = bytes(self._hello[header + length :])
        self._hello.clear()
        self._authenticated = hmac.compare_digest(got, self._expected)
        return rest

    async def _serve(self, call_id: int, payload: bytes) -> None:
        started = time.perf_counter()
        route = "?"
        try:
            (route_length,) = _ROUTE.unpack_from(payload)
            route = payload[_ROUTE.size : _ROUTE.size + route_length].decode()
            (timeout_ms,) = _TIMEOUT.unpack_from(payload, _ROUTE.size + route_length)
        except (struct.error, UnicodeDecodeError):
            reply_frame = _error(call_id, GRPCError(Status.INVALID_ARGUMENT, "a malformed call frame"))
        else:
            body = payload[_ROUTE.size + route_length + _TIMEOUT.size :]
            try:
                reply_frame = _frame(REPLY, call_id, await self._run(route, timeout_ms, body))
            except GRPCError as e:
                reply_frame = _error(call_id, e)
            except asyncio.CancelledError:
                return  # the caller gave up (CANCEL), or the server is closing: no answer
            except Exception:
                log.exception("RPC %s failed", route)
                reply_frame = _error(call_id, GRPCError(Status.UNKNOWN, "Internal Server Error"))
        finally:
            if self._calls.get(call_id) is asyncio.current_task():
                del self._calls[call_id]
        if self._transport is not None and not self._transport.is_closing():
            self._writer.write(reply_frame)
        if self._observe is not None and route in self._mapping:  # no label per made-up route
            self._observe(route, time.perf_counter() - started)

    async def _run(self, route: str, timeout_ms: int, body: bytes) -> bytes:
        if not self._authenticated:
            raise GRPCError(Status.UNAUTHENTICATED, "missing or wrong aioray auth token")
        handler = self._mapping.get(route)
        if handler is None or handler.cardinality != Cardinality.UNARY_UNARY:
            raise GRPCError(Status.UNIMPLEMENTED, f"no unary method {route}")
        stream = _Stream(handler.request_type().parse(body))
        if timeout_ms:
            # A backstop for a caller whose CANCEL never came: the caller's own timeout fires first
            # (it raises TimeoutError there, as grpclib's client does), so this one has slack.
            async with asyncio.timeout(timeout_ms / 1000 + DEADLINE_SLACK_S) as deadline:
                try:
                    await handler.func(stream)
                except TimeoutError:
                    if deadline.expired():
                        raise GRPCError(Status.DEADLINE_EXCEEDED, "deadline exceeded") from None
                    raise  # the handler's own: UNKNOWN, as grpclib answers it
        else:
            await handler.func(stream)
        if stream.reply is None:
            raise GRPCError(Status.UNKNOWN, f"{route} sent no reply")
        return bytes(stream.reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.close()

    def _close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # grpclib's Handler interface
    def close(self) -> None:
        for task in self._calls.values():
            task.cancel()
            self._cancelled.add(task)
        self._calls.clear()
        self.closing = True
        self._close_transport()

    async def wait_closed(self) -> None:
        if self._cancelled:
            await asyncio.wait(list(self._cancelled))

    def check_closed(self) -> bool:
        return not self._calls and all(t.done() for t in self._cancelled)


class Sniffer(asyncio.Protocol):
    """A new server connection until its first bytes tell its kind: grpclib's HTTP/2 protocol, or
    a `ServerConnection`. Either takes over the transport with the bytes read so far."""

    def __init__(self, h2: Callable[[], asyncio.Protocol], framed: Callable[[], asyncio.Protocol]) -> None:
        self._h2 = h2
        self._framed = framed
        self._transport: asyncio.Transport | None = None
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._head += data
        if len(self._head) < len(MAGIC) and MAGIC.startswith(self._head):
            return
        transport = self._transport
        assert transport is not None
        protocol = self._framed() if self._head.startswith(MAGIC) else self._h2()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(self._head)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


# -- the client's end ----------------------------------------------------------------------------


class ClientConnection(asyncio.Protocol):
    """A connection to one peer's server, carrying any number of concurrent unary calls."""

    def __init__(self, token: str) -> None:
        raw = token.encode()
        self._hello = MAGIC + _TOKEN_LENGTH.pack(len(raw)) + raw
        self._frames = _Frames()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._writer = _Writer(self._transport)
        _nodelay(transport)
        self._writer.write(self._hello)

    def data_received(self, data: bytes) -> None:
        for kind, call_id, payload in _feed(self._frames, data, self.close):
            fut = self._pending.pop(call_id, None)
            if fut is None or fut.done():
                continue
            if kind == REPLY:
                fut.set_result(payload)
            else:
                fut.set_exception(GRPCError(Status(payload[0]), payload[1:].decode(errors="replace")))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._transport = None
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError(f"the RPC connection was lost: {exc!r}"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def call(self, route: str, request: bytes, timeout: float | None) -> bytes:
        """The reply to one call; GRPCError as the handler raised it; TimeoutError after `timeout`."""
        transport = self._transport
        if transport is None or self.lost:
            raise ConnectionResetError("the RPC connection was lost")
        raw_route = route.encode()
        timeout_ms = 0 if timeout is None else max(1, min(int(timeout * 1000), 0xFFFFFFFF))
        payload = _ROUTE.pack(len(raw_route)) + raw_route + _TIMEOUT.pack(timeout_ms) + request
        if len(payload) >= MAX_FRAME:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"a {len(request)}-byte request to {route}: above {MAX_FRAME} bytes",
            )
        self._next_id = call_id = (self._next_id + 1) & 0xFFFFFFFF
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        self._writer.write(_frame(CALL, call_id, payload))
        # A timer on the reply itself: asyncio.wait_for would add a future and callbacks per call.
        timer = None if timeout is None else fut.get_loop().call_later(timeout, _expire, fut)
        try:
            return await fut
        except BaseException:
            if self._pending.pop(call_id, None) is not None and self._transport is not None:
                self._writer.write(_frame(CANCEL, call_id, b""))
            raise
        finally:
            if timer is not None:
                timer.cancel()


def _expire(reply: asyncio.Future[bytes]) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError())


async def connect(host: str, port: int, token: str) -> ClientConnection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: ClientConnection(token), host, port)
    return protocol
