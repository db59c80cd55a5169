"""A driver prints its job's worker output, from every node, as Ray's ``log_to_driver`` does.

The driver subscribes to its job's log channel (and to the channel of output
no job claims, which every driver prints, as in Ray) on the GCS's pub/sub;
raylets publish there what their workers write (`raylet/log_monitor.py`).
Each line is printed to the driver's stdout or stderr, as the worker wrote it,
prefixed ``(name pid=N)``, with ``, ip=HOST`` when it comes from another
node than the driver's, after deduplication (`log_dedup`).

When the driver disconnects (`drain`), it first asks every live node to
publish what its workers wrote so far, then publishes a marker of its own on
its channel and prints until the marker comes back: the GCS keeps the order of
a channel's messages, so every line published before it was printed (within
`DRAIN_TIMEOUT_S`). A task's last ``print`` before it returned is not lost
because the driver exits right after ``get``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import Callable

from aioray._private.common import rpc
from aioray._private.common.pubsub import log_channel
from aioray._private.common.worker_logs import prefix
from aioray._private.core_worker.log_dedup import LogDeduplicator
from aioray._private.core_worker.runtime import Runtime
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.logs")

RESUBSCRIBE_S = 0.5
SUBSCRIBE_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 3.0
_DRAIN_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, rpc.GRPCError, *rpc.CONNECTION_ERRORS)


class LogPrinter:
    def __init__(
        self,
        runtime: Runtime,
        job_id: bytes,
        node_id: bytes,
        live_raylets: Callable[[], list[str]],
        dedup: LogDeduplicator | None,
    ) -> None:
        self._runtime = runtime
        self._channel = log_channel(job_id.hex())
        self._node_id = node_id
        self._live_raylets = live_raylets
        self._dedup = dedup
        self._subscribed = asyncio.Event()
        self._markers: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Subscribes; returns once the subscription is in place (output from then on is printed)."""
        self._tasks.append(self._runtime.spawn(self._follow()))
        if self._dedup is not None:
            self._tasks.append(self._runtime.spawn(self._expire_held()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_TIMEOUT_S)

    async def _follow(self) -> None:
        # The cluster view comes first, queued with the subscription: once it is here, so is the
        # subscription, and no line published after it can be missed.
        request = pb.SubscribeRequest(channels=[self._channel, log_channel("")], with_cluster_view=True)
        while not self._runtime.closed:
            with contextlib.suppress(*rpc.CONNECTION_ERRORS, rpc.GRPCError):
                async for msg in self._runtime.gcs(pb.PubSubGcsServiceStub).subscribe(request):
                    if msg.channel != self._channel and msg.channel != log_channel(""):
                        self._subscribed.set()
                        continue
                    self.on_batch(pb.LogBatch().parse(msg.data))
            if not self._runtime.closed:
                await asyncio.sleep(RESUBSCRIBE_S)

    def on_batch(self, batch: pb.LogBatch) -> None:
        if batch.flush_token:
            marker = self._markers.pop(batch.flush_token, None)
            if marker is not None and not marker.done():
                marker.set_result(None)
            return
        self._print(self._dedup.deduplicate(batch) if self._dedup is not None else [batch])

    def _print(self, batches: list[pb.LogBatch]) -> None:
        for batch in batches:
            ip = None if batch.node_id == self._node_id else batch.ip
            head = prefix(batch.task_name, batch.actor_name, batch.pid, ip)
            sink = sys.stderr if batch.is_err else sys.stdout
            try:
                sink.write("".join(f"{head} {line}\n" for line in batch.lines))
                sink.flush()
            except (OSError, ValueError) as e:  # a closed or broken stream: nothing to print to
                log.debug("worker output not printed: %r", e)

    async def _expire_held(self) -> None:
        assert self._dedup is not None
        while not self._runtime.closed:
            await asyncio.sleep(self._dedup.window_s)
            self._print(self._dedup.expire())

    async def drain(self) -> None:
        """Prints what the workers wrote so far (within `DRAIN_TIMEOUT_S`), then stops."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await self._drain()
        except _DRAIN_ERRORS as e:
            log.debug("worker output may be cut short: %r", e)
        finally:
            if self._dedup is not None:
                self._print(self._dedup.flush())
            for task in self._tasks:
                task.cancel()

    async def _drain(self) -> None:
        if not self._subscribed.is_set():
            return
        channels = self._runtime.channels

        async def flush(address: str) -> None:
            with contextlib.suppress(*rpc.CONNECTION_ERRORS, rpc.GRPCError):
                await channels.stub(address, pb.LogAgentStub).flush_logs(pb.Empty(), timeout=DRAIN_TIMEOUT_S)

        await asyncio.gather(*(flush(a) for a in self._live_raylets()))
        token = secrets.token_hex(8)
        marker = self._markers[token] = asyncio.get_running_loop().create_future()
        message = pb.PubMessage(channel=self._channel, data=bytes(pb.LogBatch(flush_token=token)))
        await self._runtime.gcs(pb.PubSubGcsServiceStub).publish(message, timeout=DRAIN_TIMEOUT_S)
        await marker


__all__ = ["LogPrinter"]
