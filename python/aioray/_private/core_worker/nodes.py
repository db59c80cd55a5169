"""What a core worker knows of the cluster's nodes: their raylets' addresses and which died.

It follows the GCS's node channel, so that an object whose node died is
rebuilt from lineage before anyone tries to read it there.
"""

from __future__ import annotations

import asyncio
import contextlib

from aioray._private.common import rpc
from aioray._private.common.pubsub import NODE_CHANNEL, VIEW_CHANNEL
from aioray._private.core_worker.runtime import Runtime
from aioray._proto.aioray import v1 as pb

RESUBSCRIBE_S = 0.5


class NodeDirectory:
    def __init__(self, runtime: Runtime, local_node_id: bytes, local_address: str) -> None:
        self._runtime = runtime
        self.addresses: dict[bytes, str] = {local_node_id: local_address}
        self.dead: set[bytes] = set()

    def note(self, node_id: bytes, address: str) -> None:
        self.addresses.setdefault(node_id, address)

    def address_of(self, node_id: bytes) -> str:
        return self.addresses.get(node_id, "")

    async def follow(self) -> None:
        """Learns of node joins and deaths from the GCS, resubscribing (from a fresh snapshot of the
        view) whenever the stream breaks, e.g. while the GCS restarts; until the runtime closes."""
        request = pb.SubscribeRequest(channels=[NODE_CHANNEL], with_cluster_view=True)
        while not self._runtime.closed:
            with contextlib.suppress(*rpc.CONNECTION_ERRORS, rpc.GRPCError):
                async for msg in self._runtime.gcs(pb.PubSubGcsServiceStub).subscribe(request):
                    if msg.channel == VIEW_CHANNEL:
                        for node in pb.ClusterView().parse(msg.data).nodes:
                            self._apply(node)
                    else:
                        self._apply(pb.NodeInfo().parse(msg.data))
            if not self._runtime.closed:  # closing breaks the stream: that is no reason to resubscribe
                await asyncio.sleep(RESUBSCRIBE_S)

    def _apply(self, node: pb.NodeInfo) -> None:
        if node.alive:
            self.addresses[node.node_id] = node.address
            self.dead.discard(node.node_id)
        else:
            self.dead.add(node.node_id)

    async def is_gone(self, node_id: bytes) -> bool:
        if node_id in self.dead:
            return True
        with contextlib.suppress(*rpc.CONNECTION_ERRORS, rpc.GRPCError):
            view = await self._runtime.gcs(pb.NodeInfoGcsServiceStub).get_cluster_view(pb.Empty(), timeout=10)
            return any(n.node_id == node_id and not n.alive for n in view.nodes)
        return False
