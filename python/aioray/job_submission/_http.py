"""The job client's HTTP: plain calls through urllib (any thread, event loop or not), and one
streamed GET on asyncio for following a job's output (chunked transfer encoding)."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any


class JobServerError(RuntimeError):
    """The job server refused a request (Ray raises RuntimeError too); `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Request failed with status code {status}: {message}")
        self.status = status
        self.message = message


def _error_text(status: int, body: bytes) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])
    except ValueError:
        pass
    return body.decode(errors="replace").strip() or f"HTTP {status}"


def request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    body: bytes | None = None,
    content_type: str = "application/json",
    verify: bool = True,
) -> tuple[int, bytes]:
    """(status, body) of a 2xx answer, or `allow_404`-style handling by the caller: 404 returns;
    other errors raise JobServerError, an unreachable server ConnectionError."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
    if body is not None:
        req.add_header("Content-Type", content_type)
    context = None
    if url.startswith("https:") and not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        data = e.read()
        if e.code == 404:
            return 404, data
        raise JobServerError(e.code, _error_text(e.code, data)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
            raise TimeoutError(f"{method} {url}: no answer within {timeout:g}s") from None
        raise ConnectionError(f"cannot reach the job server at {url}: {reason}") from None


def json_body(data: bytes) -> Any:
    return json.loads(data)


async def stream(url: str, headers: Mapping[str, str], connect_timeout: float) -> AsyncIterator[bytes]:
    """The body of a GET as it arrives (chunked or until the server closes)."""
    parts = urllib.parse.urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if tls else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl.create_default_context() if tls else None),
            connect_timeout,
        )
    except (OSError, TimeoutError) as e:
        raise ConnectionError(f"cannot reach the job server at {url}: {e}") from None
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), connect_timeout)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        got = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                got[name.strip().lower()] = value.strip()
        chunked = got.get("transfer-encoding", "").lower() == "chunked"
        if status != 200:
            body = await _read_body(reader, got, chunked)
            raise JobServerError(status, _error_text(status, body))
        if not chunked:
            while data := await reader.read(1 << 16):
                yield data
            return
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise ConnectionError(f"the job server closed {url} before its end")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    finally:
        writer.close()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], chunked: bool) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if not chunked:
        return await reader.read()
    out = b""
    while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
        out += await reader.readexactly(size)
        await reader.readexactly(2)
    return out
