"""The dashboard's HTTP/1.1 server: parsing, routing, auth, limits and streamed responses, over a
real socket to a server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from aioray._private.dashboard import http
from aioray._private.dashboard.http import HttpError, Request, Response, Router, StreamResponse

TOKEN = "s3cret-token"


async def hello(req: Request) -> Response:
    return Response.json({"hello": req.params.get("name", "world"), "q": req.query})


async def echo(req: Request) -> Response:
    return Response.json({"got": req.json()})


async def broken(req: Request) -> Response:
    raise RuntimeError("a bug in a handler")


async def slow(req: Request) -> Response:
    await asyncio.sleep(60)
    return Response("never")


async def missing(req: Request) -> Response:
    raise HttpError(404, f"no job {req.params['job_id']!r}")


async def stream(req: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for k in range(3):
            yield f"line {k}\n".encode()

    return StreamResponse(chunks())


async def rest(req: Request) -> Response:
    return Response(req.params["name"])


def make_router() -> Router:
    router = Router()
    router.get("/hello", hello, auth=False)
    router.get("/hello/{name}", hello, auth=False)
    router.get("/api/jobs/", hello)
    router.get("/api/jobs/{job_id}", missing)
    router.post("/echo", echo, max_body=64)
    router.get("/broken", broken, auth=False)
    router.get("/slow", slow, auth=False, timeout=0.2)
    router.get("/stream", stream)
    router.get("/files/{name:path}", rest, auth=False)
    return router


async def send(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, read to the end (Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, body


def get(path: str, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode()


@pytest.fixture
async def server() -> AsyncIterator[int]:
    srv = http.HttpServer(make_router(), app=None, token=TOKEN)
    port = await srv.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await srv.close()


async def test_routes_by_path_with_parameters_and_query(server: int) -> None:
    status, headers, body = await send(server, get("/hello/ada?x=1&y=two"))
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"hello": "ada", "q": {"x": "1", "y": "two"}}
    status, _, body = await send(server, get("/hello"))
    assert json.loads(body)["hello"] == "world"
    status, _, body = await send(server, get("/files/a/b%20c.txt"))
    assert (status, body) == (200, b"a/b c.txt")


async def test_unknown_paths_and_methods_get_404_and_405(server: int) -> None:
    status, _, body = await send(server, get("/nope"))
    assert status == 404 and "no such page" in json.loads(body)["error"]
    status, headers, _ = await send(server, b"DELETE /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 405 and headers["allow"] == "GET"


async def test_protected_routes_need_the_token(server: int) -> None:
    status, headers, body = await send(server, get("/api/jobs/"))
    assert status == 401 and "auth token" in json.loads(body)["error"]
    assert headers["www-authenticate"].startswith("Bearer")
    status, _, _ = await send(server, get("/api/jobs/", "Authorization: Bearer wrong"))
    assert status == 401
    status, _, _ = await send(server, get("/api/jobs/", f"Authorization: Bearer {TOKEN}"))
    assert status == 200
    session = http.session_value(TOKEN)
    status, _, _ = await send(server, get("/api/jobs/", f"Cookie: a=b; {http.TOKEN_COOKIE}={session}"))
    assert status == 200
    # The cookie holds a value derived from the token; the token itself there is refused.
    status, _, _ = await send(server, get("/api/jobs/", f"Cookie: {http.TOKEN_COOKIE}={TOKEN}"))
    assert status == 401


def post(path: str, body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def test_a_cookie_post_must_come_from_the_dashboards_own_pages(server: int) -> None:
    cookie = f"Cookie: {http.TOKEN_COOKIE}={http.session_value(TOKEN)}"
    status, _, body = await send(server, post("/echo", b"{}", cookie, "Origin: http://evil.example"))
    assert status == 403 and "dashboard's pages" in json.loads(body)["error"]
    status, _, _ = await send(server, post("/echo", b"{}", cookie, "Sec-Fetch-Site: cross-site"))
    assert status == 403
    status, _, body = await send(server, post("/echo", b"{}", cookie, "Origin: http://x"))
    assert status == 200
    # A script with the token in its header is no browser page: no Origin needed.
    status, _, _ = await send(
        server, post("/echo", b"{}", f"Authorization: Bearer {TOKEN}", "Origin: http://o")
    )
    assert status == 200


async def test_no_body_is_read_for_a_request_without_the_token(server: int) -> None:
    # The server answers 401 from the head alone and closes: the 60-byte body is never taken for a
    # request, even on a connection asking to be kept alive.
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    body = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".ljust(60, b" ")
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n" + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 401") and data.count(b"HTTP/1.1") == 1


async def test_literal_segments_win_and_handlers_raise_clean_errors(server: int) -> None:
    auth = f"Authorization: Bearer {TOKEN}"
    status, _, body = await send(server, get("/api/jobs/raysubmit_1", auth))
    assert status == 404 and json.loads(body) == {"error": "no job 'raysubmit_1'", "status": 404}


async def test_a_failing_or_slow_handler_is_an_error_answer_not_a_crash(server: int) -> None:
    status, _, body = await send(server, get("/broken"))
    assert status == 500 and "a bug in a handler" in json.loads(body)["error"]
    status, _, body = await send(server, get("/slow"))
    assert status == 504
    status, _, _ = await send(server, get("/hello"))  # still serving
    assert status == 200


async def test_bodies_json_and_limits(server: int) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    payload = b'{"a": [1, 2]}'
    raw = b"POST /echo HTTP/1.1\r\nConnection: close\r\n" + auth.encode()
    status, _, body = await send(server, raw + b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    assert status == 200 and json.loads(body) == {"got": {"a": [1, 2]}}
    status, _, body = await send(server, raw + b"Content-Length: 5\r\n\r\nnot j")
    assert status == 400 and "not JSON" in json.loads(body)["error"]
    status, _, body = await send(server, raw + b"Content-Length: 1000\r\n\r\n" + b"x" * 1000)
    assert status == 413
    chunked = b"Transfer-Encoding: chunked\r\n\r\n4\r\n[1, \r\n2\r\n2]\r\n0\r\n\r\n"
    status, _, body = await send(server, raw + chunked)
    assert status == 200 and json.loads(body) == {"got": [1, 2]}


async def test_malformed_requests_get_400(server: int) -> None:
    status, _, _ = await send(server, b"NONSENSE\r\n\r\n")
    assert status == 400
    status, _, _ = await send(server, b"GET /hello HTTP/1.1\r\nbad header line\r\n\r\n")
    assert status == 400
    status, _, _ = await send(server, get("/files/../secret"))
    assert status == 400
    status, _, _ = await send(server, b"GET /hello HTTP/1.1\r\n" + b"X: " + b"y" * 40000 + b"\r\n\r\n")
    assert status in (400, 431)


async def test_keep_alive_serves_several_requests_on_one_connection(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        for name in ("a", "b"):
            writer.write(f"GET /hello/{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")).split(
                    b":"
                )[1]
            )
            assert json.loads(await reader.readexactly(length))["hello"] == name
    finally:
        writer.close()


async def test_streamed_responses_are_chunked(server: int) -> None:
    status, headers, body = await send(server, get("/stream", f"Authorization: Bearer {TOKEN}"))
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body == b"7\r\nline 0\n\r\n7\r\nline 1\n\r\n7\r\nline 2\n\r\n0\r\n\r\n"


def test_router_refuses_bad_patterns() -> None:
    router = Router()
    router.get("/a/{x}", hello)
    with pytest.raises(ValueError, match="routed twice"):
        router.get("/a/{x}", hello)
    with pytest.raises(ValueError, match="last segment"):
        router.get("/b/{rest:path}/c", hello)
    with pytest.raises(ValueError, match="starts with"):
        router.get("b", hello)


def test_tokens_compare_whole_and_an_empty_expected_token_admits_nobody() -> None:
    assert http.check_token(TOKEN, TOKEN)
    assert not http.check_token(TOKEN[:-1], TOKEN)
    assert not http.check_token("", "")
    req = Request("GET", "/", {}, {"authorization": f"bearer {TOKEN}"}, token=TOKEN)
    assert req.authorized()
    http.require_token(req)
    with pytest.raises(HttpError) as err:
        http.require_token(Request("GET", "/", {}, {}, token=TOKEN))
    assert err.value.status == 401


def test_query_int_checks_range() -> None:
    req = Request("GET", "/", {"limit": "5", "bad": "x", "big": "99"}, {})
    assert req.query_int("limit", 1) == 5 and req.query_int("absent", 7) == 7
    with pytest.raises(HttpError, match="integer"):
        req.query_int("bad", 1)
    with pytest.raises(HttpError, match="between"):
        req.query_int("big", 1, 0, 10)
