"""The dashboard's application: what every route module shares, and the list of route modules.

A route module is a module with ``def setup(router: Router, ctx: DashboardContext) -> None`` that
adds its routes (see `http`); listing it in `ROUTE_MODULES` mounts it. Its handlers reach the
cluster through ``req.app`` (this `DashboardContext`): the GCS address, the auth token, a channel
pool whose channels reconnect after a GCS restart, and the node's session folder.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aioray._private.common import rpc
from aioray._private.dashboard.http import Router

log = logging.getLogger("aioray.dashboard")
CLOSE_TIMEOUT_S = 10.0

# Each: a module with `setup(router, ctx)`. Order matters only for the static files, which come
# last (their `{name:path}` route would otherwise answer before more specific ones are tried,
# though the router tries literal routes first anyway).
ROUTE_MODULES = [
    "aioray._private.dashboard.pages",
    "aioray._private.dashboard.cluster_routes",
    "aioray._private.dashboard.job.routes",
]


@dataclass
class DashboardContext:
    gcs_address: str
    token: str
    host: str
    port: int = 0
    session_dir: str = ""
    channels: rpc.ChannelPool = field(init=False)
    # Anything a route module keeps for the life of the process (e.g. a job manager), by name.
    services: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.channels = rpc.ChannelPool(self.token)

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0", "::"):  # every interface: the head's own address is one of them
            host = self.gcs_address.rpartition(":")[0].strip("[]") or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def on_close(self, close: Callable[[], Awaitable[None]]) -> None:
        """`close` is awaited when the dashboard stops (SIGTERM, its node stopping), newest first."""
        self._closers.append(close)

    async def aclose(self) -> None:
        for close in reversed(self._closers):
            try:
                await asyncio.wait_for(close(), CLOSE_TIMEOUT_S)
            except Exception:
                log.exception("a dashboard route module did not close cleanly")
        self.channels.close()


def build_router(ctx: DashboardContext, modules: list[str] | None = None) -> Router:
    router = Router()
    for name in ROUTE_MODULES if modules is None else modules:
        importlib.import_module(name).setup(router, ctx)
    return router


def static_dir() -> str:
    return os.path.join(os.path.dirname(__file__), "static")


__all__ = ["ROUTE_MODULES", "DashboardContext", "build_router", "static_dir"]
