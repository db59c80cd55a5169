"""A core worker's metrics, sent to its node's raylet, which serves them with the node's.

Every `PERIOD_S` the process takes a snapshot of its registry and sends it
(``MetricsAgent.ReportMetrics``) if it changed, and at least every
`HEARTBEAT_S` (the raylet treats a reporter silent for a minute as gone); a
driver sends a last one when it disconnects. ``AIORAY_METRICS_REPORT_PERIOD_S=0``
turns reporting off: the process then counts but its node does not show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from aioray._private.common import metrics
from aioray._private.core_worker.runtime import Runtime
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.metrics")

PERIOD_S = float(os.environ.get("AIORAY_METRICS_REPORT_PERIOD_S", "1.0"))
HEARTBEAT_S = 10.0


class MetricsReporter:
    def __init__(
        self, runtime: Runtime, reporter_id: bytes, registry: metrics.Registry = metrics.REGISTRY
    ) -> None:
        self._runtime = runtime
        self._reporter_id = reporter_id
        self._registry = registry
        self._last: metrics.Snapshot | None = None
        self._last_sent = 0.0

    @property
    def enabled(self) -> bool:
        return PERIOD_S > 0

    async def run(self) -> None:
        """Until the runtime closes (its task is cancelled then)."""
        while not self._runtime.closed:
            await asyncio.sleep(PERIOD_S)
            with contextlib.suppress(Exception):
                await self.send(force=False)

    async def send(self, force: bool = True) -> None:
        snapshot = self._registry.snapshot()
        now = time.monotonic()
        if not force and snapshot == self._last and now - self._last_sent < HEARTBEAT_S:
            return
        report = pb.MetricsReport(
            reporter_id=self._reporter_id, pid=os.getpid(), snapshot=metrics.encode_snapshot(snapshot)
        )
        try:
            await self._runtime.raylet(pb.MetricsAgentStub).report_metrics(report, timeout=5)
        except Exception as e:
            log.debug("metrics not reported to the raylet: %r", e)
            return
        self._last, self._last_sent = snapshot, now


__all__ = ["MetricsReporter"]
