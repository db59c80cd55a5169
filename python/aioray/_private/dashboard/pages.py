"""The web pages (static files shipped in the package) and logging in with the cluster token.

The page shell and its scripts are public: they hold no cluster data. The data comes from the
JSON API, where everything beyond the overview needs the token. A browser logs in once
(``/login?token=T``, or the form at ``/login``) and gets the token as an HttpOnly, SameSite=Strict
cookie, so no script can read it and no other site's page can send it.
"""

from __future__ import annotations

import html
import mimetypes
import os
from urllib.parse import parse_qsl

from aioray._private.dashboard.http import (
    TOKEN_COOKIE,
    HttpError,
    Request,
    Response,
    Router,
    check_token,
    session_value,
)
from aioray._private.dashboard.server import DashboardContext, static_dir

COOKIE_MAX_AGE_S = 7 * 24 * 3600
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}

_LOGIN_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>aioray dashboard: log in</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body><main class="login"><h1>aioray dashboard</h1>
<p>{message}</p>
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>Cluster token <input type="password" name="token" id="token" autocomplete="off" autofocus></label>
<button type="submit">Log in</button></form>
<p class="hint">The token is printed by <code>aioray start --head</code>, kept in the session folder's
<code>cluster.json</code>, and in <code>AIORAY_AUTH_TOKEN</code> of the cluster's processes.</p>
</main></body></html>
"""


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a login link must not redirect anywhere else."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_form(message: str, next_url: str, status: int = 200) -> Response:
    page = _LOGIN_FORM.format(message=html.escape(message), next=html.escape(next_url, quote=True))
    return Response(page, status, "text/html; charset=utf-8")


def _logged_in(req: Request, token: str, next_url: str) -> Response:
    if not check_token(token, req.token):
        return _login_form("That is not the token of this cluster.", next_url, 401)
    resp = Response.redirect(next_url)
    resp.set_cookie(TOKEN_COOKIE, session_value(req.token), max_age=COOKIE_MAX_AGE_S)
    return resp


async def login_page(req: Request) -> Response:
    next_url = _safe_next(req.query.get("next"))
    if "token" in req.query:
        return _logged_in(req, req.query["token"], next_url)
    if req.authorized():
        return Response.redirect(next_url)
    return _login_form("Log in with the cluster's token to see more than the overview.", next_url)


async def login_form(req: Request) -> Response:
    try:
        form = dict(parse_qsl(req.body.decode(), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "the login form is not url-encoded") from None
    return _logged_in(req, form.get("token", ""), _safe_next(form.get("next")))


async def logout(req: Request) -> Response:
    resp = Response.redirect("/")
    resp.set_cookie(TOKEN_COOKIE, "", max_age=0)
    return resp


def _file(name: str) -> Response:
    root = os.path.realpath(static_dir())
    path = os.path.realpath(os.path.join(root, name))
    if not path.startswith(root + os.sep) or not os.path.isfile(path):
        raise HttpError(404, f"no such file: {name}")
    ext = os.path.splitext(path)[1]
    kind = _TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind.endswith("javascript"):
        kind += "; charset=utf-8"
    with open(path, "rb") as f:
        return Response(f.read(), 200, kind)


async def index(req: Request) -> Response:
    resp = _file("index.html")
    # The pages load only their own scripts and styles and talk only to this server.
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    resp.headers["X-Frame-Options"] = "DENY"
    return resp


async def static(req: Request) -> Response:
    return _file(req.params["name"])


async def favicon(req: Request) -> Response:
    return _file("favicon.svg")


def setup(router: Router, ctx: DashboardContext) -> None:
    router.get("/", index, auth=False)
    router.get("/static/{name:path}", static, auth=False)
    router.get("/favicon.ico", favicon, auth=False)
    router.get("/login", login_page, auth=False)
    router.post("/login", login_form, auth=False, max_body=8 << 10)
    router.post("/logout", logout, auth=False)

    async def whoami(req: Request) -> Response:
        # The routes tell the pages which optional parts (job submission) this dashboard serves.
        routes = [f"{r.method} {r.pattern}" for r in router.routes]
        return Response.json({"authorized": req.authorized(), "routes": routes})

    router.get("/api/auth", whoami, auth=False)


__all__ = ["setup"]
