"""The memory monitor: its kill policy on fakes, its cgroup and /proc readers on fake files, its loop,
the node manager's record of worker deaths, and the owner's side (asking why a worker died, failing
its task with OutOfMemoryError or retrying it)."""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aioray._private.common import task_spec
from aioray._private.common.lease_shape import LeaseShape
from aioray._private.common.resources import ResourceSet
from aioray._private.core_worker.lease_pool import (
    FAILURE_CAUSE_TIMEOUT_S,
    LeasedWorker,
    LeasePool,
    PendingTask,
    failure_cause,
    oom_message,
)
from aioray._private.raylet import memory_monitor as mm
from aioray._private.raylet.memory_monitor import (
    Candidate,
    MemoryMonitor,
    MemorySnapshot,
    MonitorConfig,
    kill_order,
    select_victim,
)
from aioray._private.raylet.node_manager import Lease, NodeManager
from aioray._private.raylet.worker_pool import WorkerProc
from aioray._proto.aioray import v1 as pb
from aioray.exceptions import OutOfMemoryError, WorkerCrashedError

GiB = 1 << 30
Kind = pb.WorkerFailureCauseKind


def cand(pid: int, owner: str, granted_at: float, retriable: bool = True) -> Candidate:
    return Candidate(pid=pid, owner=owner, granted_at=granted_at, retriable=retriable)


# -- the policy ----------------------------------------------------------------------------------
def test_nothing_to_kill() -> None:
    assert select_victim([]) is None
    assert kill_order([]) == []


def test_retriable_work_goes_before_newer_non_retriable_work() -> None:
    old_retriable = cand(1, "a", granted_at=1.0, retriable=True)
    new_fixed = cand(2, "b", granted_at=5.0, retriable=False)
    assert select_victim([new_fixed, old_retriable]) == old_retriable


def test_newest_lease_of_the_group_goes_first() -> None:
    workers = [cand(1, "a", 1.0), cand(2, "a", 3.0), cand(3, "a", 2.0)]
    assert select_victim(workers) == workers[1]
    assert [c.pid for c in kill_order(workers)[0]] == [2, 3, 1]


def test_bigger_retriable_group_goes_first() -> None:
    # Owner "a" runs two tasks, "b" one newer task: "a" can afford losing one.
    workers = [cand(1, "a", 1.0), cand(2, "a", 2.0), cand(3, "b", 9.0)]
    assert select_victim(workers) == workers[1]


def test_equal_groups_the_one_granted_last_goes_first() -> None:
    workers = [cand(1, "a", 1.0), cand(2, "a", 4.0), cand(3, "b", 2.0), cand(4, "b", 3.0)]
    # Earliest leases: a at 1.0, b at 2.0, so b made the least progress.
    order = kill_order(workers)
    assert [[c.pid for c in g] for g in order] == [[4, 3], [2, 1]]


def test_non_retriable_leases_form_one_group_whatever_their_owner() -> None:
    workers = [cand(1, "a", 1.0, False), cand(2, "b", 3.0, False), cand(3, "c", 2.0, False)]
    order = kill_order(workers)
    assert len(order) == 1
    assert [c.pid for c in order[0]] == [2, 3, 1]


def test_full_kill_order() -> None:
    workers = [
        cand(1, "x", 0.5, False),
        cand(2, "a", 1.0),
        cand(3, "b", 2.0),
        cand(4, "b", 2.5),
        cand(5, "x", 9.0, False),
    ]
    assert [[c.pid for c in g] for g in kill_order(workers)] == [[4, 3], [2], [5, 1]]


# -- configuration -------------------------------------------------------------------------------
def test_config_defaults_and_values() -> None:
    default = MonitorConfig.from_env({})
    assert (default.refresh_s, default.threshold, default.limit_override) == (0.25, 0.95, None)
    assert default.enabled
    cfg = MonitorConfig.from_env({mm.REFRESH_ENV: "100", mm.THRESHOLD_ENV: "0.5", mm.LIMIT_ENV: str(2 * GiB)})
    assert (cfg.refresh_s, cfg.threshold, cfg.limit_override) == (0.1, 0.5, 2 * GiB)
    assert not MonitorConfig.from_env({mm.REFRESH_ENV: "0"}).enabled


@pytest.mark.parametrize(
    ("name", "value"),
    [(mm.REFRESH_ENV, "-1"), (mm.REFRESH_ENV, "soon"), (mm.THRESHOLD_ENV, "1.5"), (mm.LIMIT_ENV, "1.5")],
)
def test_config_ignores_malformed_values(name: str, value: str) -> None:
    assert MonitorConfig.from_env({name: value}) == MonitorConfig()


# -- readers -------------------------------------------------------------------------------------
def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


MEMINFO = """MemTotal:       16384000 kB
MemFree:         1000000 kB
MemAvailable:   12384000 kB
Buffers:          100000 kB
Cached:          2000000 kB
"""


def test_meminfo(tmp_path: Path) -> None:
    write(tmp_path / "meminfo", MEMINFO)
    assert mm.read_meminfo(tmp_path / "meminfo") == (4000000 * 1024, 16384000 * 1024)


def test_meminfo_without_memavailable_counts_free_buffers_and_cache(tmp_path: Path) -> None:
    write(tmp_path / "meminfo", "\n".join(line for line in MEMINFO.splitlines() if "Avail" not in line))
    used, total = mm.read_meminfo(tmp_path / "meminfo")
    assert (used, total) == ((16384000 - 3100000) * 1024, 16384000 * 1024)
    assert mm.read_meminfo(tmp_path / "missing") == (None, None)


def test_cgroup_v2(tmp_path: Path) -> None:
    write(tmp_path / "memory.max", "1073741824\n")
    write(tmp_path / "memory.current", "600000000\n")
    write(tmp_path / "memory.stat", "anon 400000000\nfile 200000000\ninactive_file 100000000\n")
    assert mm.read_cgroup_v2(tmp_path) == (500000000, GiB)
    write(tmp_path / "memory.max", "max\n")
    assert mm.read_cgroup_v2(tmp_path) == (500000000, None)


def test_cgroup_v1(tmp_path: Path) -> None:
    write(tmp_path / "memory.limit_in_bytes", "2147483648\n")
    write(tmp_path / "memory.usage_in_bytes", "900000000\n")
    write(tmp_path / "memory.stat", "cache 5\nrss 6\ntotal_inactive_file 300000000\n")
    assert mm.read_cgroup_v1(tmp_path) == (600000000, 2 * GiB)


def test_own_cgroup_paths(tmp_path: Path) -> None:
    write(tmp_path / "cgroup", "12:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/user.slice/s\n")
    assert mm.own_cgroup_paths(tmp_path / "cgroup") == ("/user.slice/s", "/docker/abc")


def fake_v2_host(root: Path, proc: Path, container_limit: str, own_limit: str = "max") -> None:
    """A cgroup v2 machine of 16 GB where this process lives in /pod/app, under /pod's limit."""
    write(root / "cgroup.controllers", "cpu memory\n")
    write(root / "memory.stat", "inactive_file 0\n")
    write(root / "memory.current", "9000000000\n")  # the whole host
    for d, limit, current in (
        (root / "pod", container_limit, 700 << 20),
        (root / "pod/app", own_limit, 500 << 20),
    ):
        write(d / "memory.max", f"{limit}\n")
        write(d / "memory.current", f"{current}\n")
        write(d / "memory.stat", f"inactive_file {100 << 20}\n")
    write(proc / "meminfo", MEMINFO)
    write(proc / "self/cgroup", "0::/pod/app\n")


def test_a_containers_limit_counts_not_the_hosts(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    fake_v2_host(root, proc, container_limit=str(GiB))
    snap = mm.read_memory(root, proc)
    assert snap == MemorySnapshot(600 << 20, GiB, "cgroup v2 limit")
    # The tighter of the two limits counts, with its own cgroup's usage.
    fake_v2_host(root, proc, container_limit=str(GiB), own_limit=str(512 << 20))
    assert mm.read_memory(root, proc) == MemorySnapshot(400 << 20, 512 << 20, "cgroup v2 limit")


def test_no_cgroup_limit_falls_back_to_meminfo(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    fake_v2_host(root, proc, container_limit="max")
    snap = mm.read_memory(root, proc)
    assert snap == MemorySnapshot(4000000 * 1024, 16384000 * 1024, "/proc/meminfo")
    # A v1 limit that reads as "unlimited" (a huge number) does not count either.
    root1 = tmp_path / "cg1"
    write(root1 / "memory/memory.limit_in_bytes", "9223372036854771712\n")
    write(root1 / "memory/memory.usage_in_bytes", "1000\n")
    assert mm.read_memory(root1, proc) == snap


def test_cgroup_v1_container_limit(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    write(root / "memory/memory.limit_in_bytes", f"{GiB}\n")
    write(root / "memory/memory.usage_in_bytes", f"{300 << 20}\n")
    write(root / "memory/memory.stat", f"total_inactive_file {100 << 20}\n")
    write(proc / "meminfo", MEMINFO)
    write(proc / "self/cgroup", "4:memory:/docker/abc\n0::/\n")  # not visible: the mount is the container's
    assert mm.read_memory(root, proc) == MemorySnapshot(200 << 20, GiB, "cgroup v1 limit")


def test_limit_override_keeps_the_measured_usage(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    fake_v2_host(root, proc, container_limit=str(GiB))
    snap = mm.read_memory(root, proc, limit_override=700 << 20)
    assert snap is not None
    assert (snap.used, snap.limit) == (600 << 20, 700 << 20)
    assert mm.LIMIT_ENV in snap.source
    assert mm.read_memory(tmp_path / "none", tmp_path / "none") is None


def test_process_memory(tmp_path: Path) -> None:
    write(
        tmp_path / "42/smaps_rollup",
        "00400000-7fff [rollup]\nRss:  3000 kB\nShared_Clean:  1000 kB\n"
        "Private_Clean:  100 kB\nPrivate_Dirty:  1900 kB\n",
    )
    assert mm.process_memory(42, tmp_path) == 2000 * 1024
    write(tmp_path / "43/statm", "5000 1200 300 1 0 900 0\n")
    assert mm.process_memory(43, tmp_path) == 1200 * os.sysconf("SC_PAGE_SIZE")
    assert mm.process_memory(44, tmp_path) is None


# -- the monitor's loop --------------------------------------------------------------------------
class FakeNode:
    def __init__(self, candidates: list[Candidate]) -> None:
        self.candidates = candidates
        self.kills: list[tuple[Candidate, str]] = []
        self.exits: list[asyncio.Future[None]] = []

    def kill(self, victim: Candidate, message: str) -> asyncio.Future[None]:
        self.kills.append((victim, message))
        self.candidates.remove(victim)
        exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.exits.append(exited)
        return exited


def monitor(
    node: FakeNode, usage: list[int], limit: int = 1000, refresh_s: float = 0.01, own: int = 300 << 20
) -> MemoryMonitor:
    return MemoryMonitor(
        lambda: "n1 (127.0.0.1:1)",
        lambda: list(node.candidates),
        node.kill,
        MonitorConfig(refresh_s=refresh_s, threshold=0.9),
        read=lambda: MemorySnapshot(usage[0], limit, "test"),
        own_memory=lambda pid: own,
    )


async def test_below_the_threshold_nothing_is_killed() -> None:
    node = FakeNode([cand(1, "a", 1.0)])
    assert await monitor(node, [900]).check() is None
    assert node.kills == []


async def test_above_the_threshold_the_policys_victim_is_killed_with_the_whole_story() -> None:
    node = FakeNode([cand(1, "a", 1.0), cand(2, "a", 2.0)])
    m = monitor(node, [950])
    check = asyncio.ensure_future(m.check())
    await asyncio.sleep(0.01)
    assert not check.done()  # waiting for the worker to exit
    node.exits[0].set_result(None)
    assert await check == node.kills[0][0]
    victim, message = node.kills[0]
    assert victim.pid == 2
    for part in (
        "n1 (127.0.0.1:1)",
        "pid 2",
        "300 MiB",
        "0.950",
        "threshold 0.9",
        mm.THRESHOLD_ENV,
        "retriable",
    ):
        assert part in message, part


async def test_one_kill_at_a_time_then_usage_is_read_again() -> None:
    node = FakeNode([cand(1, "a", 1.0), cand(2, "a", 2.0), cand(3, "a", 3.0)])
    usage = [990]
    m = monitor(node, usage)
    m.start()
    try:
        await asyncio.sleep(0.1)
        assert [v.pid for v, _ in node.kills] == [3]  # the next waits for this one to exit
        node.exits[0].set_result(None)
        await asyncio.sleep(0.05)
        assert [v.pid for v, _ in node.kills] == [3]  # 990 still, not growing: settling
        usage[0] = 995 + mm.SETTLE_MARGIN_MIN
        await asyncio.sleep(0.05)
        assert [v.pid for v, _ in node.kills] == [3, 2]
        usage[0] = 100  # the kill freed enough
        node.exits[1].set_result(None)
        await asyncio.sleep(0.1)
        assert [v.pid for v, _ in node.kills] == [3, 2]
    finally:
        await m.stop()


async def test_after_a_kill_only_growing_usage_gets_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mm, "SETTLE_MARGIN_MIN", 10)
    node = FakeNode([cand(1, "a", 1.0), cand(2, "a", 2.0), cand(3, "a", 3.0)])
    usage = [990]
    m = monitor(node, usage)
    first = asyncio.ensure_future(m.check())
    await asyncio.sleep(0)
    usage[0] = 950  # read as the victim exits: the rest of its memory comes back slowly
    node.exits[0].set_result(None)
    assert (await first).pid == 3
    for still_above in (950, 940, 960):  # 960: a worker started, within the margin
        usage[0] = still_above
        assert await m.check() is None
    usage[0] = 961  # grew past the margin: the next victim
    second = asyncio.ensure_future(m.check())
    await asyncio.sleep(0)
    assert [v.pid for v, _ in node.kills] == [3, 2]
    node.exits[1].set_result(None)
    await second
    monkeypatch.setattr(mm, "SETTLE_S", 0.0)  # settled: above the threshold is enough again
    usage[0] = 950
    third = asyncio.ensure_future(m.check())
    await asyncio.sleep(0)
    assert [v.pid for v, _ in node.kills] == [3, 2, 1]
    node.exits[2].set_result(None)
    await third


async def test_a_worker_that_does_not_exit_holds_the_monitor_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mm, "KILL_WAIT_S", 0.02)
    node = FakeNode([cand(1, "a", 1.0), cand(2, "a", 2.0)])
    m = monitor(node, [990])
    assert await m.check() is not None
    assert await m.check() is not None
    assert len(node.kills) == 2


async def test_disabled_or_unreadable_monitor_does_not_run() -> None:
    node = FakeNode([cand(1, "a", 1.0)])
    off = monitor(node, [990], refresh_s=0)
    off.start()
    assert off._task is None
    blind = MemoryMonitor(lambda: "n", list, node.kill, MonitorConfig(refresh_s=0.01), read=lambda: None)
    blind.start()
    assert blind._task is None
    await off.stop()
    await blind.stop()


async def test_high_usage_with_no_leased_worker_kills_nothing() -> None:
    node = FakeNode([])
    assert await monitor(node, [999]).check() is None


# -- the node manager's side: candidates, the kill and the death record ----------------------------
class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.exited = asyncio.Event()

    def kill(self) -> None:
        self.returncode = -9
        self.exited.set()

    async def wait(self) -> int:
        await self.exited.wait()
        assert self.returncode is not None
        return self.returncode


class FakePool:
    def __init__(self) -> None:
        self.idle: collections.deque[WorkerProc] = collections.deque()
        self.starting = 0

    def start(self, count: int) -> None:
        pass

    def kill(self, worker: WorkerProc) -> None:
        worker.killed = True
        worker.proc.kill()

    def give_back(self, worker: WorkerProc, failed: bool) -> None:
        pass


class FakeView:
    nodes: list[Any] = []


def node_manager() -> NodeManager:
    return NodeManager(
        b"n" * 16,
        ResourceSet({"CPU": 2}),
        FakeView(),  # type: ignore[arg-type]
        FakePool(),  # type: ignore[arg-type]
        pb.NodeInfo,
        lambda: None,
        "gcs:1",
        lambda: None,
    )


def lease(nm: NodeManager, pid: int, owner: str, retriable: bool) -> Lease:
    worker = WorkerProc(bytes([pid]) * 16, FakeProc(pid), address=f"127.0.0.1:{pid}")  # type: ignore[arg-type]
    ls = Lease(bytes([pid]) * 8, worker, ResourceSet({"CPU": 1}), owner, retriable=retriable)
    worker.lease_id = ls.lease_id
    nm.leases[ls.lease_id] = ls
    nm.available = nm.available - ls.resources
    return ls


async def test_node_manager_kill_records_the_cause_for_the_owner() -> None:
    nm = node_manager()
    first = lease(nm, 11, "owner:1", retriable=False)
    second = lease(nm, 12, "owner:1", retriable=True)
    candidates = nm.memory_candidates()
    assert {(c.pid, c.retriable) for c in candidates} == {(11, False), (12, True)}
    victim = select_victim(candidates)
    assert victim is not None and victim.lease_id == second.lease_id
    exited = nm.kill_for_memory(victim, "the memory monitor of node n killed it")
    assert exited is not None
    # The owner may ask before the raylet saw the exit: the cause is there already.
    cause = await nm.get_worker_failure_cause(pb.WorkerFailureCauseRequest(lease_id=second.lease_id))
    assert cause.kind == pb.WorkerFailureCauseKind.OUT_OF_MEMORY
    assert "memory monitor" in cause.message
    assert await exited == -9
    assert nm.memory_candidates() == [c for c in candidates if c.pid == 11]  # killed: no candidate
    death = nm.on_worker_exit(second.worker, -9)
    assert death is not None and "memory monitor" in death.cause  # what the GCS tells of a dead actor
    assert second.lease_id not in nm.leases
    assert nm.available.get("CPU") == 1
    cause = await nm.get_worker_failure_cause(pb.WorkerFailureCauseRequest(worker_address="127.0.0.1:12"))
    assert (cause.kind, cause.exit_code) == (pb.WorkerFailureCauseKind.OUT_OF_MEMORY, -9)
    # A worker that crashed on its own is recorded as such; unknown workers are UNKNOWN.
    death = nm.on_worker_exit(first.worker, 1)
    assert death is not None and death.cause == ""
    cause = await nm.get_worker_failure_cause(pb.WorkerFailureCauseRequest(lease_id=first.lease_id))
    assert (cause.kind, cause.exit_code) == (pb.WorkerFailureCauseKind.EXITED, 1)
    unknown = await nm.get_worker_failure_cause(pb.WorkerFailureCauseRequest(lease_id=b"x" * 8))
    assert unknown.kind == pb.WorkerFailureCauseKind.UNKNOWN
    assert nm.kill_for_memory(victim, "again") is None  # its lease is gone


async def test_death_record_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from aioray._private.raylet import node_manager as nm_module

    monkeypatch.setattr(nm_module, "MAX_DEATH_RECORDS", 3)
    nm = node_manager()
    leases = [lease(nm, pid, "o", True) for pid in range(20, 25)]
    for ls in leases:
        nm.on_worker_exit(ls.worker, 0)
    assert len(nm.deaths) == len(nm._death_keys) == 3
    gone = await nm.get_worker_failure_cause(pb.WorkerFailureCauseRequest(lease_id=leases[0].lease_id))
    kept = await nm.get_worker_failure_cause(pb.WorkerFailureCauseRequest(lease_id=leases[-1].lease_id))
    assert gone.kind == pb.WorkerFailureCauseKind.UNKNOWN
    assert kept.kind == pb.WorkerFailureCauseKind.EXITED


# -- the owner's side: asking why a worker died, failing or retrying its tasks ---------------------
class Raylets:
    """A lease pool's raylets that record lease requests and never answer them."""

    def __init__(self) -> None:
        self.requests: list[pb.LeaseRequest] = []

    async def request_lease(self, address: str, request: pb.LeaseRequest) -> pb.LeaseReply:
        self.requests.append(request)
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    def return_lease(self, address: str, lease_id: bytes) -> None:
        pass

    def forget(self, address: str) -> None:
        pass

    def start_stream(self, lw: LeasedWorker) -> asyncio.Task[None]:
        raise AssertionError("no lease is granted here")


class Owner:
    def __init__(self) -> None:
        self.failed: list[tuple[PendingTask, BaseException]] = []

    def on_result(self, p: PendingTask, result: task_spec.Result) -> None:
        raise AssertionError("no results here")

    def fail_task(self, p: PendingTask, err: BaseException) -> None:
        self.failed.append((p, err))

    def note_retry(self, p: PendingTask, error_type: str, message: str) -> None:
        assert error_type == "OUT_OF_MEMORY"
        p.spec.attempt += 1


def task(name: str, retries: int) -> PendingTask:
    spec = task_spec.TaskSpec(
        task_id=os.urandom(16),
        function_id=b"fn",
        name=name,
        args=[],
        kwarg_names=(),
        num_returns=1,
        owner="me:1",
        job_id=b"job",
    )
    return PendingTask(
        spec, LeaseShape(ResourceSet({"CPU": 1})), retries_left=retries, retry_exceptions=False, arg_refs=[]
    )


@pytest.fixture
async def lease_pool() -> AsyncIterator[tuple[LeasePool, Raylets, Owner]]:
    raylets, owner = Raylets(), Owner()
    p = LeasePool(owner, raylets, LeaseShape(ResourceSet({"CPU": 1})), "local:1", "me:1", b"job")
    yield p, raylets, owner
    requests = list(p.requests)
    p.close()
    await asyncio.gather(*requests, return_exceptions=True)


OOM_CAUSE = pb.WorkerFailureCause(
    kind=Kind(Kind.OUT_OF_MEMORY), message="the memory monitor of node n1 killed worker w"
)


async def test_an_oom_killed_task_is_retried_then_fails_with_out_of_memory_error(
    lease_pool: tuple[LeasePool, Raylets, Owner],
) -> None:
    pool, _, owner = lease_pool
    lw = LeasedWorker(pool, b"L1", "w:1", "local:1")
    lw.failure = OOM_CAUSE
    pool.leases.append(lw)
    retried, exhausted = task("retried", 1), task("exhausted", 0)
    for p in (retried, exhausted):
        p.worker = lw
        lw.in_flight[p.spec.task_id] = p
    pool.on_worker_gone(lw)
    assert list(pool.queue) == [retried] and retried.retries_left == 0
    [(p, err)] = owner.failed
    assert p is exhausted and isinstance(err, OutOfMemoryError)
    assert "exhausted" in str(err) and OOM_CAUSE.message in str(err)


async def test_a_crash_the_raylet_cannot_explain_stays_a_worker_crash(
    lease_pool: tuple[LeasePool, Raylets, Owner],
) -> None:
    pool, _, owner = lease_pool
    lw = LeasedWorker(pool, b"L1", "w:1", "local:1")
    lw.failure = pb.WorkerFailureCause(kind=Kind(Kind.EXITED), exit_code=1)
    p = task("crashed", 0)
    lw.in_flight[p.spec.task_id] = p
    pool.on_worker_gone(lw)
    [(_, err)] = owner.failed
    assert type(err) is WorkerCrashedError


async def test_lease_requests_say_whether_the_work_is_retriable(
    lease_pool: tuple[LeasePool, Raylets, Owner],
) -> None:
    pool, raylets, _ = lease_pool
    pool.queue.append(task("r", 2))
    pool.pump()
    await asyncio.sleep(0)
    assert raylets.requests and raylets.requests[-1].retriable
    pool.queue.clear()
    pool.queue.append(task("n", 0))
    pool._request_lease()
    await asyncio.sleep(0)
    assert not raylets.requests[-1].retriable


class FakeStub:
    def __init__(self, answer: pb.WorkerFailureCause | Exception) -> None:
        self.answer = answer
        self.asked: list[tuple[pb.WorkerFailureCauseRequest, float | None]] = []

    async def get_worker_failure_cause(
        self, request: pb.WorkerFailureCauseRequest, timeout: float | None = None
    ) -> pb.WorkerFailureCause:
        self.asked.append((request, timeout))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FakeChannels:
    def __init__(self, stub: FakeStub) -> None:
        self._stub = stub

    def stub(self, address: str, cls: object) -> FakeStub:
        return self._stub


async def test_owner_asks_the_raylet_briefly_and_falls_back_when_it_cannot() -> None:
    stub = FakeStub(OOM_CAUSE)
    cause = await failure_cause(FakeChannels(stub), "raylet:1", b"L1", "w:1")  # type: ignore[arg-type]
    assert oom_message(cause) == OOM_CAUSE.message
    [(request, timeout)] = stub.asked
    assert (request.lease_id, request.worker_address) == (b"L1", "w:1")
    assert timeout == FAILURE_CAUSE_TIMEOUT_S
    gone = FakeStub(ConnectionRefusedError())
    assert await failure_cause(FakeChannels(gone), "raylet:1", b"L1", "w:1") is None  # type: ignore[arg-type]
    assert oom_message(None) is None
