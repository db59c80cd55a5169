"""A client may have more than h2's default 100 calls open on one connection: long-polls do not hold
up its other calls."""

from __future__ import annotations

import asyncio

from aioray._private.common import rpc
from aioray._proto.aioray import v1 as pb

TOKEN = "t"


class LongPolls(pb.PlacementGroupGcsServiceBase):
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.all_open = asyncio.Event()
        self.waiting = 0

    async def wait_placement_group_ready(
        self, wait_placement_group_request: pb.WaitPlacementGroupRequest
    ) -> pb.PlacementGroupStateReply:
        self.waiting += 1
        if self.waiting == 150:
            self.all_open.set()
        await self.release.wait()
        return pb.PlacementGroupStateReply()

    async def get_placement_group(
        self, get_placement_group_request: pb.GetPlacementGroupRequest
    ) -> pb.PlacementGroupInfo:
        return pb.PlacementGroupInfo(name="quick")


async def test_a_call_goes_through_beside_150_long_polls_on_one_connection() -> None:
    service = LongPolls()
    server, port = await rpc.start_server([service], "127.0.0.1", 0, TOKEN)
    pool = rpc.ChannelPool(TOKEN)
    try:
        stub = pool.stub(f"127.0.0.1:{port}", pb.PlacementGroupGcsServiceStub)
        polls = [
            asyncio.ensure_future(stub.wait_placement_group_ready(pb.WaitPlacementGroupRequest(), timeout=60))
            for _ in range(150)
        ]
        await asyncio.wait_for(service.all_open.wait(), 30)  # every poll is open (h2 allowed only 100)
        quick = await stub.get_placement_group(pb.GetPlacementGroupRequest(), timeout=30)
        assert quick.name == "quick"
        service.release.set()
        assert len(await asyncio.gather(*polls)) == 150
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
