"""Leases of dead owners: the node manager kills their workers and drops their requests, with fake
workers; the driver watch sees a real process exit."""

from __future__ import annotations

import asyncio
import collections
import sys
from typing import Any

from aioray._private.common import proto_enums
from aioray._private.common.resources import ResourceSet
from aioray._private.raylet.node_manager import Lease, NodeManager
from aioray._private.raylet.owners import DeadOwners, DriverWatch, owned_by
from aioray._private.raylet.worker_pool import WorkerProc
from aioray._proto.aioray import v1 as pb

OWNER = b"o" * 16
OTHER = b"p" * 16


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def kill(self) -> None:
        self.returncode = -9


class FakePool:
    """Workers on demand: each started one registers (is idle) on the next loop step."""

    def __init__(self) -> None:
        self.registered: Any = lambda: None
        self.idle: collections.deque[WorkerProc] = collections.deque()
        self.starting = 0
        self.killed: list[WorkerProc] = []
        self.returned: list[WorkerProc] = []
        self._next = 1

    def _worker(self) -> WorkerProc:
        n, self._next = self._next, self._next + 1
        return WorkerProc(bytes([n]) * 16, FakeProc(n), address=f"127.0.0.1:{n}")  # type: ignore[arg-type]

    def start(self, count: int, runtime_env: Any = None) -> None:
        self.idle.extend(self._worker() for _ in range(count))
        if count:
            asyncio.get_running_loop().call_soon(self.registered)

    def starting_for(self, env_hash: str) -> int:
        return 0

    def has_idle(self, env_hash: str = "") -> bool:
        return bool(self.idle)

    def take_idle(self, env_hash: str = "") -> WorkerProc | None:
        return self.idle.popleft() if self.idle else None

    def give_back(self, worker: WorkerProc, failed: bool) -> None:
        (self.killed if failed else self.returned).append(worker)

    def kill(self, worker: WorkerProc) -> None:
        self.killed.append(worker)


class FakeView:
    nodes: list[Any] = []
    live: dict[bytes, Any] = {}

    async def refresh_now(self) -> None:
        pass


def node_manager(cpus: float = 2) -> tuple[NodeManager, FakePool]:
    pool = FakePool()
    nm = NodeManager(
        b"n" * 16,
        ResourceSet({"CPU": cpus}),
        FakeView(),  # type: ignore[arg-type]
        pool,  # type: ignore[arg-type]
        pb.NodeInfo,
        lambda: None,
        "gcs:1",
        lambda: None,
    )
    pool.registered = nm.dispatch
    return nm, pool


def request(owner_id: bytes = OWNER, address: str = "owner:1", cpus: float = 1) -> pb.LeaseRequest:
    return pb.LeaseRequest(
        resources=pb.ResourceMap(amounts={"CPU": cpus}), owner_address=address, owner_worker_id=owner_id
    )


def death(worker_id: bytes = OWNER, address: str = "owner:1") -> pb.WorkerDeath:
    return pb.WorkerDeath(worker_id=worker_id, address=address)


async def granted(nm: NodeManager, req: pb.LeaseRequest) -> Lease:
    reply = await asyncio.wait_for(nm.request_worker_lease(req), 5)
    assert reply.status == proto_enums.LEASE_GRANTED
    return nm.leases[reply.lease_id]


async def test_a_dead_owners_leases_end_and_their_workers_are_killed() -> None:
    # Also a lease whose grant is still on its way to the owner: it is in `leases` already.
    nm, pool = node_manager()
    mine = await granted(nm, request())
    theirs = await granted(nm, request(OTHER, "other:1"))
    assert nm.available.get("CPU") == 0
    nm.owner_died(death())
    assert list(nm.leases.values()) == [theirs]
    assert pool.killed == [mine.worker]  # it may be running the dead owner's task
    assert mine.worker.lease_id is None
    assert nm.available.get("CPU") == 1


async def test_the_queued_requests_of_a_dead_owner_are_dropped_and_others_get_the_cpus() -> None:
    nm, _ = node_manager(cpus=1)
    await granted(nm, request())
    queued_mine = asyncio.ensure_future(nm.request_worker_lease(request()))
    queued_theirs = asyncio.ensure_future(nm.request_worker_lease(request(OTHER, "other:1")))
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(nm.waiting) == 2
    nm.owner_died(death())
    mine = await asyncio.wait_for(queued_mine, 5)
    assert mine.status == proto_enums.LEASE_REJECTED
    theirs = await asyncio.wait_for(queued_theirs, 5)
    assert theirs.status == proto_enums.LEASE_GRANTED  # the freed CPU went to the live owner
    assert nm.leases[theirs.lease_id].owner_id == OTHER
    assert not nm.waiting


async def test_a_request_arriving_after_its_owner_died_is_refused() -> None:
    nm, pool = node_manager()
    nm.owner_died(death())
    reply = await asyncio.wait_for(nm.request_worker_lease(request()), 5)
    assert reply.status == proto_enums.LEASE_REJECTED
    assert not nm.leases and not pool.killed
    assert nm.available.get("CPU") == 2


async def test_a_queued_request_whose_owner_died_is_not_granted_by_a_later_dispatch() -> None:
    nm, _ = node_manager(cpus=1)
    await granted(nm, request(OTHER, "other:1"))
    queued = asyncio.ensure_future(nm.request_worker_lease(request()))
    await asyncio.sleep(0)
    nm.dead_owners.add(OWNER)  # as if the news came while the request was being decided on
    nm.owner_died(death(OTHER, "other:1"))
    assert (await asyncio.wait_for(queued, 5)).status == proto_enums.LEASE_REJECTED
    assert not nm.leases


async def test_a_finished_jobs_driver_is_matched_by_address() -> None:
    nm, pool = node_manager()
    driver = await granted(nm, request(OWNER, "driver:1"))
    other = await granted(nm, request(OTHER, "other:1"))
    nm.owner_died(pb.WorkerDeath(address="driver:1"))
    assert list(nm.leases.values()) == [other]
    assert pool.killed == [driver.worker]


async def test_actor_leases_of_the_gcs_are_not_an_owners() -> None:
    nm, pool = node_manager()
    actor = await granted(nm, request(b"", "gcs"))
    nm.owner_died(death())
    nm.owner_died(pb.WorkerDeath(address="owner:1"))
    assert list(nm.leases.values()) == [actor]
    assert not pool.killed


async def test_a_local_worker_that_dies_takes_the_leases_it_owned_with_it() -> None:
    nm, pool = node_manager()
    parent = await granted(nm, request(OTHER, "driver:1"))
    owner = parent.worker
    child = await granted(nm, request(owner.worker_id, owner.address))
    reported = nm.on_worker_exit(owner, -9)
    assert reported is not None and reported.worker_id == owner.worker_id
    assert not nm.leases
    assert pool.killed == [child.worker]
    assert owner.worker_id in nm.dead_owners
    assert nm.available.get("CPU") == 2


def test_owned_by_prefers_worker_ids_and_falls_back_to_addresses() -> None:
    assert owned_by(OWNER, "a:1", death(OWNER, "a:1"))
    assert not owned_by(OWNER, "a:1", death(OTHER, "a:1"))  # an address reused by a new worker
    assert owned_by(b"", "a:1", death(OTHER, "a:1"))
    assert owned_by(OWNER, "a:1", pb.WorkerDeath(address="a:1"))
    assert not owned_by(OWNER, "a:1", pb.WorkerDeath())


def test_dead_owners_forget_the_oldest_past_their_limit() -> None:
    dead = DeadOwners(limit=2)
    for worker_id in (b"a", b"b", b"c"):
        dead.add(worker_id)
    dead.add(b"")
    assert b"a" not in dead and b"b" in dead and b"c" in dead
    assert b"" not in dead and len(dead) == 2


async def sleeper(code: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-c", code)


async def test_the_driver_watch_reports_a_killed_driver_once() -> None:
    deaths: list[pb.WorkerDeath] = []
    reported = asyncio.Event()

    def on_exit(death: pb.WorkerDeath) -> None:
        deaths.append(death)
        reported.set()

    watch = DriverWatch(b"n" * 16, on_exit)
    proc = await sleeper("import time; time.sleep(60)")
    try:
        driver = pb.RegisterWorkerRequest(worker_id=OWNER, address="driver:1", pid=proc.pid)
        watch.watch(driver)
        watch.watch(driver)  # registered twice: reported once
        proc.kill()
        await asyncio.wait_for(reported.wait(), 10)
        await proc.wait()
        await asyncio.sleep(0.05)
        assert deaths == [pb.WorkerDeath(node_id=b"n" * 16, worker_id=OWNER, address="driver:1")]
        assert not watch.drivers
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        watch.close()


async def test_a_driver_not_visible_from_the_raylet_is_not_reported_dead() -> None:
    deaths: list[pb.WorkerDeath] = []
    watch = DriverWatch(b"n" * 16, deaths.append)
    proc = await sleeper("pass")
    await proc.wait()  # its pid names no process now
    watch.watch(pb.RegisterWorkerRequest(worker_id=OWNER, address="driver:1", pid=proc.pid))
    await asyncio.sleep(0.05)
    assert not deaths and not watch.drivers
    watch.close()
