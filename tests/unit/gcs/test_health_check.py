"""The GCS health-checks raylets on connections of their own: on the connection it shares with lease
requests, a check waited for a free stream behind 100 long-polling requests (a raylet serves at most 100
calls at once on one connection), and 500 actors created at once got their node declared dead."""

from __future__ import annotations

import asyncio

import pytest

from aioray._private.common import rpc
from aioray._private.gcs import node_table
from aioray._private.gcs.node_table import NodeTable
from aioray._proto.aioray import v1 as pb

TOKEN = "health-check-test"


class BusyRaylet(pb.NodeManagerBase):
    """Lease requests wait until released, as when every worker they need is still starting."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.leases_waiting = 0
        self.saturated = asyncio.Event()  # 100 requests wait: every stream of the shared connection
        self.checks = 0
        self.checked = asyncio.Event()

    async def request_worker_lease(self, lease_request: pb.LeaseRequest) -> pb.LeaseReply:
        self.leases_waiting += 1
        if self.leases_waiting >= 100:
            self.saturated.set()
        await self.release.wait()
        return pb.LeaseReply()

    async def get_node_info(self, empty: pb.Empty) -> pb.NodeInfo:
        self.checks += 1
        if self.checks >= 5:
            self.checked.set()
        return pb.NodeInfo()


async def test_health_checks_do_not_wait_behind_long_polling_lease_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_table, "HEALTH_CHECK_PERIOD_S", 0.05)
    monkeypatch.setattr(node_table, "HEALTH_CHECK_TIMEOUT_S", 0.5)
    raylet = BusyRaylet()
    server, port = await rpc.start_server([raylet], "127.0.0.1", 0, TOKEN)
    address = f"127.0.0.1:{port}"
    channels = rpc.ChannelPool(TOKEN)
    deaths: list[bytes] = []
    table = NodeTable(channels, lambda channel, data: None, lambda channel: False,
                      lambda source, severity, message: None, deaths.append)  # fmt: skip
    leases = [
        asyncio.ensure_future(
            channels.stub(address, pb.NodeManagerStub).request_worker_lease(pb.LeaseRequest())
        )
        for _ in range(150)
    ]
    try:
        await asyncio.wait_for(raylet.saturated.wait(), 60)
        node_id = b"n" * 16
        await table.register_node(pb.NodeInfo(node_id=node_id, address=address))
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(raylet.checked.wait())], timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        assert done, "the raylet was never health-checked"
        assert table.nodes[node_id].alive and not deaths
    finally:
        raylet.release.set()
        await asyncio.gather(*leases, return_exceptions=True)
        table.close()
        channels.close()
        server.close()
        await server.wait_closed()
