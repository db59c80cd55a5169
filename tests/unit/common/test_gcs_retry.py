"""GCS stubs that ride out a restart: unary calls retry on connection errors, within a budget."""

from __future__ import annotations

from typing import Any

import pytest

from aioray._private.common import rpc


class FlakyStub:
    """Refuses the first `failures` calls as a GCS that is down would, then answers."""

    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionRefusedError("connection refused")
        self.calls: list[tuple[Any, ...]] = []

    async def kv_get(self, key: str, timeout: float = 0) -> str:
        self.calls.append((key, timeout))
        if len(self.calls) <= self.failures:
            raise self.error
        return f"value of {key}"

    async def subscribe(self, request: str) -> str:
        raise AssertionError("streams are not wrapped")


def retrying(stub: FlakyStub, budget: float) -> Any:
    return rpc._GcsRetrying(stub, "127.0.0.1:1", budget)


async def test_a_call_is_retried_until_the_gcs_answers() -> None:
    stub = FlakyStub(failures=3)
    assert await retrying(stub, 5).kv_get("k", timeout=2) == "value of k"
    assert stub.calls == [("k", 2)] * 4  # the same arguments each time


async def test_unavailable_is_retried_but_other_grpc_errors_are_not() -> None:
    stub = FlakyStub(failures=1, error=rpc.GRPCError(rpc.Status.UNAVAILABLE, "restarting"))
    assert await retrying(stub, 5).kv_get("k") == "value of k"
    stub = FlakyStub(failures=1, error=rpc.GRPCError(rpc.Status.NOT_FOUND, "no such actor"))
    with pytest.raises(rpc.GRPCError):
        await retrying(stub, 5).kv_get("k")
    assert len(stub.calls) == 1


async def test_a_call_that_runs_out_of_its_own_time_is_not_retried() -> None:
    stub = FlakyStub(failures=1, error=TimeoutError())
    with pytest.raises(TimeoutError):
        await retrying(stub, 5).kv_get("k", timeout=1)
    assert len(stub.calls) == 1


async def test_a_gcs_gone_for_longer_than_the_budget_is_a_clear_connection_error() -> None:
    stub = FlakyStub(failures=10**6)
    with pytest.raises(
        rpc.GcsUnreachableError, match=r"127\.0\.0\.1:1 did not answer kv_get for 0\.3s"
    ) as info:
        await retrying(stub, 0.3).kv_get("k")
    assert isinstance(info.value, ConnectionError)
    assert 2 <= len(stub.calls) < 20  # backed off, not spun


async def test_streams_are_passed_through_for_their_readers_to_resubscribe() -> None:
    stub = FlakyStub(failures=0)
    assert retrying(stub, 5).subscribe == stub.subscribe
