"""A minimal read-only HTTP server for one page: a node's ``/metrics`` in the Prometheus text format.

Prometheus scrapes with plain ``GET /metrics`` requests; that is all this
serves (``HEAD`` too), one request per connection. A client that does not
send its request head within `REQUEST_TIMEOUT_S`, or sends more than
`MAX_HEAD_BYTES` of it, is disconnected, so a stuck peer holds no task for
long. No framework: it would cost more start-up time and memory than the
whole page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aioray._private.common.metrics import CONTENT_TYPE

log = logging.getLogger("aioray.metrics")

REQUEST_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16 << 10
METRICS_PATH = "/metrics"


def _response(
    status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False
) -> bytes:
    headers = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return headers.encode() + (b"" if head else body)


async def _read_head(reader: asyncio.StreamReader) -> list[str]:
    lines: list[str] = []
    size = 0
    while True:
        line = await reader.readline()
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise ValueError("request head too large")
        if line in (b"\r\n", b"\n", b""):
            return lines
        lines.append(line.decode("latin-1").rstrip("\r\n"))


class MetricsServer:
    """Serves `render()` (the page's text) at ``/metrics`` on host:port (0: a free port)."""

    def __init__(self, render: Callable[[], Awaitable[str]]) -> None:
        self._render = render
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(_read_head(reader), REQUEST_TIMEOUT_S)
            except (TimeoutError, ValueError, ConnectionError):
                return
            if not head:
                return
            parts = head[0].split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                writer.write(_response("405 Method Not Allowed", b"read-only: GET /metrics\n"))
            elif path != METRICS_PATH:
                writer.write(_response("404 Not Found", b"aioray serves /metrics only\n"))
            else:
                try:
                    body = (await self._render()).encode()
                except Exception as e:  # a page that cannot be made says so instead of hanging up
                    log.warning("cannot render the metrics page: %r", e)
                    writer.write(_response("500 Internal Server Error", f"{e!r}\n".encode()))
                else:
                    writer.write(_response("200 OK", body, CONTENT_TYPE, head=method == "HEAD"))
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


__all__ = ["METRICS_PATH", "MetricsServer"]
