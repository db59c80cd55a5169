"""The raylet's view of the cluster (seed 000, protocol c), kept current from the GCS without polling.

The raylet registers its node with the GCS (which answers with the view so
far), then subscribes to the node and resource channels, receiving a snapshot
first and every change after it. The view drives spillback and tells the
object manager where other nodes' raylets and data ports are. The same stream
brings the deaths of lease owners (`on_worker_death`, see `owners`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aioray._private.common import rpc
from aioray._private.common.pubsub import (
    NODE_CHANNEL,
    NODE_TOTALS_CHANNEL,
    RESOURCE_CHANNEL,
    VIEW_CHANNEL,
    WORKER_DEATH_CHANNEL,
)
from aioray._private.common.resources import ResourceSet
from aioray._private.raylet import policy
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.raylet")

RESUBSCRIBE_S = 0.5
GCS_GONE: tuple[type[BaseException], ...] = (*rpc.CONNECTION_ERRORS, rpc.GRPCError)
REGISTER_TIMEOUT_S = 30.0


class ClusterView:
    def __init__(self, channels: rpc.ChannelPool, gcs_address: str) -> None:
        self._channels = channels
        self._gcs_address = gcs_address
        self.nodes: list[pb.NodeInfo] = []
        # The live nodes as the scheduling policy reads them, kept in step with `nodes`.
        self.live: dict[bytes, policy.Node] = {}
        self.stopping = False
        # Called when a node joins, leaves or frees resources: queued leases may fit elsewhere now.
        self.on_change: Callable[[], None] = lambda: None
        # Called when a worker or driver anywhere died: the leases it owned here end.
        self.on_worker_death: Callable[[pb.WorkerDeath], None] = lambda death: None

    async def register(self, node_info: Callable[[], pb.NodeInfo]) -> None:
        """Registers this node with the GCS, retrying while the GCS is still starting."""
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while True:
            try:
                await self._register_once(node_info)
                return
            except rpc.CONNECTION_ERRORS:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def refresh_now(self) -> None:
        with contextlib.suppress(Exception):
            stub = self._channels.stub(self._gcs_address, pb.NodeInfoGcsServiceStub)
            self._set_nodes(list((await stub.get_cluster_view(pb.Empty(), timeout=5)).nodes))

    async def follow(self, node_info: Callable[[], pb.NodeInfo]) -> None:
        """Keeps the view current from the GCS's node and resource channels until stopped.

        When the stream breaks the GCS went away, perhaps to be restarted by its supervisor: once it
        answers again this node registers anew (with its current resources; registering is
        idempotent) and subscribes again, receiving a fresh snapshot of the view.
        """
        stub = self._channels.stub(self._gcs_address, pb.PubSubGcsServiceStub)
        request = pb.SubscribeRequest(
            channels=[NODE_CHANNEL, NODE_TOTALS_CHANNEL, RESOURCE_CHANNEL, WORKER_DEATH_CHANNEL],
            with_cluster_view=True,
        )
        while not self.stopping:
            with contextlib.suppress(*rpc.CONNECTION_ERRORS, rpc.GRPCError):
                async for msg in stub.subscribe(request):
                    self.apply(msg)
            while not self.stopping:
                await asyncio.sleep(RESUBSCRIBE_S)
                try:
                    await self._register_once(node_info)
                    break
                except GCS_GONE as e:
                    log.info("the GCS at %s is not back yet: %r", self._gcs_address, e)

    async def _register_once(self, node_info: Callable[[], pb.NodeInfo]) -> None:
        stub = self._channels.stub(self._gcs_address, pb.NodeInfoGcsServiceStub)
        reply = await stub.register_node(node_info(), timeout=5)
        self._set_nodes(list(reply.view.nodes))
        self.on_change()

    def _set_nodes(self, nodes: list[pb.NodeInfo]) -> None:
        self.nodes = nodes
        self.live = {n.node_id: policy.Node.of(n) for n in nodes if n.alive}

    def _index(self, node: pb.NodeInfo) -> None:
        if node.alive:
            self.live[node.node_id] = policy.Node.of(node)
        else:
            self.live.pop(node.node_id, None)

    def debit(self, address: str, shape: ResourceSet) -> None:
        """Counts a request sent on to `address` against its free resources until it reports again,
        so one round of spillbacks does not send it more than it has free."""
        for node in self.nodes:
            if node.address == address:
                free = ResourceSet.from_wire(node.available.amounts) - shape
                node.available = pb.ResourceMap(amounts=free.to_dict())
                self._index(node)

    def apply(self, msg: pb.PubMessage) -> None:
        if msg.channel == WORKER_DEATH_CHANNEL:
            self.on_worker_death(pb.WorkerDeath().parse(msg.data))
            return
        if msg.channel == VIEW_CHANNEL:
            self._set_nodes(list(pb.ClusterView().parse(msg.data).nodes))
        elif msg.channel in (NODE_CHANNEL, NODE_TOTALS_CHANNEL):
            node = pb.NodeInfo().parse(msg.data)
            others = [n for n in self.nodes if n.node_id != node.node_id]
            self.nodes = [*others, node]
            self._index(node)
        elif msg.channel == RESOURCE_CHANNEL:
            report = pb.ResourceReport().parse(msg.data)
            freed = False
            for n in self.nodes:
                if n.node_id == report.node_id:
                    before = n.available.amounts
                    freed = any(v > before.get(k, 0.0) for k, v in report.available.amounts.items())
                    n.available = report.available
                    n.store_used = report.store_used
                    n.store_objects = report.store_objects
                    n.num_workers = report.num_workers
                    self._index(n)
            if not freed:  # only resources freeing up can make queued work fit somewhere
                return
        self.on_change()

    def data_address_of(self, raylet_address: str) -> tuple[str, int] | None:
        """The object-manager (data) address of the node whose raylet serves at `raylet_address`."""
        for node in self.nodes:
            if node.address == raylet_address and node.alive and node.object_manager_address:
                return rpc.split_address(node.object_manager_address)
        return None

    def node_id_of(self, raylet_address: str) -> bytes:
        """The id of the node whose raylet serves at `raylet_address` (b"" if unknown)."""
        for node in self.nodes:
            if node.address == raylet_address:
                return node.node_id
        return b""

    def raylet_addresses(self) -> dict[bytes, str]:
        """Node id -> raylet address of every live node."""
        return {n.node_id: n.address for n in self.nodes if n.alive}
