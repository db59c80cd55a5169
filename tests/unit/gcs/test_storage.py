"""GCS storage: the backends (memory, SQLite, a real Redis) and the tables surviving a restart.

A "restart" here drops every in-memory table and builds new ones from the same
storage, as a GCS process restarted on the same storage URL does.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aioray._private.common import process, rpc, versions
from aioray._private.gcs import node_table, storage
from aioray._private.gcs.actor_manager import ActorManager
from aioray._private.gcs.node_table import NodeTable
from aioray._private.gcs.server import Gcs
from aioray._private.gcs.storage import GcsStorage, MemoryStorage, StorageError, Tables, open_storage
from aioray._proto.aioray import v1 as pb

from .redis_server import redis_server
from .test_actor_manager import FakeCluster, death_cause, node, request, settled, started

State = pb.ActorInfoState


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", "redis"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/gcs/state.sqlite3"
    # Each test its own namespace: the module shares one Redis.
    return f"{request.getfixturevalue('redis_url')}/0?namespace=test-{uuid.uuid4().hex[:8]}"


class Opened:
    """The storage a test's GCS uses, reopened as a restarted GCS would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.current: GcsStorage | None = None

    async def open(self) -> GcsStorage:
        if self.current is not None:
            await self.current.close()
            if isinstance(self.current, MemoryStorage):  # memory survives only within the process
                self.current = self.current.reopen()
                return self.current
        self.current = await open_storage(self.url)
        return self.current


@pytest.fixture
async def opened(storage_url: str) -> AsyncIterator[Opened]:
    o = Opened(storage_url)
    yield o
    if o.current is not None:
        await o.current.close()


# -- the backends ----------------------------------------------------------------------------------


async def test_a_backend_round_trips_tables_and_keeps_them_across_a_reopen(opened: Opened) -> None:
    s = await opened.open()
    big = os.urandom(1 << 20)  # a pickled function can be large
    await s.put("t", b"\x00key", b"\xffvalue")
    await s.put("t", b"big", big)
    await s.put("t", b"doomed", b"x")
    await s.put("other", b"\x00key", b"other table")
    await s.apply({("t", b"k3"): b"3", ("t", b"doomed"): None, ("t", b"k4"): b""})
    await s.delete("t", b"never there")
    expected = {b"\x00key": b"\xffvalue", b"big": big, b"k3": b"3", b"k4": b""}
    assert await s.load_all("t") == expected
    assert await s.load_all("other") == {b"\x00key": b"other table"}
    assert await s.load_all("empty") == {}
    s = await opened.open()
    assert await s.load_all("t") == expected
    assert await s.load_all("other") == {b"\x00key": b"other table"}


async def test_namespaces_keep_clusters_apart(storage_url: str) -> None:
    base, tag = storage_url.partition("?")[0], uuid.uuid4().hex[:8]
    a = await open_storage(base, namespace=f"a-{tag}")
    b = await open_storage(f"{base}?namespace=b-{tag}", namespace="the URL's namespace wins")
    try:
        await a.put("kv", b"k", b"a's")
        await b.put("kv", b"k", b"b's")
        assert await a.load_all("kv") == {b"k": b"a's"}
        assert await b.load_all("kv") == {b"k": b"b's"}
    finally:
        await a.close()
        await b.close()


async def test_the_memory_backend_really_stores_and_refuses_use_after_close() -> None:
    s = await open_storage(None)
    assert isinstance(s, MemoryStorage)
    await s.put("t", b"k", b"v")
    assert await s.load_all("t") == {b"k": b"v"}
    await s.close()
    with pytest.raises(StorageError):
        await s.put("t", b"k", b"v")
    assert await s.reopen().load_all("t") == {b"k": b"v"}


async def test_the_sqlite_backend_uses_wal(tmp_path: Path) -> None:
    s = await open_storage(f"sqlite://{tmp_path}/wal.sqlite3")
    await s.put("t", b"k", b"v")
    assert (tmp_path / "wal.sqlite3-wal").exists()
    await s.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://relative/path.sqlite3", "absolute path"),
        ("postgres://127.0.0.1/db", "unknown kind"),
    ],
)
async def test_bad_urls_are_clear_errors(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        await open_storage(url)


async def test_an_unreachable_redis_fails_fast_naming_it_without_its_password() -> None:
    port = rpc.free_port()
    started_at = time.monotonic()
    with pytest.raises(StorageError) as info:
        await open_storage(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert time.monotonic() - started_at < 5
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "hunter2" not in str(info.value)


# -- the write queue -------------------------------------------------------------------------------


class FlakyStorage(MemoryStorage):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.batches: list[storage.Batch] = []

    async def apply(self, batch: storage.Batch) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("storage unreachable")
        self.batches.append(dict(batch))
        await super().apply(batch)


async def test_flush_waits_for_the_write_and_repeated_writes_coalesce() -> None:
    s = FlakyStorage(failures=0)
    tables = Tables(s)
    for i in range(100):
        tables.put("t", b"k", str(i).encode())
    tables.put("t", b"gone", b"x")
    tables.delete("t", b"gone")
    await tables.flush()
    assert await s.load_all("t") == {b"k": b"99"}
    assert len(s.batches) == 1
    await tables.flush()  # nothing queued: returns at once
    await tables.close()


async def test_a_value_given_as_a_callable_is_serialized_once_when_written() -> None:
    s = FlakyStorage(failures=0)
    tables = Tables(s)
    calls: list[int] = []
    state = {"v": 0}

    def serialize() -> bytes:
        calls.append(state["v"])
        return str(state["v"]).encode()

    for i in range(5):
        state["v"] = i
        tables.put("t", b"k", serialize)
    await tables.flush()
    assert await s.load_all("t") == {b"k": b"4"} and calls == [4]
    await tables.close()


async def test_a_gcs_servers_memory_storage_is_not_written() -> None:
    # No one reads it after the process (a restarted GCS is a new process): writing it is waste.
    s = MemoryStorage()
    tables = Tables(s, unread=True)
    tables.put("t", b"k", b"v")
    tables.put("t", b"lazy", lambda: pytest.fail("serialized for nothing"))
    await tables.flush()  # returns at once
    assert await s.load_all("t") == {}
    await tables.close()


async def test_a_failing_write_is_retried() -> None:
    s = FlakyStorage(failures=2)
    tables = Tables(s)
    tables.put("t", b"k", b"v")
    await asyncio.wait_for(tables.flush(), 5)
    assert await s.load_all("t") == {b"k": b"v"}
    await tables.close()


async def test_a_storage_that_keeps_failing_is_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "WRITE_RETRY_S", 0.3)
    fatal: list[BaseException] = []
    tables = Tables(FlakyStorage(failures=10**6), on_fatal=fatal.append)
    tables.put("t", b"k", b"v")
    with pytest.raises(StorageError, match="storage unreachable"):
        await asyncio.wait_for(tables.flush(), 5)
    assert len(fatal) == 1
    with pytest.raises(StorageError):
        await tables.flush()
    await tables.close()


# -- the GCS tables across a restart ---------------------------------------------------------------


async def test_gcs_tables_survive_a_restart(opened: Opened) -> None:
    gcs = Gcs("token", Tables(await opened.open()))
    await gcs.recover()
    kv = gcs.kv
    assert (await kv.kv_put(pb.KvPutRequest(key="fn:f1", value=b"pickled f1", overwrite=True))).added
    assert not (await kv.kv_put(pb.KvPutRequest(key="fn:f1", value=b"ignored"))).added
    await kv.kv_put(pb.KvPutRequest(key="session", value=b"s", overwrite=True))
    await kv.kv_put(pb.KvPutRequest(key="gone", value=b"g", overwrite=True))
    assert (await kv.kv_del(pb.KvKey(key="gone"))).deleted
    job1 = await gcs.jobs.register_job(
        pb.RegisterJobRequest(
            version=versions.build_version(), driver_address="d:1", driver_pid=7, namespace="n"
        )
    )
    job2 = await gcs.jobs.register_job(
        pb.RegisterJobRequest(version=versions.build_version(), driver_address="d:2")
    )
    await gcs.jobs.mark_job_finished(pb.JobId(job_id=job2.job_id))
    await gcs.nodes.register_node(
        pb.NodeInfo(
            node_id=b"n1", address="127.0.0.1:1", total=pb.ResourceMap(amounts={"CPU": 4}), start_time=100
        )
    )
    await gcs.objects.add_object_locations(pb.ObjectLocationUpdate(node_id=b"n1", object_ids=[b"o1", b"o2"]))
    await gcs.objects.add_object_locations(pb.ObjectLocationUpdate(node_id=b"n2", object_ids=[b"o1"]))
    await gcs.objects.remove_object_locations(pb.ObjectLocationUpdate(node_id=b"n1", object_ids=[b"o2"]))
    await gcs.tables.flush()
    gcs.close()
    await gcs.tables.close()

    again = Gcs("token", Tables(await opened.open()))
    await again.recover()
    try:
        assert (await again.kv.kv_get(pb.KvKey(key="fn:f1"))).value == b"pickled f1"
        assert sorted((await again.kv.kv_keys(pb.KvKey(key=""))).keys) == ["fn:f1", "session"]
        assert not (await again.kv.kv_get(pb.KvKey(key="gone"))).found
        assert list(again.jobs.jobs) == [job1.job_id]
        assert again.jobs.jobs[job1.job_id] == pb.RegisterJobRequest(
            version=versions.build_version(), driver_address="d:1", driver_pid=7, namespace="n"
        )
        # Job ids are never handed out twice, even that of the last job, which finished.
        job3 = await again.jobs.register_job(
            pb.RegisterJobRequest(version=versions.build_version(), driver_address="d:3")
        )
        assert int.from_bytes(job3.job_id, "little") == 3
        (n1,) = (await again.nodes.get_cluster_view(pb.Empty())).nodes
        assert (n1.node_id, n1.address, n1.alive, n1.start_time) == (b"n1", "127.0.0.1:1", True, 100)
        assert dict(n1.total.amounts) == {"CPU": 4}
        locations = await again.objects.get_object_locations(pb.ObjectIds(ids=[b"o1", b"o2"]))
        assert [list(loc.node_ids) for loc in locations.locations] == [[b"n1", b"n2"], []]
        assert any("recovered" in e.message for e in again.events.events)
        # A driver of before the restart finishing its job is no stranger.
        await again.jobs.mark_job_finished(pb.JobId(job_id=job1.job_id))
        assert list(again.jobs.jobs) == [job3.job_id]
    finally:
        again.close()
        await again.tables.close()


def _next_worker(cluster: FakeCluster) -> str:
    """The worker address the fake cluster grants with its next (unscripted) lease."""
    return f"worker-{len(cluster.lease_requests) + 1}:1"


async def _until(check: object, timeout: float = 2.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition did not hold in time"
        await asyncio.sleep(0.005)


async def _crash(manager: ActorManager) -> None:
    """The GCS process dies: its tasks stop where they are, nothing more is written."""
    tasks = [a.task for a in manager.actors.values() if a.task is not None and not a.task.done()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_the_actor_table_survives_a_restart(opened: Opened) -> None:
    cluster = FakeCluster()
    cluster.nodes = [node("n1", 8)]
    tables = Tables(await opened.open())
    first = ActorManager(cluster, lambda: cluster.nodes, tables)  # type: ignore[arg-type]

    named = request(name="svc", namespace="ns", detached=True, max_restarts=3)
    await started(first, named)
    assert (await first.create_actor(named)).state == State.ALIVE  # a retried creation: the same actor
    assert len(cluster.lease_requests) == 1
    named_address = first.actors[named.actor_id].info.address

    killed = request(name="old", namespace="ns")
    await started(first, killed)
    await first.kill_actor(pb.KillActorRequest(actor_id=killed.actor_id, no_restart=True))

    # An actor whose constructor is running when the GCS dies.
    pending = request(max_restarts=1)
    hung_address = _next_worker(cluster)
    cluster.constructor[hung_address] = asyncio.get_running_loop().create_future()
    await first.create_actor(pending)
    await _until(lambda: first.actors[pending.actor_id].lease_id != b"")
    hung_lease = first.actors[pending.actor_id].lease_id

    # An actor restarting (its worker died) when the GCS dies.
    restarting = request(max_restarts=2)
    await started(first, restarting)
    restart_address = _next_worker(cluster)
    cluster.constructor[restart_address] = asyncio.get_running_loop().create_future()
    first.on_worker_death(pb.WorkerDeath(worker_id=first.actors[restarting.actor_id].info.worker_id))
    await _until(lambda: first.actors[restarting.actor_id].lease_id != b"")
    restart_lease = first.actors[restarting.actor_id].lease_id

    await tables.flush()
    await _crash(first)
    await tables.close()

    cluster.returned.clear()
    second = ActorManager(cluster, lambda: cluster.nodes, Tables(await opened.open()))  # type: ignore[arg-type]
    assert await second.recover() == 3
    try:
        # Named and detached: found by name, still ALIVE where it was.
        info = second.named_actor(pb.NamedActorRequest(name="svc", namespace="ns"))
        assert (info.state, info.address, info.detached) == (State.ALIVE, named_address, True)
        # Dead stays dead, with its cause; its name is free.
        dead = second.actors[killed.actor_id].info
        assert dead.state == State.DEAD
        assert "it was killed" in str(death_cause(dead))
        with pytest.raises(rpc.GRPCError):
            second.named_actor(pb.NamedActorRequest(name="old", namespace="ns"))
        # Interrupted creations: the old lease is given back, and the actor scheduled again.
        for actor_id, lease, restarts in (
            (pending.actor_id, hung_lease, 0),
            (restarting.actor_id, restart_lease, 1),
        ):
            await settled(second, actor_id)
            info = second.actors[actor_id].info
            assert (info.state, info.num_restarts) == (State.ALIVE, restarts)
            assert ("n1:1", lease, True) in cluster.returned
        # The lease of the ALIVE actor was kept: a kill gives back that very lease.
        named_lease = second.actors[named.actor_id].lease_id
        assert named_lease
        await second.kill_actor(pb.KillActorRequest(actor_id=named.actor_id, no_restart=True))
        assert ("n1:1", named_lease, True) in cluster.returned
    finally:
        await _crash(second)
        await second._tables.close()

    third = ActorManager(cluster, lambda: cluster.nodes, Tables(await opened.open()))  # type: ignore[arg-type]
    await third.recover()
    assert third.actors[named.actor_id].info.state == State.DEAD
    assert third.named == {}
    await third._tables.close()


class FakeRaylets:
    """The raylets the node table health-checks: those in `up` answer."""

    def __init__(self) -> None:
        self.up: set[str] = set()

    def stub(self, address: str, cls: type) -> object:
        raylets = self

        class Stub:
            async def get_node_info(self, empty: pb.Empty, timeout: float | None = None) -> pb.NodeInfo:
                if address not in raylets.up:
                    raise ConnectionRefusedError(address)
                return pb.NodeInfo()

        return Stub()

    def drop(self, address: str) -> None:
        pass

    def separate(self) -> FakeRaylets:
        return self

    def close(self) -> None:
        pass


def _node_table(
    raylets: FakeRaylets, tables: Tables, deaths: list[bytes], published: list[bytes]
) -> NodeTable:
    return NodeTable(
        raylets,  # type: ignore[arg-type]
        lambda channel, data: published.append(data),
        lambda channel: False,
        lambda source, severity, message: None,
        deaths.append,
        tables,
    )


async def test_nodes_are_kept_alive_across_a_restart_until_health_checks_fail(
    opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_table, "HEALTH_CHECK_PERIOD_S", 0.01)
    raylets = FakeRaylets()
    raylets.up = {"r1:1", "r2:1"}
    deaths: list[bytes] = []
    published: list[bytes] = []
    tables = Tables(await opened.open())
    first = _node_table(raylets, tables, deaths, published)
    await first.register_node(pb.NodeInfo(node_id=b"n1", address="r1:1", start_time=10))
    await first.register_node(pb.NodeInfo(node_id=b"n2", address="r2:1", start_time=20))
    first.close()
    await tables.close()

    raylets.up = {"r1:1"}  # n2's raylet died while the GCS was down
    tables = Tables(await opened.open())
    second = _node_table(raylets, tables, deaths, published)
    assert await second.recover() == 2
    assert all(n.alive for n in second.nodes.values())
    await _until(lambda: not second.nodes[b"n2"].alive)
    assert deaths == [b"n2"]
    assert second.nodes[b"n1"].alive
    # n1's raylet registers again (it saw the GCS restart): the same node, still alive.
    published.clear()
    reply = await second.register_node(pb.NodeInfo(node_id=b"n1", address="r1:1", start_time=99))
    assert [(n.node_id, n.alive, n.start_time) for n in reply.view.nodes] == [
        (b"n1", True, 10),
        (b"n2", False, 20),
    ]
    assert [pb.NodeInfo().parse(p).node_id for p in published] == [b"n1"]
    # Reports from raylets the GCS has not heard of are harmless.
    await second.report_resources(pb.ResourceReport(node_id=b"stranger"))
    await tables.flush()
    second.close()
    await tables.close()

    third = _node_table(raylets, Tables(await opened.open()), deaths, published)
    await third.recover()
    assert {k: n.alive for k, n in third.nodes.items()} == {b"n1": True, b"n2": False}
    third.close()
    await third._tables.close()


# -- the GCS process -------------------------------------------------------------------------------


def test_a_gcs_whose_redis_is_unreachable_exits_at_once_naming_it() -> None:
    url = f"redis://127.0.0.1:{rpc.free_port()}"
    started_at = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "aioray._private.gcs", "--port", "0", "--storage", url],
        env={**os.environ, process.TOKEN_ENV: "token"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert f"cannot reach the GCS storage {url}" in proc.stderr.decode()
    assert time.monotonic() - started_at < 15
