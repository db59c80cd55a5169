"""The object data port (seed 000, protocol d): bulk object transfer between nodes over plain TCP.

Pure-Python HTTP/2 framing (16 KiB frames) caps a gRPC stream near 0.3 GB/s
here; this path runs at socket speed, with no chunk framing and no copies in
Python. The control plane stays gRPC. One connection carries one object:

    puller -> holder   REQUEST_HEAD (u16 token length, u8 object id length, little-endian),
                       then the token bytes, then the object id bytes
    holder -> puller   SIZE (u64 little-endian): the payload size, or MISSING (2**64 - 1)
                       when the holder has no copy; then exactly SIZE payload bytes

A wrong token gets no answer: the holder hangs up. The holder sends straight
from its store (or a mapped spill file) and the puller receives straight into
a new object in its own store.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aioray._private.common import metrics

log = logging.getLogger("aioray.object_manager")

TRANSFERS = metrics.REGISTRY.counter(
    "aioray_object_transfers_total", "Objects copied between nodes, pulled in or served out", ("direction",)
)
TRANSFER_BYTES = metrics.REGISTRY.counter(
    "aioray_object_transfer_bytes_total", "Bytes of objects copied between nodes", ("direction",)
)
PULLED, PULLED_BYTES = TRANSFERS.labels("in"), TRANSFER_BYTES.labels("in")
SERVED, SERVED_BYTES = TRANSFERS.labels("out"), TRANSFER_BYTES.labels("out")

MISSING = (1 << 64) - 1
REQUEST_HEAD = struct.Struct("<HB")  # token length, object id length
SIZE = struct.Struct("<Q")
CONNECT_TIMEOUT_S = 5.0

# A read buffer of one of this node's objects (store view or mapped spill file), or None.
Readable = Callable[[bytes], Awaitable[Any]]


async def recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, view: memoryview) -> None:
    done = 0
    while done < len(view):
        n = await loop.sock_recv_into(sock, view[done:])
        if n == 0:
            raise ConnectionError(f"the peer closed the connection after {done} of {len(view)} bytes")
        done += n


def release(buf: Any) -> None:
    if hasattr(buf, "release"):
        buf.release()


class DataPortServer:
    """Serves this node's objects to pullers on the data port."""

    def __init__(
        self, token: str, readable: Readable, spawn: Callable[[Coroutine[Any, Any, None]], None]
    ) -> None:
        self._token = token.encode()
        self._readable = readable
        self._spawn = spawn
        self._listener: socket.socket | None = None
        self._serving: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(64)
        sock.setblocking(False)
        self._listener, self.port = sock, sock.getsockname()[1]
        self._serving = asyncio.get_running_loop().create_task(self._accept(sock))

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            self._spawn(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            head = bytearray(REQUEST_HEAD.size)
            await recv_exactly(loop, conn, memoryview(head))
            token_len, oid_len = REQUEST_HEAD.unpack(head)
            body = bytearray(token_len + oid_len)
            await recv_exactly(loop, conn, memoryview(body))
            if not hmac.compare_digest(bytes(body[:token_len]), self._token):
                log.warning("refused an object request with a wrong auth token")
                return  # hang up without a word
            oid = bytes(body[token_len:])
            buf = await self._readable(oid)
            if buf is None:
                await loop.sock_sendall(conn, SIZE.pack(MISSING))
                return
            view = memoryview(buf)
            try:
                await loop.sock_sendall(conn, SIZE.pack(len(view)))
                await loop.sock_sendall(conn, view)
                SERVED.inc()
                SERVED_BYTES.inc(len(view))
            finally:
                view.release()
                release(buf)
        except OSError as e:  # the puller went away; it retries or reports the loss itself
            log.debug("an object transfer to a peer ended early: %s", e)
        finally:
            conn.close()

    def close(self) -> None:
        if self._serving is not None:
            self._serving.cancel()
        if self._listener is not None:
            self._listener.close()


async def connect(address: tuple[str, int]) -> socket.socket | None:
    """A connection to a node's data port, or None when it cannot be reached (use gRPC then)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, address), CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError) as e:
        sock.close()
        log.warning("data port %s:%d unreachable (%s); pulling over gRPC instead", *address, e)
        return None
    return sock


async def receive(sock: socket.socket, token: str, oid: bytes, source: str, view: memoryview) -> None:
    """Pulls object `oid` from the holder at the other end of `sock` into `view` (its exact size)."""
    loop = asyncio.get_running_loop()
    secret = token.encode()
    await loop.sock_sendall(sock, REQUEST_HEAD.pack(len(secret), len(oid)) + secret + oid)
    head = bytearray(SIZE.size)
    await recv_exactly(loop, sock, memoryview(head))
    (sent_size,) = SIZE.unpack(head)
    if sent_size == MISSING:
        raise LookupError(f"object {oid.hex()} is not on node {source}")
    if sent_size != len(view):
        raise ConnectionError(f"object {oid.hex()} is {sent_size} bytes at {source}, expected {len(view)}")
    await recv_exactly(loop, sock, view)


__all__ = ["DataPortServer", "connect", "receive"]
