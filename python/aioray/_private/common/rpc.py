"""gRPC plumbing: authenticated servers and a pool of authenticated channels.

Every RPC carries the cluster's auth token in the ``x-aioray-token`` metadata;
a server refuses a call with a wrong or missing token (UNAUTHENTICATED) before
the handler runs. Unary calls of the pool's stubs travel as plain frames on the
same port (`framed_rpc`: the same routes, messages, handlers and errors, without
HTTP/2 in Python); ``AIORAY_RPC_TRANSPORT=grpc`` sends them over gRPC instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hmac
import os
import socket
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar, cast

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.events import RecvRequest, SendRequest, SendTrailingMetadata, listen
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.protocol import H2Protocol
from grpclib.server import Server
from h2.settings import SettingCodes

from aioray._private.common import framed_rpc, metrics

__all__ = ["CONNECTION_ERRORS", "ChannelPool", "GRPCError", "GcsUnreachableError", "Status", "start_server"]

TOKEN_HEADER = "x-aioray-token"
TRANSPORT_ENV = "AIORAY_RPC_TRANSPORT"  # "framed" (the default) or "grpc": how unary calls travel
# Large HTTP/2 windows: object transfers stream 4 MiB chunks, and a small window would stall
# every chunk on WINDOW_UPDATE round trips.
WINDOW = 64 << 20
CONFIG = Configuration(http2_connection_window_size=WINDOW, http2_stream_window_size=WINDOW)
StubT = TypeVar("StubT")

# Errors that mean "the peer is gone or unreachable" rather than "the call failed".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    StreamTerminatedError,
    asyncio.IncompleteReadError,
)


class GcsUnreachableError(ConnectionError):
    """The GCS did not answer for longer than the reconnect timeout: the head is gone, or still restarting."""


class PoolClosedError(ConnectionAbortedError):
    """A call through a `ChannelPool` that was closed (its process shuts down): not worth retrying."""


class AuthError(ConnectionRefusedError):
    """The peer refused our auth token: the address belongs to another cluster, or the token is wrong."""


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not of the form HOST:PORT")
    return host.strip("[]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for processes that must be told their port up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


RPC_LATENCY = metrics.REGISTRY.histogram(
    "aioray_rpc_server_latency_seconds",
    "Time from receiving an RPC to sending its status, by serving component and method "
    "(streams count their whole life)",
    ("component", "method"),
)
# Set when a call arrives, read when its status goes out: grpclib runs both events in the
# call's own task, so the value is the call's.
_call_started: contextvars.ContextVar[tuple[float, str] | None] = contextvars.ContextVar(
    "aioray_call_started", default=None
)


async def _refuse(stream: Any) -> None:
    raise GRPCError(Status.UNAUTHENTICATED, "missing or wrong aioray auth token")


# Calls one client may have open on one connection. h2 allows 100, after which a client's further calls
# wait for one to end: a driver long-polling 100 pending actors (or a raylet, lease requests) on its one
# GCS connection would hold up every other call it makes, past their deadlines.
MAX_CONCURRENT_STREAMS = 1 << 16


class _Protocol(H2Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connection._connection.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS}
        )
        self.connection.flush()


class _Server(Server):
    """grpclib's server, announcing `MAX_CONCURRENT_STREAMS` on each connection, that also serves
    framed unary calls (`framed_rpc`) on its port."""

    token = ""
    observe: framed_rpc.Observe | None = None

    def _h2_protocol(self) -> H2Protocol:
        base = super()._protocol_factory()
        return _Protocol(base.handler, base.config, base.h2_config)

    def _framed_protocol(self) -> framed_rpc.ServerConnection:
        self.__gc_step__()
        connection = framed_rpc.ServerConnection(self._mapping, self.token, self.observe)
        self._handlers.add(connection)  # type: ignore[arg-type]  # closed with the server's
        return connection

    def _protocol_factory(self) -> H2Protocol:
        return cast(H2Protocol, framed_rpc.Sniffer(self._h2_protocol, self._framed_protocol))


async def start_server(
    handlers: Collection[Any], host: str, port: int, token: str, component: str = ""
) -> tuple[Server, int]:
    """Starts a grpclib server that checks the token; returns it and its bound port. Each call's
    latency goes into `RPC_LATENCY` under `component` (gcs, raylet, worker, driver)."""
    server = _Server(list(handlers), config=CONFIG)
    expected = token.encode()
    by_method: dict[str, metrics.HistogramChild] = {}

    def observe_framed(route: str, seconds: float) -> None:
        child = by_method.get(route)
        if child is None:
            child = by_method[route] = RPC_LATENCY.labels(component, route)
        child.observe(seconds)

    server.token = token
    server.observe = observe_framed

    async def check_token(event: RecvRequest) -> None:
        _call_started.set((time.perf_counter(), event.method_name))
        got = event.metadata.get(TOKEN_HEADER, "")
        got_bytes = got.encode() if isinstance(got, str) else bytes(got)
        if not hmac.compare_digest(got_bytes, expected):
            event.method_func = _refuse

    async def observe(event: SendTrailingMetadata) -> None:
        started = _call_started.get()
        if started is None:
            return
        at, method = started
        child = by_method.get(method)
        if child is None:
            child = by_method[method] = RPC_LATENCY.labels(component, method)
        child.observe(time.perf_counter() - at)

    listen(server, RecvRequest, check_token)
    listen(server, SendTrailingMetadata, observe)
    await server.start(host, port, reuse_address=True)
    # uvloop's server is not an asyncio.Server, but has the same `sockets`.
    listening = cast("asyncio.Server | None", server._server)
    sockets = listening.sockets if listening is not None else ()
    bound = sockets[0].getsockname()[1] if sockets else port
    return server, int(bound)


class ChannelPool:
    """One channel per address, each adding the auth token to every request."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._channels: dict[str, Channel] = {}
        self._framed: dict[str, asyncio.Future[framed_rpc.ClientConnection]] = {}
        self._use_framed = os.environ.get(TRANSPORT_ENV, "framed") != "grpc"
        self._closed = False

    def channel(self, address: str) -> Channel:
        ch = self._channels.get(address)
        if ch is None:
            if self._closed:  # a late call while its process shuts down: no channel nobody would close
                raise PoolClosedError(f"not connecting to {address}: shutting down")
            host, port = split_address(address)
            ch = Channel(host, port, config=CONFIG)
            token = self._token

            async def add_token(event: SendRequest) -> None:
                event.metadata[TOKEN_HEADER] = token

            if token:  # an empty value is not valid metadata; the server refuses the call instead
                listen(ch, SendRequest, add_token)
            self._channels[address] = ch
        return ch

    def stub(self, address: str, stub_cls: Callable[[Channel], StubT]) -> StubT:
        stub = stub_cls(self.channel(address))
        if self._use_framed:
            # betterproto's stubs make every unary call through `_unary_unary`.
            stub._unary_unary = functools.partial(self._framed_unary, address, stub)  # type: ignore[attr-defined]
        return stub

    async def _framed_unary(
        self,
        address: str,
        stub: Any,
        route: str,
        request: Any,
        response_type: type[Any],
        *,
        timeout: float | None = None,
        deadline: Any = None,
        metadata: Any = None,
    ) -> Any:
        if deadline is not None or metadata is not None:  # what only gRPC carries
            return await type(stub)._unary_unary(
                stub, route, request, response_type, timeout=timeout, deadline=deadline, metadata=metadata
            )
        ready = self._framed.get(address)
        if ready is not None and ready.done() and not ready.cancelled() and ready.exception() is None:
            connection = ready.result()  # the usual case: connected (no task, no timer for that)
            if not connection.lost:
                return response_type().parse(await connection.call(route, bytes(request), timeout))
        loop = asyncio.get_running_loop()
        started = loop.time()
        connection = await asyncio.wait_for(self._framed_connection(address), timeout)
        if timeout is not None:
            timeout = max(0.001, timeout - (loop.time() - started))
        return response_type().parse(await connection.call(route, bytes(request), timeout))

    async def _framed_connection(self, address: str) -> framed_rpc.ClientConnection:
        pending = self._framed.get(address)
        if (
            pending is not None
            and pending.done()
            and (pending.cancelled() or pending.exception() is not None or pending.result().lost)
        ):
            if self._framed.get(address) is pending:
                del self._framed[address]
            pending = None
        if pending is None:
            if self._closed:
                raise PoolClosedError(f"not connecting to {address}: shutting down")
            host, port = split_address(address)
            pending = asyncio.ensure_future(framed_rpc.connect(host, port, self._token))
            self._framed[address] = pending
        # A caller that gives up must not cancel the connection others wait for.
        return await asyncio.shield(pending)

    def separate(self) -> ChannelPool:
        """Another pool with the same token and connections of its own: its calls never wait for a
        stream behind this pool's (a peer serves at most 100 calls at once on one connection)."""
        return ChannelPool(self._token)

    def gcs_stub(
        self, address: str, stub_cls: Callable[[Channel], StubT], reconnect_timeout_s: float
    ) -> StubT:
        """A stub of a GCS service whose unary calls ride out a GCS restart (see `_GcsRetrying`)."""
        return cast(StubT, _GcsRetrying(self.stub(address, stub_cls), address, reconnect_timeout_s))

    def drop(self, address: str) -> None:
        """Closes the channel to a peer that died, so a later call reconnects."""
        ch = self._channels.pop(address, None)
        if ch is not None:
            ch.close()
        _close_framed(self._framed.pop(address, None))

    def close(self) -> None:
        self._closed = True
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        for pending in self._framed.values():
            _close_framed(pending)
        self._framed.clear()


def _close_framed(pending: asyncio.Future[framed_rpc.ClientConnection] | None) -> None:
    """Closes a framed connection, or the one being made once it is made: cancelling the attempt
    would raise CancelledError in the calls waiting for it, which nobody cancelled."""

    def close(done: asyncio.Future[framed_rpc.ClientConnection]) -> None:
        if not done.cancelled() and done.exception() is None:
            done.result().close()

    if pending is not None:
        if pending.done():
            close(pending)
        else:
            pending.add_done_callback(close)


def _retryable(err: BaseException) -> bool:
    """A GCS that is gone or restarting: refused, reset, unavailable. Not a call that ran out of its
    own time (TimeoutError, an OSError in 3.11): that is the caller's deadline, and is kept."""
    if isinstance(err, GRPCError):
        return err.status == Status.UNAVAILABLE
    return isinstance(err, CONNECTION_ERRORS) and not isinstance(err, TimeoutError | PoolClosedError)


class _GcsRetrying:
    """Wraps a GCS stub: a unary call that finds the GCS unreachable is retried with backoff.

    The GCS may be down for a moment (its supervisor restarts it, and it reloads its tables from
    storage); every GCS handler is idempotent, so a call that may or may not have arrived before
    the connection broke can be sent again. After `reconnect_timeout_s` without an answer the call
    fails with GcsUnreachableError. Streams (`subscribe`) are not wrapped: their readers resubscribe.
    """

    def __init__(self, stub: Any, address: str, reconnect_timeout_s: float) -> None:
        self._stub = stub
        self._address = address
        self._budget = reconnect_timeout_s

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if name == "subscribe" or not callable(method):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._budget
            delay = 0.05
            while True:
                try:
                    return await method(*args, **kwargs)
                except Exception as e:
                    if not _retryable(e):
                        raise
                    if loop.time() + delay > deadline:
                        raise GcsUnreachableError(
                            f"the GCS at {self._address} did not answer {name} for {self._budget:g}s "
                            f"(is the head node down?): {e!r}"
                        ) from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

        return call


def translate_error(err: BaseException, what: str) -> BaseException:
    """A user-facing error for a failed RPC."""
    if isinstance(err, GRPCError) and err.status == Status.UNAUTHENTICATED:
        return AuthError(f"{what}: the peer refused the auth token (wrong cluster or wrong token)")
    return err
