"""The caller's queue of one actor, against a scripted GCS, a gated dependency resolver and a recording owner."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, cast

import pytest

from aioray._private.common import task_events, task_spec
from aioray._private.common.lease_shape import ACTOR_CALL_SHAPE
from aioray._private.core_worker.actor_submitter import ActorClient, ActorQueue
from aioray._private.core_worker.lease_pool import PendingTask
from aioray._private.core_worker.ownership import ObjectValue
from aioray._proto.aioray import v1 as pb

ACTOR = b"actor-1"
_ids = itertools.count(1)


class GatedDependencies:
    """Resolves each dependency once its gate opens (at once if it has none)."""

    def __init__(self) -> None:
        self.gates: dict[bytes, asyncio.Event] = {}
        self.failing: dict[bytes, bytes] = {}  # oid -> the error frame it resolves to

    async def resolve(self, args: list[tuple[Any, ...]], deps: list[tuple[int, bytes, str]]) -> bytes | None:
        for index, oid, _ in deps:
            gate = self.gates.get(oid)
            if gate is not None:
                await gate.wait()
            if oid in self.failing:
                return self.failing[oid]
            args[index] = (task_spec.ARG_INLINE, b"value of " + oid)
        return None

    @staticmethod
    def failure_of(task_name: str, frame: bytes) -> bytes:
        return frame  # the call fails with its argument's error as it is


class FakeOwner:
    def __init__(self) -> None:
        self.tasks: dict[bytes, PendingTask] = {}
        self.dependencies = GatedDependencies()
        self.completed: list[tuple[PendingTask, list[ObjectValue]]] = []
        self.failed: list[tuple[PendingTask, BaseException]] = []
        self.events = task_events.TaskEventBuffer(enabled=False)
        self.retried: list[tuple[PendingTask, str]] = []

    def note_retry(self, p: PendingTask, error_type: str, message: str) -> None:
        self.retried.append((p, error_type))
        p.spec.attempt += 1

    def on_result(self, p: PendingTask, result: task_spec.Result) -> None:
        raise AssertionError("no results in these tests")

    def fail_task(self, p: PendingTask, err: BaseException) -> None:
        self.failed.append((p, err))

    def complete(self, p: PendingTask, values: list[ObjectValue], inner: Any) -> None:
        self.completed.append((p, values))


class FakeRuntime:
    """Runs the queue's coroutines; a worker stream is not run (the test breaks it by hand)."""

    channels = None
    task_channels = None

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if coro.__qualname__ == "LeasedWorker.run":
            coro.close()
            coro = asyncio.Event().wait()
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task


class FakeClient:
    """The GCS says the actor is alive, at a new address after each restart."""

    def __init__(self) -> None:
        self.runtime = FakeRuntime()
        self.owner = FakeOwner()
        self.settled: list[int] = []

    async def wait_settled(self, actor_id: bytes, min_restarts: int = 0) -> pb.ActorInfo:
        self.settled.append(min_restarts)
        return pb.ActorInfo(
            actor_id=actor_id, state=pb.ActorInfoState.ALIVE, address=f"actor:{min_restarts}",
            num_restarts=min_restarts, node_id=b"node",
        )  # fmt: skip

    async def oom_cause(self, node_id: bytes, worker_address: str) -> str | None:
        return None


def call(*dep_oids: bytes, retries: int = -1) -> PendingTask:
    spec = task_spec.TaskSpec(
        task_id=next(_ids).to_bytes(16, "little"),
        function_id=b"fn",
        name="Checker.first_byte",
        args=[(task_spec.ARG_INLINE, b"")] * len(dep_oids),
        kwarg_names=(),
        num_returns=1,
        owner="me:1",
        job_id=b"job",
        actor_id=ACTOR,
    )
    deps = [(i, oid, "me:1") for i, oid in enumerate(dep_oids)]
    return PendingTask(spec, ACTOR_CALL_SHAPE, retries, False, [], deps=deps)


async def until(cond: Callable[[], bool], steps: int = 100) -> None:
    for _ in range(steps):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def sent(q: ActorQueue) -> list[PendingTask]:
    """Every call put on the queue's current stream so far, in order."""
    assert q.stream is not None
    out: list[PendingTask] = []
    while not q.stream.outbox.empty():
        batch = q.stream.outbox.get_nowait()
        assert batch is not None
        out += batch
    return out


@pytest.fixture
async def client() -> AsyncIterator[FakeClient]:
    c = FakeClient()
    yield c
    for t in c.runtime.tasks:
        t.cancel()
    await asyncio.gather(*c.runtime.tasks, return_exceptions=True)


def queue(client: FakeClient) -> ActorQueue:
    return ActorQueue(cast(ActorClient, client), ACTOR)


async def test_a_call_resolved_while_the_stream_broke_goes_to_the_restarted_actor(client: FakeClient) -> None:
    q = queue(client)
    gate = client.owner.dependencies.gates[b"arg"] = asyncio.Event()
    p = call(b"arg")
    q.push(p)
    await until(lambda: q.stream is not None)
    first = q.stream
    assert first is not None and first.address == "actor:0"
    # The argument takes long (rebuilt from lineage); meanwhile the actor dies.
    q.on_worker_gone(first)
    gate.set()
    await until(lambda: q.stream is not None and not q.stream.outbox.empty())
    assert q.stream is not None and q.stream.address == "actor:1"
    assert client.settled == [0, 1]
    assert sent(q) == [p]
    assert q.in_flight == {p.spec.task_id: p} and p.worker is q.stream
    assert p.spec.args == [(task_spec.ARG_INLINE, b"value of arg")]
    assert first.outbox.empty()


async def test_a_call_retried_while_another_resolves_goes_first_and_resolved(client: FakeClient) -> None:
    q = queue(client)
    gate = client.owner.dependencies.gates[b"slow"] = asyncio.Event()
    later = call(b"slow")
    q.push(later)
    await until(lambda: q.stream is not None)
    # An earlier call is put back in front (its store argument was lost): it must be resolved
    # again before it is sent, and go before the call that was resolving.
    earlier = call(b"lost")
    q.retry(earlier)
    gate.set()
    await until(lambda: q.stream is not None and not q.stream.outbox.empty())
    await asyncio.sleep(0)
    assert sent(q) == [earlier, later]
    assert earlier.deps == [] and earlier.spec.args == [(task_spec.ARG_INLINE, b"value of lost")]
    assert later.deps == [] and later.spec.args == [(task_spec.ARG_INLINE, b"value of slow")]
    assert not q.pending


async def test_a_call_whose_argument_failed_leaves_the_queue_wherever_it_is(client: FakeClient) -> None:
    q = queue(client)
    gate = client.owner.dependencies.gates[b"bad"] = asyncio.Event()
    client.owner.dependencies.failing[b"bad"] = b"error frame"
    doomed = call(b"bad")
    q.push(doomed)
    await until(lambda: q.stream is not None)
    retried = call()
    q.retry(retried)
    gate.set()
    await until(lambda: bool(client.owner.completed))
    await until(lambda: q.stream is not None and not q.stream.outbox.empty())
    assert [p for p, _ in client.owner.completed] == [doomed]
    assert sent(q) == [retried]
    assert not q.pending


class SlowToSettleClient(FakeClient):
    """The GCS's wait ends before the actor is up (None), then the question times out waiting for a
    stream on a busy connection, then the actor is alive (500 actors created at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[str] = ["pending", "timeout"]

    async def wait_settled(self, actor_id: bytes, min_restarts: int = 0) -> pb.ActorInfo | None:  # type: ignore[override]
        if self.answers:
            if self.answers.pop(0) == "timeout":
                raise TimeoutError("Deadline exceeded")
            return None
        return await super().wait_settled(actor_id, min_restarts)


async def test_calls_wait_for_an_actor_that_is_slow_to_settle() -> None:
    client = SlowToSettleClient()
    q = queue(client)
    q.push(call())
    try:
        await until(lambda: q.stream is not None or q.dead is not None)
        assert q.dead is None and q.stream is not None and q.stream.address == "actor:0"
        assert not client.answers
    finally:
        for t in client.runtime.tasks:
            t.cancel()
