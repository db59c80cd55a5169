"""The core loop and the channels that every part of a core worker shares.

A driver runs the core loop on a background thread and user threads call in;
a worker runs it on its main thread. Parts schedule work on it with `spawn`
(errors of background tasks are logged, not lost) and block on it from other
threads with `run_sync`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from grpclib.client import Channel

from aioray._private.common import rpc
from aioray._private.common.config import GCS_RECONNECT_TIMEOUT_S
from aioray._private.core_worker import task_channel
from aioray.exceptions import GetTimeoutError

log = logging.getLogger("aioray.core_worker")
T = TypeVar("T")
StubT = TypeVar("StubT")


class Runtime:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, token: str, gcs_address: str, raylet_address: str
    ) -> None:
        self.loop = loop
        self.token = token
        self.gcs_address = gcs_address
        self.raylet_address = raylet_address
        self.address = ""  # this process's own server, once it is up
        self.worker_id = b""
        self.channels = rpc.ChannelPool(token)
        self.task_channels = task_channel.TaskChannels(self.channels, token)
        self.loop_thread_id: int | None = None
        self.closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def bind_loop_thread(self) -> None:
        """Called on the core loop once it runs: blocking calls from this thread are refused."""
        self.loop_thread_id = threading.get_ident()

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.loop_thread_id

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """On the loop: runs `coro` in the background, cancelled at close, its failure logged."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self.closed:
            log.warning("background task failed: %r", task.exception())

    def spawn_threadsafe(self, coro: Coroutine[Any, Any, Any]) -> bool:
        """From any thread: `spawn` on the loop; False (and `coro` closed) once the loop is closed at exit."""
        try:
            self.loop.call_soon_threadsafe(self.spawn, coro)
        except RuntimeError:
            coro.close()
            return False
        return True

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """From any thread: runs `fn(*args)` on the loop."""
        self.loop.call_soon_threadsafe(fn, *args)

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs `coro` on the core loop from another thread and waits for it."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(
                "a blocking aioray call was made on aioray's event loop; use `await` (e.g. `await ref`) instead"
            )
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.done():
                raise  # the coroutine's own timeout error
            fut.cancel()
            raise GetTimeoutError(f"timed out after {timeout}s") from None
        except KeyboardInterrupt:  # a cancel of the task that waits here: stop waiting on the loop too
            fut.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """From another thread: runs `coro` on the loop; its result as a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def gcs(self, service: Callable[[Channel], StubT], reconnect_timeout_s: float | None = None) -> StubT:
        """A stub of one of the GCS's services; on the loop only (channels belong to their loop).

        Its calls ride out a GCS restart for `reconnect_timeout_s` (default: the cluster's
        AIORAY_GCS_RECONNECT_TIMEOUT_S), then fail with GcsUnreachableError; a call on behalf of a
        user call with a shorter timeout passes that, so the user gets the clearer error.
        """
        budget = GCS_RECONNECT_TIMEOUT_S if reconnect_timeout_s is None else reconnect_timeout_s
        return self.channels.gcs_stub(self.gcs_address, service, budget)

    def raylet(self, service: Callable[[Channel], StubT]) -> StubT:
        """A stub of one of the local raylet's services; on the loop only."""
        return self.channels.stub(self.raylet_address, service)

    def close(self) -> None:
        self.closed = True
        for t in list(self._tasks):
            t.cancel()
        self.channels.close()

    async def drain(self, timeout: float, others: Iterable[asyncio.Task[Any]] = ()) -> None:
        """Gives the tasks `close` cancelled (and `others`, cancelled by their owners) a moment to
        unwind, so none is destroyed still pending."""
        tasks = [t for t in [*self._tasks, *others] if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


async def quietly(coro: Coroutine[Any, Any, Any]) -> None:
    """Awaits `coro`, ignoring its failure (for best-effort notifications to peers that may be gone)."""
    with contextlib.suppress(Exception):
        await coro
