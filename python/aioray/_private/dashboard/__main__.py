"""Runs the dashboard process: ``python -m aioray._private.dashboard``.

It reports ``{"port": N, "url": ...}`` on its ready pipe once it serves. The cluster's auth token
comes in the environment (AIORAY_AUTH_TOKEN), never on the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import signal

from aioray._private.common import process
from aioray._private.dashboard import server
from aioray._private.dashboard.http import HttpServer

log = process.setup_logging(f"dashboard[{os.getpid()}]")


async def bind(http: HttpServer, host: str, port: int, retries: int) -> int:
    """Serves on `port`, or with `retries` the first free one of the next `retries` ports."""
    for candidate in range(port, port + retries + 1):
        try:
            return await http.start(host, candidate)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or candidate == port + retries or candidate >= 65535:
                if e.errno == errno.EADDRINUSE:
                    tried = f"port {port}" if not retries else f"ports {port}-{candidate}"
                    raise OSError(e.errno, f"the dashboard cannot serve on {host}: {tried} in use") from e
                raise
    raise AssertionError("unreachable")


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    process.watch_lifeline(loop, stop.set)
    ctx = server.DashboardContext(
        gcs_address=args.gcs_address,
        token=os.environ.get(process.TOKEN_ENV, ""),
        host=args.host,
        session_dir=args.session_dir,
    )
    http = HttpServer(server.build_router(ctx), ctx, ctx.token)
    try:
        try:
            ctx.port = await bind(http, args.host, args.port, args.port_retries)
        except OSError as e:
            log.error("%s", e.strerror or e)
            process.announce_ready(json.dumps({"error": e.strerror or str(e)}))
            return
        process.announce_ready(json.dumps({"port": ctx.port, "url": ctx.url}))
        await stop.wait()
    finally:
        await http.close()
        await ctx.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="aioray-dashboard")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8265)
    parser.add_argument(
        "--port-retries", type=int, default=0, help="try the next N ports when --port is taken"
    )
    parser.add_argument("--gcs-address", required=True)
    parser.add_argument("--session-dir", default="")
    args = parser.parse_args(argv)
    process.install_uvloop()
    asyncio.run(run(args))


main()
