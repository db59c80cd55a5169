"""Start-up, auth, shutdown and small-cluster behaviour of real clusters."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time

import pytest

import aioray
from aioray._private.common import rpc
from aioray._proto.aioray import v1 as pb


def test_wrong_token_is_refused() -> None:
    aioray.init(num_cpus=1, object_store_memory=64 << 20)
    try:
        from aioray._private import worker_api

        address = worker_api.require().gcs_address

        async def call(token: str) -> pb.ClusterView:
            channels = rpc.ChannelPool(token)
            try:
                return await channels.stub(address, pb.NodeInfoGcsServiceStub).get_cluster_view(
                    pb.Empty(), timeout=5
                )
            finally:
                channels.close()

        with pytest.raises(rpc.GRPCError) as info:
            asyncio.run(call("not-the-token"))
        assert info.value.status == rpc.Status.UNAUTHENTICATED
        with pytest.raises(rpc.GRPCError):
            asyncio.run(call(""))
        assert len(asyncio.run(call(worker_api.require().core.token)).nodes) == 1
    finally:
        aioray.shutdown()


def test_nested_tasks_do_not_deadlock_a_one_cpu_cluster() -> None:
    aioray.init(num_cpus=1, object_store_memory=64 << 20)
    try:

        @aioray.remote
        def leaf(x):
            return x + 1

        @aioray.remote
        def middle(x):
            return aioray.get(leaf.remote(x)) * 10

        @aioray.remote
        def top():
            return sum(aioray.get([middle.remote(i) for i in range(3)]))

        assert aioray.get(top.remote(), timeout=60) == (1 + 2 + 3) * 10
    finally:
        aioray.shutdown()


def test_init_twice_and_shutdown_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    aioray.init(num_cpus=1, object_store_memory=64 << 20)
    try:
        with pytest.raises(RuntimeError, match="called twice"):
            aioray.init()
        aioray.init(ignore_reinit_error=True)
    finally:
        aioray.shutdown()
    aioray.shutdown()
    monkeypatch.setenv("AIORAY_ENABLE_AUTO_CONNECT", "0")
    with pytest.raises(RuntimeError, match="not initialised"):
        aioray.put(1)
    assert not aioray.is_initialized()


def test_the_first_call_without_init_starts_a_local_cluster() -> None:
    """As in Ray: `.remote()`, `put`, `get`... before `init()` start one (and `shutdown` stops it)."""

    @aioray.remote
    def add(a: int, b: int) -> int:
        return a + b

    assert not aioray.is_initialized()
    try:
        assert aioray.get(add.remote(1, 2), timeout=60) == 3
        assert aioray.is_initialized()
    finally:
        aioray.shutdown()
    assert not aioray.is_initialized()
    try:
        assert aioray.get(aioray.put("again"), timeout=60) == "again"
    finally:
        aioray.shutdown()


def test_ray_init_arguments_are_honoured_or_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"local_mode=True\) is not supported"):
        aioray.init(num_cpus=1, local_mode=True)
    with pytest.raises(ValueError, match=r"unknown argument\(s\): no_such_argument"):
        aioray.init(num_cpus=1, no_such_argument=1)
    with pytest.raises(ValueError, match=r"_metrics_export_port must be a port number"):
        aioray.init(num_cpus=1, _metrics_export_port=-1)
    assert not aioray.is_initialized()
    port = rpc.free_port()
    context = aioray.init(
        num_cpus=1,
        object_store_memory=64 << 20,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,  # honoured: see test_observability.py for what it does
        _metrics_export_port=port,
    )
    try:
        assert logging.getLogger("aioray").level == logging.WARNING
        assert aioray.nodes()[0]["MetricsExportPort"] == port == context["metrics_export_port"]
    finally:
        aioray.shutdown()
        logging.getLogger("aioray").setLevel(logging.NOTSET)


def test_store_too_small_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        aioray.init(num_cpus=1, object_store_memory=1000)
    assert not aioray.is_initialized()


def test_object_bigger_than_the_store_goes_to_disk() -> None:
    aioray.init(num_cpus=1, object_store_memory=4 << 20)
    try:
        data = os.urandom(8 << 20)
        ref = aioray.put(data)
        assert aioray.get(ref) == data
        assert aioray.get(aioray.put(b"small")) == b"small"
    finally:
        aioray.shutdown()


def test_driver_exit_takes_the_cluster_with_it(tmp_path) -> None:
    script = """
import os, sys, aioray
aioray.init(num_cpus=1, object_store_memory=64 << 20)
@aioray.remote
def pid():
    return os.getpid()
print(aioray.get(pid.remote()), aioray.nodes()[0]["ObjectStoreSocketName"], flush=True)
os._exit(0)  # no shutdown: the children must notice on their own
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    worker_pid, segment = proc.stdout.split()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = os.path.exists(f"/proc/{worker_pid}")
        if not alive and not os.path.exists(f"/dev/shm/{segment}"):
            break
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{worker_pid}"), "the worker outlived its driver"
    assert not os.path.exists(f"/dev/shm/{segment}"), "the store segment outlived the cluster"


def test_spill_directory_is_removed_at_shutdown() -> None:
    aioray.init(num_cpus=1, object_store_memory=20 << 20)
    try:
        refs = [aioray.put(b"\x01" * (8 << 20)) for _ in range(6)]
        from aioray._private import worker_api

        spill_dir = worker_api.require().core.spill_dir
        assert os.listdir(spill_dir)
        assert all(aioray.get(r)[0] == 1 for r in refs)
    finally:
        aioray.shutdown()
    assert not os.path.exists(spill_dir)


def test_workers_start_on_demand_one_per_free_cpu() -> None:
    from .conftest import _aioray_children

    def workers() -> set[int]:
        pids = set()
        for pid in _aioray_children():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"aioray._private.core_worker" in f.read():
                        pids.add(pid)
            except OSError:
                continue  # exited meanwhile
        return pids

    @aioray.remote
    def pid(i: int) -> int:
        return os.getpid()

    aioray.init(num_cpus=2)
    try:
        assert workers() == set(), "an idle cluster has no workers yet"
        ran_on = set(aioray.get([pid.remote(i) for i in range(300)], timeout=60))
        started = workers()
        # Hundreds of queued lease requests for two CPUs start two workers, not one per request.
        assert ran_on <= started and 1 <= len(started) <= 2
    finally:
        aioray.shutdown()


def test_gcs_subscription_starts_with_the_view_then_streams_resource_reports() -> None:
    from aioray._private import worker_api
    from aioray._private.common.pubsub import NODE_CHANNEL, RESOURCE_CHANNEL, VIEW_CHANNEL

    @aioray.remote
    def one() -> int:
        return 1

    aioray.init(num_cpus=1, object_store_memory=64 << 20)
    try:
        conn = worker_api.require()

        async def follow() -> tuple[pb.ClusterView, pb.ResourceReport]:
            channels = rpc.ChannelPool(conn.core.token)
            try:
                stub = channels.stub(conn.gcs_address, pb.PubSubGcsServiceStub)
                request = pb.SubscribeRequest(
                    channels=[NODE_CHANNEL, RESOURCE_CHANNEL], with_cluster_view=True
                )
                async with asyncio.timeout(30):
                    stream = stub.subscribe(request).__aiter__()
                    first = await stream.__anext__()
                    assert first.channel == VIEW_CHANNEL
                    await asyncio.to_thread(aioray.get, one.remote(), timeout=30)  # the raylet reports
                    msg = await stream.__anext__()
                    while msg.channel != RESOURCE_CHANNEL:  # node messages may come first
                        msg = await stream.__anext__()
                    await stream.aclose()
                return pb.ClusterView().parse(first.data), pb.ResourceReport().parse(msg.data)
            finally:
                channels.close()

        view, report = asyncio.run(follow())
        assert [n.node_id for n in view.nodes] == [report.node_id]
        assert report.available.amounts["CPU"] in (0.0, 1.0)
    finally:
        aioray.shutdown()


def test_a_driver_of_another_version_is_refused_at_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    from aioray._private.common import versions

    from .multinode import Nodes

    nodes = Nodes()
    nodes.start_head({})
    try:
        monkeypatch.setattr(versions, "build_version", lambda: "aioray 0.0.1, Python 2.7")
        with pytest.raises(
            RuntimeError,
            match=r"version mismatch: the cluster runs aioray .*, this driver aioray 0.0.1, Python 2.7",
        ):
            aioray.init(address=nodes.address)
        assert not aioray.is_initialized()
        monkeypatch.undo()
        aioray.init(address=nodes.address)  # the same versions connect
        aioray.shutdown()
        # A dashboard choice cannot change a running cluster: said, not silently ignored.
        with pytest.warns(UserWarning, match="include_dashboard=False only applies to a new cluster"):
            aioray.init(address=nodes.address, include_dashboard=False)
        aioray.shutdown()
    finally:
        nodes.stop()
