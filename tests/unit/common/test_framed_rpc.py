"""Unary calls as plain frames on a gRPC server's port: the same replies and errors as over gRPC,
cancellation reaching the handler, a lost connection failing its calls and the next call reconnecting,
and gRPC (streams, or everything with AIORAY_RPC_TRANSPORT=grpc) still served on the same port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aioray._private.common import framed_rpc, rpc
from aioray._proto.aioray import v1 as pb

TOKEN = "secret"


class Groups(pb.PlacementGroupGcsServiceBase):
    def __init__(self) -> None:
        self.calls = 0
        self.waiting = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def get_placement_group(
        self, get_placement_group_request: pb.GetPlacementGroupRequest
    ) -> pb.PlacementGroupInfo:
        self.calls += 1
        request_id = get_placement_group_request.placement_group_id
        if request_id == b"missing":
            raise rpc.GRPCError(rpc.Status.NOT_FOUND, "no placement group with id missing")
        if request_id == b"bug":
            raise RuntimeError("a bug in the handler")
        if request_id == b"own-timeout":
            raise TimeoutError("the handler's own wait ran out")
        return pb.PlacementGroupInfo(placement_group_id=request_id, name="found")

    async def wait_placement_group_ready(
        self, wait_placement_group_request: pb.WaitPlacementGroupRequest
    ) -> pb.PlacementGroupStateReply:
        self.waiting.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return pb.PlacementGroupStateReply()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Groups, str, rpc.ChannelPool]]:
    service = Groups()
    server, port = await rpc.start_server([service], "127.0.0.1", 0, TOKEN)
    pool = rpc.ChannelPool(TOKEN)
    try:
        yield service, f"127.0.0.1:{port}", pool
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


def request(id: bytes) -> pb.GetPlacementGroupRequest:
    return pb.GetPlacementGroupRequest(placement_group_id=id)


async def test_a_call_and_its_errors_are_as_over_grpc(served: tuple[Groups, str, rpc.ChannelPool]) -> None:
    service, address, pool = served
    stub = pool.stub(address, pb.PlacementGroupGcsServiceStub)
    reply = await stub.get_placement_group(request(b"g1"), timeout=10)
    assert (reply.placement_group_id, reply.name) == (b"g1", "found")
    with pytest.raises(rpc.GRPCError) as err:
        await stub.get_placement_group(request(b"missing"), timeout=10)
    assert err.value.status == rpc.Status.NOT_FOUND and "missing" in str(err.value.message)
    with pytest.raises(rpc.GRPCError) as err:
        await stub.get_placement_group(request(b"bug"), timeout=10)
    assert err.value.status == rpc.Status.UNKNOWN
    with pytest.raises(rpc.GRPCError) as err:  # not a deadline of the call: UNKNOWN, as grpclib says
        await stub.get_placement_group(request(b"own-timeout"), timeout=10)
    assert err.value.status == rpc.Status.UNKNOWN
    assert pool._framed, "the calls went as frames"
    # The same port still speaks gRPC to a client that asks for it.
    grpc_stub = pb.PlacementGroupGcsServiceStub(pool.channel(address), metadata={rpc.TOKEN_HEADER: TOKEN})
    assert (await grpc_stub.get_placement_group(request(b"g2"), timeout=10)).name == "found"
    assert service.calls == 5


async def test_many_calls_at_once_share_one_connection(served: tuple[Groups, str, rpc.ChannelPool]) -> None:
    _, address, pool = served
    stub = pool.stub(address, pb.PlacementGroupGcsServiceStub)
    ids = [str(i).encode() for i in range(300)]
    replies = await asyncio.gather(*(stub.get_placement_group(request(i), timeout=30) for i in ids))
    assert [r.placement_group_id for r in replies] == ids
    assert len(pool._framed) == 1


async def test_a_wrong_token_is_refused_as_grpc_refuses_it(
    served: tuple[Groups, str, rpc.ChannelPool],
) -> None:
    service, address, _ = served
    intruder = rpc.ChannelPool("wrong")
    try:
        stub = intruder.stub(address, pb.PlacementGroupGcsServiceStub)
        with pytest.raises(rpc.GRPCError) as err:
            await stub.get_placement_group(request(b"g1"), timeout=10)
        assert err.value.status == rpc.Status.UNAUTHENTICATED
        assert isinstance(rpc.translate_error(err.value, "asking"), rpc.AuthError)
        assert service.calls == 0
    finally:
        intruder.close()


async def test_a_caller_giving_up_cancels_the_handler(served: tuple[Groups, str, rpc.ChannelPool]) -> None:
    service, address, pool = served
    stub = pool.stub(address, pb.PlacementGroupGcsServiceStub)
    with pytest.raises(TimeoutError):
        await stub.wait_placement_group_ready(pb.WaitPlacementGroupRequest(), timeout=0.3)
    await asyncio.wait_for(service.cancelled.wait(), 10)
    service.waiting.clear()
    service.cancelled.clear()
    call = asyncio.ensure_future(stub.wait_placement_group_ready(pb.WaitPlacementGroupRequest(), timeout=60))
    await asyncio.wait_for(service.waiting.wait(), 10)
    call.cancel()
    await asyncio.wait_for(service.cancelled.wait(), 10)
    assert (await stub.get_placement_group(request(b"after"), timeout=10)).name == "found"


async def test_a_lost_server_fails_calls_in_flight_and_a_new_one_is_reached() -> None:
    service = Groups()
    server, port = await rpc.start_server([service], "127.0.0.1", 0, TOKEN)
    address = f"127.0.0.1:{port}"
    pool = rpc.ChannelPool(TOKEN)
    try:
        stub = pool.stub(address, pb.PlacementGroupGcsServiceStub)
        call = asyncio.ensure_future(
            stub.wait_placement_group_ready(pb.WaitPlacementGroupRequest(), timeout=60)
        )
        await asyncio.wait_for(service.waiting.wait(), 10)
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(call, 10)
        assert service.cancelled.is_set()
        with pytest.raises(OSError):  # refused: nobody listens
            await stub.get_placement_group(request(b"g"), timeout=10)
        server, _ = await rpc.start_server([service], "127.0.0.1", port, TOKEN)
        assert (await stub.get_placement_group(request(b"back"), timeout=10)).name == "found"
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_grpc_transport_when_asked(
    served: tuple[Groups, str, rpc.ChannelPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, address, _ = served
    monkeypatch.setenv(rpc.TRANSPORT_ENV, "grpc")
    pool = rpc.ChannelPool(TOKEN)
    try:
        stub = pool.stub(address, pb.PlacementGroupGcsServiceStub)
        assert (await stub.get_placement_group(request(b"g"), timeout=10)).name == "found"
        assert not pool._framed and pool._channels
    finally:
        pool.close()


async def test_a_corrupt_stream_closes_the_connection(served: tuple[Groups, str, rpc.ChannelPool]) -> None:
    _, address, _ = served
    host, port = rpc.split_address(address)
    reader, writer = await asyncio.open_connection(host, port)
    token = TOKEN.encode()
    writer.write(framed_rpc.MAGIC + len(token).to_bytes(2, "big") + token + b"\xff" * 9)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without an answer
    writer.close()


async def test_dropping_a_peer_while_connecting_fails_the_waiting_calls_as_a_lost_connection(
    served: tuple[Groups, str, rpc.ChannelPool],
) -> None:
    _, address, pool = served
    stub = pool.stub(address, pb.PlacementGroupGcsServiceStub)
    call = asyncio.ensure_future(stub.get_placement_group(request(b"g"), timeout=10))
    await asyncio.sleep(0)  # the call waits for the connection being made
    pool.drop(address)
    try:
        assert (await call).name == "found"  # it made it before the connection closed
    except ConnectionError:
        pass  # or it saw the connection go: an error its caller handles, not a cancellation
    assert not call.cancelled()
    assert (await stub.get_placement_group(request(b"again"), timeout=10)).name == "found"


async def test_a_request_too_big_for_a_frame_is_refused_before_it_is_sent(
    served: tuple[Groups, str, rpc.ChannelPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, address, pool = served
    stub = pool.stub(address, pb.PlacementGroupGcsServiceStub)
    monkeypatch.setattr(framed_rpc, "MAX_FRAME", 200)
    with pytest.raises(rpc.GRPCError) as err:
        await stub.get_placement_group(request(b"x" * 300), timeout=10)
    assert err.value.status == rpc.Status.RESOURCE_EXHAUSTED
    assert service.calls == 0
    assert (await stub.get_placement_group(request(b"small"), timeout=10)).name == "found"


async def test_a_malformed_call_is_answered_invalid_argument(
    served: tuple[Groups, str, rpc.ChannelPool],
) -> None:
    _, address, _ = served
    host, port = rpc.split_address(address)
    reader, writer = await asyncio.open_connection(host, port)
    token = TOKEN.encode()
    writer.write(framed_rpc.MAGIC + len(token).to_bytes(2, "big") + token)
    writer.write(framed_rpc._frame(framed_rpc.CALL, 7, b"\x00"))  # not even a route's length
    header = await asyncio.wait_for(reader.readexactly(framed_rpc._HEADER.size), 10)
    length, kind, call_id = framed_rpc._HEADER.unpack(header)
    payload = await reader.readexactly(length)
    assert (kind, call_id, payload[0]) == (framed_rpc.ERROR, 7, rpc.Status.INVALID_ARGUMENT.value)
    writer.close()


async def test_calls_through_a_closed_pool_fail_at_once_without_retries() -> None:
    pool = rpc.ChannelPool(TOKEN)
    stub = pool.gcs_stub("127.0.0.1:1", pb.PlacementGroupGcsServiceStub, reconnect_timeout_s=30)
    pool.close()  # its process shuts down while a part of it still holds the stub
    with pytest.raises(rpc.PoolClosedError):
        await asyncio.wait_for(stub.get_placement_group(request(b"g"), timeout=10), 5)


async def test_latency_is_recorded_for_the_services_routes_only(
    served: tuple[Groups, str, rpc.ChannelPool],
) -> None:
    _, address, pool = served
    stub = pool.stub(address, pb.PlacementGroupGcsServiceStub)
    await stub.get_placement_group(request(b"g"), timeout=10)
    host, port = rpc.split_address(address)
    reader, writer = await asyncio.open_connection(host, port)
    token = TOKEN.encode()
    writer.write(framed_rpc.MAGIC + len(token).to_bytes(2, "big") + token)
    route = b"/made.up/Route"
    call = len(route).to_bytes(2, "big") + route + (0).to_bytes(4, "big")
    writer.write(framed_rpc._frame(framed_rpc.CALL, 1, call))
    length, kind, _ = framed_rpc._HEADER.unpack(await reader.readexactly(framed_rpc._HEADER.size))
    assert (
        kind == framed_rpc.ERROR and (await reader.readexactly(length))[0] == rpc.Status.UNIMPLEMENTED.value
    )
    writer.close()
    routes = {labels[1] for labels, _ in rpc.RPC_LATENCY.samples()}
    assert "/aioray.v1.PlacementGroupGcsService/GetPlacementGroup" in routes
    assert "/made.up/Route" not in routes
