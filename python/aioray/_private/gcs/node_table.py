"""The node table: membership, each node's resources (seed 000, protocol c) and health checks.

Raylets register and then report their free resources; both are published on
the node and resource channels, which is how every raylet keeps its view of
the cluster for spillback. A raylet that misses several health checks in a row
is declared dead: the callback lets the actor manager restart its actors.

Each node is stored when it registers and when it is declared dead (resource
reports, the hot path, are not: the next report refreshes them). A restarted
GCS keeps the nodes that were alive as alive and health-checks them at once:
a raylet that answers goes on, one that does not is declared dead as usual.
A raylet that registers again (after a GCS restart) keeps its entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aioray._private.common import rpc
from aioray._private.common.pubsub import NODE_CHANNEL, NODE_TOTALS_CHANNEL, RESOURCE_CHANNEL
from aioray._private.gcs.storage import Tables
from aioray._proto.aioray import v1 as pb

HEALTH_CHECK_PERIOD_S = 1.0
HEALTH_CHECK_TIMEOUT_S = 3.0  # a raylet starved of CPU for a moment is not dead
HEALTH_CHECK_FAILURES = 3

Publish = Callable[[str, bytes], None]
RecordEvent = Callable[[str, str, str], None]
TABLE = "nodes"
TOTALS_DELAY_S = 0.01


class NodeTable(pb.NodeInfoGcsServiceBase):
    def __init__(
        self,
        channels: rpc.ChannelPool,
        publish: Publish,
        has_subscribers: Callable[[str], bool],
        record_event: RecordEvent,
        on_node_death: Callable[[bytes], None],
        tables: Tables | None = None,
    ) -> None:
        self.nodes: dict[bytes, pb.NodeInfo] = {}
        self._tables = tables if tables is not None else Tables()
        self._failures: dict[bytes, int] = {}  # failed health checks in a row, by node
        self._channels = channels
        # Health checks on connections of their own: on the shared one they waited for a free stream
        # behind 100 long-polling lease requests (500 actors created at once) until the node was
        # declared dead.
        self._health_channels = channels.separate()
        self._publish = publish
        self._has_subscribers = has_subscribers
        self._record_event = record_event
        self._on_node_death = on_node_death
        self._health_task: asyncio.Task[None] | None = None
        # Called when a node joins or reports: pending placement groups may fit now.
        self.on_resources: Callable[[], None] = lambda: None
        self._totals_changed: set[bytes] = set()  # nodes whose new totals are not published yet

    def view(self) -> pb.ClusterView:
        return pb.ClusterView(nodes=list(self.nodes.values()))

    async def recover(self) -> int:
        """Loads the stored nodes; health checks start at once for those that were alive."""
        self.nodes = {k: pb.NodeInfo().parse(v) for k, v in (await self._tables.load(TABLE)).items()}
        if any(n.alive for n in self.nodes.values()):
            self._start_health_checks()
        return sum(n.alive for n in self.nodes.values())

    async def register_node(self, node_info: pb.NodeInfo) -> pb.RegisterNodeReply:
        node_id = node_info.node_id
        known = self.nodes.get(node_id)
        node_info.alive = True
        if known is not None:  # registering again, as after a GCS restart: the same node
            node_info.start_time = known.start_time or node_info.start_time
            if known.address != node_info.address:
                self._channels.drop(known.address)
                self._health_channels.drop(known.address)
            what = "registered again" if known.alive else "registered again after it was declared dead"
        else:
            what = "joined"
        node_info.start_time = node_info.start_time or time.time()
        self.nodes[node_id] = node_info
        self._failures.pop(node_id, None)
        self._tables.put(TABLE, node_id, bytes(node_info))
        self._record_event(
            "gcs",
            "WARNING" if known is not None and not known.alive else "INFO",
            f"node {node_id.hex()[:12]} {what} at {node_info.address}",
        )
        self._publish(NODE_CHANNEL, bytes(node_info))
        self._start_health_checks()
        self.on_resources()
        await self._tables.flush()
        return pb.RegisterNodeReply(view=self.view())

    def _start_health_checks(self) -> None:
        if self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self._health_check())

    async def report_resources(self, resource_report: pb.ResourceReport) -> pb.Empty:
        node = self.nodes.get(resource_report.node_id)
        if node is not None and node.alive:
            node.available = resource_report.available
            node.store_used = resource_report.store_used
            node.store_objects = resource_report.store_objects
            node.num_workers = resource_report.num_workers
            node.spilled_bytes = resource_report.spilled_bytes
            node.restored_bytes = resource_report.restored_bytes
            node.spilled_total = resource_report.spilled_total
            if self._has_subscribers(RESOURCE_CHANNEL):
                self._publish(RESOURCE_CHANNEL, bytes(resource_report))
            self.on_resources()
        return pb.Empty()

    def update_resources(self, fresh: pb.NodeInfo) -> None:
        """A live node's totals changed (placement-group bundles committed or cancelled there):
        stored and published whole, so that every raylet's view can schedule onto them."""
        node = self.nodes.get(fresh.node_id)
        if node is None or not node.alive:
            return
        node.total = fresh.total
        node.available = fresh.available
        # Stored and published at most once per TOTALS_DELAY_S: placing or removing groups one
        # after another changes a node each time, and each NodeInfo costs its writer and every
        # subscriber a parse (Ray sends its nodes' resources every 100 ms).
        if not self._totals_changed:
            asyncio.get_running_loop().call_later(TOTALS_DELAY_S, self._publish_totals)
        self._totals_changed.add(node.node_id)

    def _publish_totals(self) -> None:
        changed, self._totals_changed = self._totals_changed, set()
        for node_id in changed:
            node = self.nodes.get(node_id)
            if node is not None and node.alive:
                data = bytes(node)
                self._tables.put(TABLE, node_id, data)
                self._publish(NODE_TOTALS_CHANNEL, data)

    async def get_cluster_view(self, empty: pb.Empty) -> pb.ClusterView:
        return self.view()

    async def _health_check(self) -> None:
        """Declares a raylet dead after several failed pings in a row."""
        failures = self._failures
        while True:
            await asyncio.sleep(HEALTH_CHECK_PERIOD_S)
            for node in list(self.nodes.values()):
                if not node.alive:
                    continue
                stub = self._health_channels.stub(node.address, pb.NodeManagerStub)
                try:
                    await stub.get_node_info(pb.Empty(), timeout=HEALTH_CHECK_TIMEOUT_S)
                    failures.pop(node.node_id, None)
                except Exception:
                    if self.nodes.get(node.node_id) is not node:
                        continue  # it registered again meanwhile
                    failures[node.node_id] = failures.get(node.node_id, 0) + 1
                    if failures[node.node_id] >= HEALTH_CHECK_FAILURES:
                        failures.pop(node.node_id, None)
                        node.alive = False
                        self._tables.put(TABLE, node.node_id, bytes(node))
                        self._channels.drop(node.address)
                        self._health_channels.drop(node.address)
                        self._on_node_death(node.node_id)
                        self._record_event(
                            "gcs", "ERROR", f"node {node.node_id.hex()[:12]} is dead (no answer)"
                        )
                        self._publish(NODE_CHANNEL, bytes(node))

    def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        self._health_channels.close()
