"""GCS fault tolerance, process level: a GCS killed with SIGKILL and started again on the same port
and storage (SQLite, or a real Redis) serves the tables it had.

The raylet and the actor's worker are fakes served by this test (the GCS only speaks gRPC to them),
so what is checked is the GCS: its KV and function table, jobs, nodes and actors after the restart.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aioray._private.common import process, proto_enums, rpc, versions
from aioray._private.common.process import Child
from aioray._proto.aioray import v1 as pb

from ..unit.gcs.redis_server import redis_server

TOKEN = "gcs-restart-test-token"
State = pb.ActorInfoState
LIVE_NODE = b"live-node"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


class GcsProcess:
    """`python -m aioray._private.gcs` on a fixed port, as the supervisor runs (and reruns) it."""

    def __init__(self, storage: str, log_path: Path) -> None:
        self.port = rpc.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.storage = storage
        self.log_path = log_path
        self.child: Child | None = None

    def start(self) -> None:
        argv = ["-m", "aioray._private.gcs", "--host", "127.0.0.1", "--port", str(self.port)]
        self.child = Child.spawn(
            "gcs",
            [*argv, "--storage", self.storage],
            {**os.environ, process.TOKEN_ENV: TOKEN},
            log_path=str(self.log_path),
        )
        try:
            assert int(self.child.wait_ready(30)) == self.port
        except RuntimeError as e:
            raise AssertionError(f"{e}\n{self.log_path.read_text(errors='replace')[-3000:]}") from e

    def sigkill(self) -> None:
        assert self.child is not None
        self.child.proc.kill()
        self.child.proc.wait()
        self.child.close_lifeline()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


class FakeRaylet(pb.NodeManagerBase):
    """Answers health checks and grants every lease to the one fake worker."""

    def __init__(self) -> None:
        self.worker_address = ""
        self.granted = 0
        self.returned: list[bytes] = []

    async def get_node_info(self, empty: pb.Empty) -> pb.NodeInfo:
        return pb.NodeInfo(node_id=LIVE_NODE)

    async def request_worker_lease(self, lease_request: pb.LeaseRequest) -> pb.LeaseReply:
        self.granted += 1
        return pb.LeaseReply(
            status=proto_enums.LEASE_GRANTED,
            lease_id=f"lease-{self.granted}".encode(),
            worker_id=f"worker-{self.granted}".encode(),
            worker_address=self.worker_address,
            node_id=LIVE_NODE,
        )

    async def return_worker_lease(self, return_lease_request: pb.ReturnLeaseRequest) -> pb.Empty:
        self.returned.append(return_lease_request.lease_id)
        return pb.Empty()


class FakeWorker(pb.CoreWorkerBase):
    async def create_actor(self, blob: pb.Blob) -> pb.Blob:
        return pb.Blob()  # the constructor succeeded


def node_info(node_id: bytes, address: str) -> pb.NodeInfo:
    cpus = pb.ResourceMap(amounts={"CPU": 4})
    return pb.NodeInfo(node_id=node_id, address=address, total=cpus, available=cpus, start_time=123.0)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_gcs_killed_and_restarted_on_its_storage_serves_its_tables(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite://{tmp_path}/gcs.sqlite3"
    else:
        url = f"{request.getfixturevalue('redis_url')}?namespace=restart-{os.getpid()}"
    raylet, worker = FakeRaylet(), FakeWorker()
    server, raylet_port = await rpc.start_server([raylet, worker], "127.0.0.1", 0, TOKEN)
    raylet_address = raylet.worker_address = f"127.0.0.1:{raylet_port}"
    gcs = GcsProcess(url, tmp_path / "gcs.log")
    channels = rpc.ChannelPool(TOKEN)

    def stubs() -> tuple[
        pb.InternalKvGcsServiceStub,
        pb.JobInfoGcsServiceStub,
        pb.NodeInfoGcsServiceStub,
        pb.ActorInfoGcsServiceStub,
    ]:
        return (
            channels.stub(gcs.address, pb.InternalKvGcsServiceStub),
            channels.stub(gcs.address, pb.JobInfoGcsServiceStub),
            channels.stub(gcs.address, pb.NodeInfoGcsServiceStub),
            channels.stub(gcs.address, pb.ActorInfoGcsServiceStub),
        )

    kv, jobs, nodes, actors = stubs()
    try:
        await asyncio.to_thread(gcs.start)
        await kv.kv_put(
            pb.KvPutRequest(key="fn:abc", value=b"a pickled function", overwrite=True), timeout=10
        )
        await kv.kv_put(pb.KvPutRequest(key="cluster/meta", value=b"\x00\x01", overwrite=True), timeout=10)
        job1 = await jobs.register_job(
            pb.RegisterJobRequest(
                version=versions.build_version(), driver_address="127.0.0.1:9", namespace="ns"
            )
        )
        job2 = await jobs.register_job(
            pb.RegisterJobRequest(version=versions.build_version(), driver_address="127.0.0.1:8")
        )
        await jobs.mark_job_finished(pb.JobId(job_id=job2.job_id), timeout=10)
        await nodes.register_node(node_info(LIVE_NODE, raylet_address), timeout=10)
        actor_id = os.urandom(16)
        await actors.create_actor(
            pb.CreateActorRequest(
                actor_id=actor_id,
                spec=b"spec",
                name="svc",
                namespace="ns",
                detached=True,
                owner_address="127.0.0.1:9",
                job_id=job1.job_id,
                resources=pb.ResourceMap(amounts={"CPU": 1}),
            ),
            timeout=10,
        )
        settled = pb.GetActorInfoRequest(actor_id=actor_id, wait_settled=True, timeout=10)
        assert (await actors.get_actor_info(settled, timeout=15)).state == State.ALIVE
        # A node whose raylet is gone by the time the GCS comes back (nothing listens there).
        await nodes.register_node(node_info(b"gone-node", f"127.0.0.1:{rpc.free_port()}"), timeout=10)

        gcs.sigkill()
        channels.drop(gcs.address)  # a new connection, as a client that saw the GCS go would make
        await asyncio.to_thread(gcs.start)
        kv, jobs, nodes, actors = stubs()

        # The KV store, and with it the function table.
        assert (await kv.kv_get(pb.KvKey(key="fn:abc"), timeout=10)).value == b"a pickled function"
        assert sorted((await kv.kv_keys(pb.KvKey(key=""), timeout=10)).keys) == ["cluster/meta", "fn:abc"]
        # Jobs: a new one gets a new id, and a job of before the restart can finish.
        job3 = await jobs.register_job(
            pb.RegisterJobRequest(version=versions.build_version(), driver_address="127.0.0.1:7"), timeout=10
        )
        assert int.from_bytes(job3.job_id, "little") == 3
        await jobs.mark_job_finished(pb.JobId(job_id=job1.job_id), timeout=10)
        # Nodes that were alive are alive until health checks say otherwise.
        view = await nodes.get_cluster_view(pb.Empty(), timeout=10)
        assert {n.node_id: n.alive for n in view.nodes} == {LIVE_NODE: True, b"gone-node": True}
        # The raylet registers again: the same node, still alive, with its first start time.
        reply = await nodes.register_node(node_info(LIVE_NODE, raylet_address), timeout=10)
        (live,) = [n for n in reply.view.nodes if n.node_id == LIVE_NODE]
        assert (live.alive, live.start_time) == (True, 123.0)
        # The detached named actor: found by name, ALIVE at its worker.
        named = await actors.get_named_actor(pb.NamedActorRequest(name="svc", namespace="ns"), timeout=10)
        assert (named.actor_id, named.state, named.address) == (actor_id, State.ALIVE, raylet.worker_address)
        # The node that does not answer is declared dead; the one that does stays alive.
        deadline = time.monotonic() + 20
        while True:
            view = await nodes.get_cluster_view(pb.Empty(), timeout=10)
            alive = {n.node_id: n.alive for n in view.nodes}
            if not alive[b"gone-node"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert alive == {LIVE_NODE: True, b"gone-node": False}
        # Killing the actor gives back the lease it got before the restart.
        await actors.kill_actor(pb.KillActorRequest(actor_id=actor_id, no_restart=True), timeout=10)
        assert raylet.returned == [b"lease-1"]
        assert (await actors.get_actor_info(pb.GetActorInfoRequest(actor_id=actor_id))).state == State.DEAD
    finally:
        await asyncio.to_thread(gcs.stop)
        channels.close()
        server.close()
