"""Logging in to the dashboard and its static pages, over a real socket (no cluster needed)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from aioray._private.dashboard import http, pages, server

from .test_http import get, send

TOKEN = "0123456789abcdef"


@pytest.fixture
async def port() -> AsyncIterator[int]:
    ctx = server.DashboardContext(gcs_address="127.0.0.1:1", token=TOKEN, host="127.0.0.1")
    srv = http.HttpServer(server.build_router(ctx, ["aioray._private.dashboard.pages"]), ctx, TOKEN)
    ctx.port = await srv.start("127.0.0.1", 0)
    try:
        yield ctx.port
    finally:
        await srv.close()
        await ctx.aclose()


async def test_the_page_shell_and_its_files_are_public(port: int) -> None:
    status, headers, body = await send(port, get("/"))
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/static/app.js" in body and "script-src 'self'" in headers["content-security-policy"]
    status, headers, _ = await send(port, get("/static/app.js"))
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert (await send(port, get("/static/nope.js")))[0] == 404
    assert (await send(port, get("/static/%2e%2e/server.py")))[0] in (400, 404)


async def test_logging_in_sets_an_http_only_cookie_and_redirects_only_on_this_site(port: int) -> None:
    status, headers, _ = await send(port, get(f"/login?token={TOKEN}&next=/%23/actors"))
    assert status == 303 and headers["location"] == "/#/actors"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{http.TOKEN_COOKIE}={http.session_value(TOKEN)};") and "HttpOnly" in cookie
    assert TOKEN not in cookie
    assert "SameSite=Strict" in cookie
    status, headers, _ = await send(port, get(f"/login?token={TOKEN}&next=//evil.example/"))
    assert headers["location"] == "/"
    status, headers, body = await send(port, get("/login?token=wrong"))
    assert status == 401 and "set-cookie" not in headers and b"not the token of this cluster" in body
    status, _, body = await send(
        port, get("/api/auth", f"Cookie: {http.TOKEN_COOKIE}={http.session_value(TOKEN)}")
    )
    answer = json.loads(body)
    assert answer["authorized"] is True and "GET /api/auth" in answer["routes"]
    assert json.loads((await send(port, get("/api/auth")))[2])["authorized"] is False


async def test_the_login_form_posts_the_token(port: int) -> None:
    form = f"token={TOKEN}&next=%2F%23%2Ftasks".encode()
    raw = b"POST /login HTTP/1.1\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    status, headers, _ = await send(port, raw + b"Content-Length: %d\r\n\r\n%s" % (len(form), form))
    assert status == 303 and headers["location"] == "/#/tasks"
    assert http.session_value(TOKEN) in headers["set-cookie"]
    status, _, body = await send(port, get("/login"))
    assert status == 200 and b'name="token"' in body
    status, headers, _ = await send(port, b"POST /logout HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 303 and "Max-Age=0" in headers["set-cookie"]


def test_only_local_paths_are_followed_after_logging_in() -> None:
    assert pages._safe_next("/#/logs") == "/#/logs"
    for bad in (None, "", "http://evil", "//evil", "/\\evil"):
        assert pages._safe_next(bad) == "/"


def test_the_url_names_a_reachable_host() -> None:
    ctx = server.DashboardContext(gcs_address="10.0.0.7:6379", token=TOKEN, host="0.0.0.0", port=8265)
    assert ctx.url == "http://10.0.0.7:8265"
    ctx.host = "127.0.0.1"
    assert ctx.url == "http://127.0.0.1:8265"
    ctx.host = "::1"
    assert ctx.url == "http://[::1]:8265"
    ctx.channels.close()
