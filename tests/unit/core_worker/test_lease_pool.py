"""The lease pool of one resource shape, against a scripted raylet and a recording task owner."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import pytest

from aioray._private.common import task_events, task_spec
from aioray._private.common.lease_shape import LeaseShape
from aioray._private.common.resources import ResourceSet
from aioray._private.core_worker import lease_pool
from aioray._private.core_worker.lease_pool import (
    LeasedWorker,
    LeasePool,
    PendingTask,
    TaskUnschedulableError,
)
from aioray._proto.aioray import v1 as pb
from aioray.exceptions import TaskCancelledError, WorkerCrashedError

LOCAL = "local:1"
ME = "me:1"
SHAPE = LeaseShape(ResourceSet({"CPU": 1}))
_ids = itertools.count(1)


class FakeRaylets:
    """Answers lease requests from a script per raylet address; unscripted requests never answer."""

    def __init__(self) -> None:
        self.script: dict[str, list[pb.LeaseReply | Exception]] = {}
        self.calls: list[tuple[str, bool, dict[str, float]]] = []
        self.returned: list[tuple[str, bytes]] = []
        self.forgotten: list[str] = []
        self.streams: list[asyncio.Task[None]] = []

    async def request_lease(self, address: str, request: pb.LeaseRequest) -> pb.LeaseReply:
        self.calls.append((address, request.no_spillback, dict(request.resources.amounts)))
        if self.script.get(address):
            reply = self.script[address].pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    def return_lease(self, address: str, lease_id: bytes) -> None:
        self.returned.append((address, lease_id))

    def forget(self, address: str) -> None:
        self.forgotten.append(address)

    def start_stream(self, lw: LeasedWorker) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(asyncio.Event().wait())  # type: ignore[arg-type]
        self.streams.append(task)
        return task  # type: ignore[return-value]


class FakeOwner:
    def __init__(self) -> None:
        self.results: list[tuple[PendingTask, task_spec.Result]] = []
        self.failed: list[tuple[PendingTask, BaseException]] = []
        self.events = task_events.TaskEventBuffer(enabled=False)
        self.retried: list[tuple[PendingTask, str]] = []

    def note_retry(self, p: PendingTask, error_type: str, message: str) -> None:
        self.retried.append((p, error_type))
        p.spec.attempt += 1

    def on_result(self, p: PendingTask, result: task_spec.Result) -> None:
        self.results.append((p, result))

    def fail_task(self, p: PendingTask, err: BaseException) -> None:
        self.failed.append((p, err))


def granted(worker: str = "w:1", lease_id: bytes = b"lease-1") -> pb.LeaseReply:
    return pb.LeaseReply(status=pb.LeaseReplyStatus.GRANTED, lease_id=lease_id, worker_address=worker)


def pending(retries: int = 0, name: str = "f") -> PendingTask:
    spec = task_spec.TaskSpec(
        task_id=next(_ids).to_bytes(16, "little"),
        function_id=b"fn",
        name=name,
        args=[],
        kwarg_names=(),
        num_returns=1,
        owner=ME,
        job_id=b"job",
    )
    return PendingTask(spec, SHAPE, retries_left=retries, retry_exceptions=False, arg_refs=[])


def submit(pool: LeasePool, *tasks: PendingTask) -> None:
    pool.queue.extend(tasks)
    pool.pump()


async def until(cond: Callable[[], bool], steps: int = 50) -> None:
    for _ in range(steps):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


@pytest.fixture
def raylets() -> FakeRaylets:
    return FakeRaylets()


@pytest.fixture
def owner() -> FakeOwner:
    return FakeOwner()


@pytest.fixture
async def pool(raylets: FakeRaylets, owner: FakeOwner) -> AsyncIterator[LeasePool]:
    p = LeasePool(owner, raylets, SHAPE, LOCAL, ME, b"job")
    yield p
    tasks = [*p.requests, *raylets.streams]
    p.close()
    for t in raylets.streams:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_granted_lease_gets_the_queued_task_pushed(pool: LeasePool, raylets: FakeRaylets) -> None:
    raylets.script[LOCAL] = [granted("w:1", b"L1")]
    t = pending()
    submit(pool, t)
    await until(lambda: bool(pool.leases))
    (lw,) = pool.leases
    assert (lw.lease_id, lw.address, lw.raylet_address) == (b"L1", "w:1", LOCAL)
    assert lw.outbox.get_nowait() == [t]
    assert lw.in_flight == {t.spec.task_id: t}
    assert t.worker is lw
    assert not pool.queue
    assert raylets.calls == [(LOCAL, False, {"CPU": 1.0})]
    assert lw.task is raylets.streams[0]


async def test_each_lease_gets_its_own_task(pool: LeasePool, raylets: FakeRaylets) -> None:
    raylets.script[LOCAL] = [granted("w:1", b"L1"), granted("w:2", b"L2")]
    a, b = pending(), pending()
    submit(pool, a, b)
    await until(lambda: len(pool.leases) == 2)
    assert [lw.outbox.get_nowait() for lw in pool.leases] == [[a], [b]]
    assert len(raylets.calls) == 2, "one lease request per queued task"


async def test_spillback_follows_the_retry_address_without_spilling_again(
    pool: LeasePool, raylets: FakeRaylets
) -> None:
    raylets.script[LOCAL] = [pb.LeaseReply(status=pb.LeaseReplyStatus.SPILLBACK, retry_address="other:1")]
    raylets.script["other:1"] = [granted("w:9", b"L9")]
    t = pending()
    submit(pool, t)
    await until(lambda: bool(pool.leases))
    assert [(a, no_spill) for a, no_spill, _ in raylets.calls] == [(LOCAL, False), ("other:1", True)]
    (lw,) = pool.leases
    assert lw.raylet_address == "other:1", "the lease is returned to the raylet that granted it"
    assert lw.outbox.get_nowait() == [t]


async def test_infeasible_fails_the_whole_queue(
    pool: LeasePool, raylets: FakeRaylets, owner: FakeOwner
) -> None:
    raylets.script[LOCAL] = [pb.LeaseReply(status=pb.LeaseReplyStatus.INFEASIBLE, message="no GPU anywhere")]
    a, b = pending(), pending()
    submit(pool, a, b)
    await until(lambda: len(owner.failed) == 2)
    assert [p for p, _ in owner.failed] == [a, b]
    for _, err in owner.failed:
        assert isinstance(err, TaskUnschedulableError)
        assert "no GPU anywhere" in str(err)
    assert not pool.queue and not pool.leases


async def test_an_unreachable_raylet_is_forgotten_and_asked_again(
    pool: LeasePool, raylets: FakeRaylets
) -> None:
    raylets.script[LOCAL] = [ConnectionRefusedError("down"), granted()]
    t = pending()
    submit(pool, t)
    await until(lambda: bool(raylets.forgotten))
    assert raylets.forgotten == [LOCAL]
    await asyncio.wait_for(asyncio.gather(*pool.requests), 2)
    assert pool.leases[0].outbox.get_nowait() == [t]


async def test_results_go_to_the_owner(pool: LeasePool, raylets: FakeRaylets, owner: FakeOwner) -> None:
    raylets.script[LOCAL] = [granted()]
    t = pending()
    submit(pool, t)
    await until(lambda: bool(pool.leases))
    (lw,) = pool.leases
    result: task_spec.Result = (t.spec.task_id, task_spec.OK, [(task_spec.RET_INLINE, b"frame", [])], 0.5)
    unknown: task_spec.Result = (b"not-mine", task_spec.OK, [], 0.5)
    pool.on_results(lw, [result, unknown])
    assert owner.results == [(t, result)]
    assert lw.in_flight == {}
    assert pool.avg_exec_s == pytest.approx(0.5)


async def test_worker_death_retries_fails_or_cancels_its_tasks(
    pool: LeasePool, raylets: FakeRaylets, owner: FakeOwner
) -> None:
    queued = pending()
    pool.queue.append(queued)
    lw = LeasedWorker(pool, b"L1", "w:1", LOCAL)
    pool.leases.append(lw)
    retried, exhausted, cancelled = pending(retries=2), pending(name="g"), pending(retries=5, name="h")
    cancelled.cancelled = True
    for p in (retried, exhausted, cancelled):
        p.worker = lw
        lw.in_flight[p.spec.task_id] = p

    pool.on_worker_gone(lw)

    assert lw not in pool.leases
    assert lw.in_flight == {}
    assert retried.retries_left == 1 and retried.worker is None
    assert list(pool.queue) == [retried, queued], "a retry goes ahead of what was queued"
    failures = {p.spec.name: err for p, err in owner.failed}
    assert set(failures) == {"g", "h"}
    assert isinstance(failures["g"], WorkerCrashedError)
    assert "no retries left" in str(failures["g"])
    assert isinstance(failures["h"], TaskCancelledError)
    await until(lambda: len(raylets.calls) == 2)  # a new lease for each queued task


async def test_idle_lease_is_returned_after_the_idle_time(
    pool: LeasePool, raylets: FakeRaylets, owner: FakeOwner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease_pool, "LEASE_IDLE_S", 0.02)
    raylets.script["other:1"] = [granted("w:1", b"L1")]
    raylets.script[LOCAL] = [pb.LeaseReply(status=pb.LeaseReplyStatus.SPILLBACK, retry_address="other:1")]
    t = pending()
    submit(pool, t)
    await until(lambda: bool(pool.leases))
    (lw,) = pool.leases
    lw.outbox.get_nowait()
    pool.on_results(lw, [(t.spec.task_id, task_spec.OK, [], 0.001)])
    assert lw.idle_timer is not None
    assert raylets.returned == [], "kept for a moment for the next task"
    await asyncio.sleep(0.05)
    assert raylets.returned == [("other:1", b"L1")]
    assert pool.leases == []
    assert lw.outbox.get_nowait() is None, "the stream to the worker is ended"


async def test_a_new_task_keeps_an_idle_lease(
    pool: LeasePool, raylets: FakeRaylets, owner: FakeOwner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease_pool, "LEASE_IDLE_S", 0.02)
    raylets.script[LOCAL] = [granted()]
    first, second = pending(), pending()
    submit(pool, first)
    await until(lambda: bool(pool.leases))
    (lw,) = pool.leases
    pool.on_results(lw, [(first.spec.task_id, task_spec.OK, [], 0.001)])
    assert lw.idle_timer is not None
    submit(pool, second)
    assert lw.idle_timer is None
    await asyncio.sleep(0.05)
    assert raylets.returned == []
    assert pool.leases == [lw]
    assert [lw.outbox.get_nowait(), lw.outbox.get_nowait()] == [[first], [second]]


async def test_remove_takes_only_unpushed_tasks(pool: LeasePool, raylets: FakeRaylets) -> None:
    raylets.script[LOCAL] = [granted()]
    pushed, queued = pending(), pending()
    submit(pool, pushed, queued)
    await until(lambda: bool(pool.leases))
    assert not pool.remove(pushed)
    assert pool.remove(queued)
    assert not pool.queue
