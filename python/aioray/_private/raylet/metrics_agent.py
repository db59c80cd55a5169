"""The node's metrics endpoint: ``/metrics`` in the Prometheus text format, for the whole node.

A Prometheus scrape of a node reads, merged by metric name and labels:
- the raylet's own metrics (leases, workers, store, spilling, transfers, its
  RPC latencies; the node's gauges are read when the page is made);
- the last snapshot each core worker of the node (workers and drivers) sent
  with ``ReportMetrics`` (task counts by state, their RPC latencies);
- on the head, the GCS's (``MetricsSource.GetMetrics``: its RPC latencies).

Counts of processes that ended stay in (a worker's finished tasks do not
vanish from a counter when it exits): its last snapshot's counters and
histograms are kept, its gauges dropped. A reporter silent for
`REPORTER_TTL_S` (a driver that went away) is treated as ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aioray._private.common import metrics
from aioray._private.common.metrics_http import MetricsServer
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.raylet")

REPORTER_TTL_S = 60.0  # reporters send at least every 10 s (core_worker/metrics_reporter.py)


class MetricsAgent(pb.MetricsAgentBase):
    def __init__(
        self,
        registry: metrics.Registry,
        gcs_snapshot: Callable[[], Awaitable[metrics.Snapshot | None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`gcs_snapshot` (head only) fetches the GCS's metrics; None when it cannot."""
        self._registry = registry
        self._gcs_snapshot = gcs_snapshot
        self._clock = clock
        self._reporters: dict[bytes, tuple[metrics.Snapshot, float]] = {}
        self._retired: metrics.Snapshot = []
        self.server = MetricsServer(self.render)

    async def report_metrics(self, metrics_report: pb.MetricsReport) -> pb.Empty:
        try:
            snapshot = metrics.decode_snapshot(metrics_report.snapshot)
        except Exception as e:
            log.warning("a metrics report of pid %d cannot be read: %r", metrics_report.pid, e)
            return pb.Empty()
        self._reporters[metrics_report.reporter_id] = (snapshot, self._clock())
        return pb.Empty()

    def retire(self, reporter_id: bytes) -> None:
        """A reporter's process ended: its counts are kept, its levels dropped."""
        known = self._reporters.pop(reporter_id, None)
        if known is not None:
            self._retired = metrics.merge([self._retired, metrics.without_gauges(known[0])])

    def _expire(self) -> None:
        oldest = self._clock() - REPORTER_TTL_S
        for reporter_id in [r for r, (_, at) in self._reporters.items() if at < oldest]:
            self.retire(reporter_id)

    async def snapshot(self) -> metrics.Snapshot:
        self._expire()
        parts = [self._registry.snapshot(), self._retired, *(s for s, _ in self._reporters.values())]
        if self._gcs_snapshot is not None:
            gcs = await self._gcs_snapshot()
            if gcs is not None:
                parts.append(gcs)
        return metrics.merge(parts)

    async def render(self) -> str:
        return metrics.render(await self.snapshot())

    async def start(self, host: str, port: int) -> int:
        return await self.server.start(host, port)

    def close(self) -> None:
        self.server.close()


__all__ = ["REPORTER_TTL_S", "MetricsAgent"]
