"""The dashboard's HTTP/1.1 server: a request parser, a router and responses, plain and streamed.

No framework: a full one costs more start-up time and memory than the whole dashboard, and the
dashboard only needs what a browser and the job-submission client send: GET/POST/PUT/DELETE with a
`Content-Length` body, keep-alive, and responses sent whole or chunked (a tailed log).

Route modules register handlers on a `Router`::

    async def get_job(req: Request) -> Response:
        job = find(req.params["job_id"])          # `{job_id}` in the pattern
        if job is None:
            raise HttpError(404, f"no job {req.params['job_id']!r}")
        return Response.json(job)

    router.add("GET", "/api/jobs/{job_id}", get_job)                 # needs the cluster token
    router.add("GET", "/api/cluster_status", status, auth=False)     # readable by anyone

A handler raises `HttpError` for a clean error answer (JSON ``{"error": ...}``); anything else it
raises is logged and answered 500, never taking the server down. Every handler runs under a
timeout (`Router.add(..., timeout=)`); a `StreamResponse`'s body runs without one, for as long as
the client reads (a client that goes away ends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

log = logging.getLogger("aioray.dashboard")

HEAD_TIMEOUT_S = 10.0  # to send a request's head (and a body's first bytes)
BODY_TIMEOUT_S = 60.0  # to send a whole body
IDLE_TIMEOUT_S = 30.0  # a keep-alive connection between requests
HANDLER_TIMEOUT_S = 30.0
WRITE_TIMEOUT_S = 30.0
MAX_HEAD_BYTES = 32 << 10
MAX_BODY_BYTES = 1 << 20  # per route: `Router.add(..., max_body=)`
TOKEN_COOKIE = "aioray_token"

_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    303: "See Other",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class HttpError(Exception):
    """Raised by a handler (or the server) to answer `status` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class Request:
    method: str
    path: str  # as sent (percent-encoded), without the query
    query: dict[str, str]  # the last value of each name
    headers: dict[str, str]  # names lower-case
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)  # from the route's `{name}` parts
    remote: str = ""
    app: Any = None  # what the server was given as `app` (the dashboard's `DashboardContext`)
    token: str = field(default="", repr=False)  # the cluster token to check against

    def json(self) -> Any:
        """The body as JSON; HttpError 400 if it is not."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as e:
            raise HttpError(400, f"the request body is not JSON: {e}") from None

    @property
    def cookies(self) -> dict[str, str]:
        out = {}
        for part in self.headers.get("cookie", "").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                out[name] = unquote(value)
        return out

    def query_int(self, name: str, default: int, lo: int = 0, hi: int = 1 << 62) -> int:
        """An integer query parameter in [lo, hi]; HttpError 400 when it is not one."""
        text = self.query.get(name)
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            raise HttpError(400, f"{name} must be an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise HttpError(400, f"{name} must be between {lo} and {hi}, got {value}")
        return value

    def bearer(self) -> str | None:
        """The token of an ``Authorization: Bearer T`` header, if any."""
        auth = self.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None

    def authorized(self) -> bool:
        """The cluster token in the header, or the login cookie, which holds a value derived from
        the token (`session_value`), never the token itself: browsers send a cookie to every port of
        its host, and the token also opens the cluster's gRPC services."""
        given = self.bearer()
        if given is not None:
            return check_token(given, self.token)
        cookie = self.cookies.get(TOKEN_COOKIE)
        return cookie is not None and bool(self.token) and check_token(cookie, session_value(self.token))

    def same_origin(self) -> bool:
        """Whether a browser sent this from one of the dashboard's own pages: another site's page (or
        another port of this host, which a cookie does not tell apart) may make the browser send the
        login cookie with a POST, but not with our Origin."""
        origin = self.headers.get("origin")
        if origin is None:
            return self.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
        host = self.headers.get("host", "")
        return origin in (f"http://{host}", f"https://{host}")


def check_token(given: str, expected: str) -> bool:
    """In constant time: a wrong token's length or prefix tells nothing. An empty expected token
    (a cluster without one) admits nobody rather than everybody."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def session_value(token: str) -> str:
    """What the login cookie holds: a keyed hash of the token, useless anywhere but here."""
    return hmac.new(token.encode(), b"aioray dashboard session", "sha256").hexdigest()


def require_token(req: Request) -> None:
    """HttpError 401 unless the request carries the cluster token (header or login cookie)."""
    if not req.authorized():
        raise HttpError(
            401,
            "this needs the cluster's auth token: send 'Authorization: Bearer TOKEN', or log in at "
            "/login (the token is printed by `aioray start --head` and kept in the session's "
            "cluster.json)",
            {"WWW-Authenticate": 'Bearer realm="aioray"'},
        )


class Response:
    """A whole response: status, headers and body (Content-Length is set when sent)."""

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.body = body.encode() if isinstance(body, str) else body
        self.status = status
        self.headers = {"Content-Type": content_type, **(headers or {})}
        self.cookies: list[str] = []

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        body = json.dumps(data, default=_json_default, separators=(",", ":"))
        return cls(body, status, "application/json", headers)

    @classmethod
    def redirect(cls, location: str, status: int = 303) -> Response:
        return cls(b"", status, headers={"Location": location})

    def set_cookie(self, name: str, value: str, *, max_age: int | None = None, path: str = "/") -> None:
        """An HttpOnly, SameSite=Strict cookie (no script reads it, no other site's page sends it)."""
        parts = [f"{name}={quote(value)}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        self.cookies.append("; ".join(parts))


class StreamResponse(Response):
    """A response whose body is sent chunked as `chunks` yields it, until it ends or the client goes."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(b"", status, content_type, headers)
        self.chunks = chunks


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Route:
    method: str
    pattern: str
    handler: Handler
    auth: bool
    timeout: float
    max_body: int
    parts: list[str] = field(default_factory=list)


class Router:
    """Routes by method and path pattern: literal segments and ``{name}`` segments (one segment each;
    ``{name:path}`` as the last one takes the rest of the path, slashes included)."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        auth: bool = True,
        timeout: float = HANDLER_TIMEOUT_S,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        """`auth`: the request must carry the cluster token (else 401 before the handler runs).
        `timeout`: seconds the handler may take to return its response (a stream's body is not
        bounded). `max_body`: the largest request body accepted (else 413)."""
        if not pattern.startswith("/"):
            raise ValueError(f"a route pattern starts with '/', got {pattern!r}")
        parts = pattern.strip("/").split("/") if pattern != "/" else []
        for k, part in enumerate(parts):
            if part.endswith(":path}") and k != len(parts) - 1:
                raise ValueError(f"{{name:path}} must be the last segment of {pattern!r}")
        method = method.upper()
        if any(r.method == method and r.parts == parts for r in self.routes):
            raise ValueError(f"{method} {pattern} is routed twice")
        self.routes.append(Route(method, pattern, handler, auth, timeout, max_body, parts))

    def get(self, pattern: str, handler: Handler, **options: Any) -> None:
        self.add("GET", pattern, handler, **options)

    def post(self, pattern: str, handler: Handler, **options: Any) -> None:
        self.add("POST", pattern, handler, **options)

    @staticmethod
    def _match(parts: list[str], segments: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for k, part in enumerate(parts):
            if part.startswith("{") and part.endswith(":path}"):
                if k >= len(segments):
                    return None
                params[part[1:-6]] = "/".join(segments[k:])
                return params
            if k >= len(segments):
                return None
            if part.startswith("{") and part.endswith("}"):
                if not segments[k]:
                    return None
                params[part[1:-1]] = segments[k]
            elif part != segments[k]:
                return None
        return params if len(parts) == len(segments) else None

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for method and path with its parameters; HttpError 404 or 405."""
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        allowed = []
        literal_first = sorted(self.routes, key=lambda r: sum(p.startswith("{") for p in r.parts))
        for route in literal_first:
            params = self._match(route.parts, segments)
            if params is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, params
            allowed.append(route.method)
        if allowed:
            raise HttpError(405, f"{method} is not allowed here", {"Allow": ", ".join(sorted(set(allowed)))})
        raise HttpError(404, f"no such page: {path}")


# -- the wire -------------------------------------------------------------------------------------
async def read_request_head(reader: asyncio.StreamReader) -> tuple[str, str, str, dict[str, str]] | None:
    """(method, target, version, headers) of the next request; None at a clean end of the connection."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = await reader.readline()
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise HttpError(431, "the request head is too large")
        if not line:
            if lines:
                raise HttpError(400, "the connection ended inside a request head")
            return None
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # stray blank lines between requests are allowed (RFC 9112 2.2)
            break
        lines.append(line)
    request_line = lines[0].decode("latin-1").strip()
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"malformed request line: {request_line[:100]!r}")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"malformed header line: {raw[:100]!r}")
        key, value = name.lower(), value.strip()
        if key in headers:  # a repeated header is one list (cookies have their own separator)
            value = f"{headers[key]}{'; ' if key == 'cookie' else ', '}{value}"
        headers[key] = value
    return parts[0].upper(), parts[1], parts[2], headers


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    """The path (as sent) and the decoded query parameters of a request target."""
    if not target.startswith("/"):
        raise HttpError(400, f"the request target must be a path, got {target[:100]!r}")
    split = urlsplit(target)
    try:
        query = dict(parse_qsl(split.query, keep_blank_values=True, strict_parsing=False))
    except ValueError as e:
        raise HttpError(400, f"bad query string: {e}") from None
    decoded = unquote(split.path)
    if "\x00" in decoded or any(seg == ".." for seg in decoded.split("/")):
        raise HttpError(400, "bad path")
    return split.path, query


def _head_bytes(status: int, headers: Mapping[str, str], cookies: list[str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Set-Cookie: {c}" for c in cookies]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def error_response(err: HttpError) -> Response:
    return Response.json({"error": err.message, "status": err.status}, err.status, err.headers)


class HttpServer:
    """Serves a `Router` on host:port; `app` and `token` are handed to every `Request`."""

    def __init__(self, router: Router, app: Any = None, token: str = "") -> None:
        self.router = router
        self.app = app
        self.token = token
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        try:
            first = True
            while True:
                keep = await self._one(reader, writer, remote, HEAD_TIMEOUT_S if first else IDLE_TIMEOUT_S)
                first = False
                if not keep:
                    break
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug in the server itself: one connection lost, never the server
            log.exception("dashboard connection from %s failed", remote)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str, wait: float
    ) -> bool:
        """Serves one request; whether the connection stays open for another."""
        try:
            head = await asyncio.wait_for(read_request_head(reader), wait)
        except HttpError as e:
            await self._send(writer, "GET", error_response(e), keep_alive=False)
            return False
        except (TimeoutError, ValueError):
            return False  # LimitOverrunError (a line past the reader's limit) is a ValueError
        if head is None:
            return False
        method, target, version, headers = head
        keep_alive = _keep_alive(version, headers)
        started = time.monotonic()
        path = target.split("?", 1)[0]  # what is logged: a query may carry a login token
        body_read = False
        try:
            path, query = parse_target(target)
            route, params = self.router.resolve(method, path)
            req = Request(method, path, query, headers, b"", params, remote, self.app, self.token)
            if route.auth:
                # Before the body is read: nobody without the token makes the server buffer one.
                require_token(req)
                if method not in ("GET", "HEAD") and req.bearer() is None and not req.same_origin():
                    raise HttpError(
                        403,
                        "a request authenticated by the login cookie must come from the dashboard's pages",
                    )
            req.body = await self._read_body(reader, headers, route.max_body)
            body_read = True
            response = await asyncio.wait_for(route.handler(req), route.timeout)
        except HttpError as e:
            response = error_response(e)
            if not body_read:  # the body, if any, is still unread: it must not pass for a request
                keep_alive = False
        except TimeoutError:
            response = error_response(HttpError(504, "the request took too long; try again"))
        except Exception as e:
            log.exception("dashboard handler for %s %s failed", method, path)
            response = error_response(HttpError(500, f"internal error: {type(e).__name__}: {e}"))
        # The path, not the target: a query may carry a login token.
        log.debug("%s %s %s in %.3f s", method, path, response.status, time.monotonic() - started)
        return await self._send(writer, method, response, keep_alive)

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str], limit: int) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await asyncio.wait_for(_read_chunked(reader, limit), BODY_TIMEOUT_S)
        text = headers.get("content-length")
        if text is None:
            return b""
        if not text.isdigit():
            raise HttpError(400, f"bad Content-Length: {text[:40]!r}")
        size = int(text)
        if size > limit:
            raise HttpError(413, f"the request body is {size} bytes; at most {limit} are accepted here")
        try:
            return await asyncio.wait_for(reader.readexactly(size), BODY_TIMEOUT_S)
        except TimeoutError:
            raise HttpError(408, "the request body did not arrive in time") from None

    async def _send(
        self, writer: asyncio.StreamWriter, method: str, response: Response, keep_alive: bool
    ) -> bool:
        headers = {
            "Date": formatdate(usegmt=True),
            "Server": "aioray-dashboard",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            **response.headers,
            "Connection": "keep-alive" if keep_alive else "close",
        }
        if isinstance(response, StreamResponse):
            headers["Transfer-Encoding"] = "chunked"
            writer.write(_head_bytes(response.status, headers, response.cookies))
            if method == "HEAD":
                await _drain(writer)
                return keep_alive
            return await self._stream(writer, response) and keep_alive
        headers["Content-Length"] = str(len(response.body))
        writer.write(_head_bytes(response.status, headers, response.cookies))
        if method != "HEAD":
            writer.write(response.body)
        await _drain(writer)
        return keep_alive

    async def _stream(self, writer: asyncio.StreamWriter, response: StreamResponse) -> bool:
        chunks = response.chunks
        try:
            async for chunk in chunks:
                if chunk:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await _drain(writer)
        except (ConnectionError, TimeoutError):
            return False
        except Exception as e:  # the status is sent already: end the body early and say why in it
            log.warning("a streamed dashboard response failed: %r", e)
            msg = f"\n[aioray dashboard: the stream failed: {e!r}]\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(msg), msg))
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        writer.write(b"0\r\n\r\n")
        await _drain(writer)
        return True


async def _drain(writer: asyncio.StreamWriter) -> None:
    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)


def _keep_alive(version: str, headers: Mapping[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    body = bytearray()
    while True:
        line = await reader.readline()
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(400, "bad chunk size in a chunked body") from None
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(body)
        if len(body) + size > limit:
            raise HttpError(413, f"the request body is over the {limit} bytes accepted here")
        body += await reader.readexactly(size)
        await reader.readline()


__all__ = [
    "TOKEN_COOKIE",
    "Handler",
    "HttpError",
    "HttpServer",
    "Request",
    "Response",
    "Route",
    "Router",
    "StreamResponse",
    "check_token",
    "require_token",
]
