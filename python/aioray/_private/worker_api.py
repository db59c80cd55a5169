"""The process-wide connection to a cluster, behind both the sync (Ray) and async APIs."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aioray._private import node as node_mod
from aioray._private import runtime_env as runtime_env_mod
from aioray._private.common import jobs, process, rpc, versions
from aioray._private.common.ids import random_id
from aioray._private.core_worker import object_ref
from aioray._private.core_worker.worker import CoreWorker, connect
from aioray._private.runtime_env.resolver import merge as merge_runtime_env
from aioray._proto.aioray import v1 as pb

CONNECT_RETRY_S = 30.0
GROUP_CHANGES_FLUSH_S = 10.0  # only as long as placement group changes are under way at exit
_UNREACHABLE: tuple[type[BaseException], ...] = (*rpc.CONNECTION_ERRORS, TimeoutError)
CLUSTER_FILE = "cluster.json"
AUTO_CONNECT_ENV = "AIORAY_ENABLE_AUTO_CONNECT"


@dataclass
class Connection:
    core: CoreWorker
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    node: node_mod.NodeProcesses | None
    gcs_address: str
    namespace: str
    dashboard_url: str | None = None


_lock = threading.RLock()
_connection: Connection | None = None


def current() -> Connection | None:
    return _connection


def require() -> Connection:
    if _connection is None:
        raise RuntimeError(
            "aioray is not initialised: call aioray.init() or use `async with aioray.Cluster()`"
        )
    return _connection


def _auto_connect() -> None:
    """The first `.remote()`/`put`/`get`/... of a driver without `init()` starts a local cluster, as
    in Ray (whose `RAY_ENABLE_AUTO_CONNECT=0` is our AIORAY_ENABLE_AUTO_CONNECT=0)."""
    if os.environ.get(AUTO_CONNECT_ENV, "1").strip().lower() in ("0", "false", "no"):
        return
    if "AIORAY_WORKER_ID" in os.environ:
        return  # a worker process is connected by its raylet, never by starting a cluster
    with _lock:
        if _connection is None:
            init()


object_ref.set_auto_connect(_auto_connect)


def cluster_file() -> str:
    return os.path.join(node_mod.session_dir(), CLUSTER_FILE)


def read_cluster_file(address: str | None = None) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        with open(cluster_file()) as f:
            info: dict[str, Any] = json.load(f)
        if address in (None, "auto") or info.get("gcs_address") == address:
            return info
    return None


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    namespace: str | None = None,
    ignore_reinit_error: bool = False,
    labels: dict[str, str] | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    log_to_driver: bool = True,
    metrics_export_port: int | None = None,
    include_dashboard: bool | None = None,
    dashboard_host: str | None = None,
    dashboard_port: int | None = None,
    _token: str | None = None,
) -> Connection:
    """`log_to_driver`: print the job's worker output from every node here (`core_worker.log_printer`);
    `metrics_export_port`: the port of a new cluster's node's /metrics (None: a free one);
    `include_dashboard`, `dashboard_host`, `dashboard_port`: a new cluster's dashboard (`start_node`)."""
    global _connection
    with _lock:
        if _connection is not None:
            if ignore_reinit_error:
                return _connection
            raise RuntimeError(
                "aioray.init() was called twice: call aioray.shutdown() first, or pass ignore_reinit_error=True"
            )
        if address is None:
            # A submitted job's entrypoint (or any process told so) joins its cluster, as RAY_ADDRESS does.
            address = os.environ.get(jobs.ADDRESS_ENV) or None
        injected = os.environ.get(jobs.JOB_RUNTIME_ENV_ENV)
        if injected and address not in (None, "local"):
            # The submitted job's runtime_env (packages uploaded already) is the driver's job-level
            # one; what init() itself is given wins field by field, as Ray merges them.
            runtime_env = merge_runtime_env(json.loads(injected), runtime_env)
        job_env = runtime_env_mod.parse_runtime_env(runtime_env)  # refused before anything starts
        node = None
        if address is None or address == "local":
            node = node_mod.start_node(
                head=True,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                resources=resources,
                object_store_memory=object_store_memory,
                labels=labels,
                metrics_export_port=metrics_export_port,
                include_dashboard=include_dashboard,
                dashboard_host=dashboard_host or "127.0.0.1",
                dashboard_port=dashboard_port,
            )
            gcs_address, token = node.gcs_address, node.token
            dashboard_url = node.dashboard_url
        else:
            if any(
                v is not None
                for v in (
                    num_cpus,
                    num_gpus,
                    resources,
                    object_store_memory,
                    labels,
                    metrics_export_port,
                    dashboard_host,
                    dashboard_port,
                )
            ):
                raise ValueError(
                    "num_cpus, num_gpus, resources, object_store_memory, labels, the metrics export port "
                    "and the dashboard's host and port only apply to a new cluster"
                )
            if include_dashboard is not None:
                # Ray scripts pass it when they connect too; it cannot change a running cluster.
                warnings.warn(
                    f"include_dashboard={include_dashboard} only applies to a new cluster: the cluster at "
                    f"{address} keeps the dashboard it was started with",
                    stacklevel=3,
                )
            info = read_cluster_file(address)
            if address == "auto":
                if info is None:
                    raise ConnectionError(
                        "address='auto' found no running cluster: start one with `aioray start --head`"
                    )
                address = info["gcs_address"]
            token = _token or os.environ.get(process.TOKEN_ENV) or (info or {}).get("token", "")
            gcs_address = address
            dashboard_url = (info or {}).get("dashboard_url")
        try:
            _connection = _connect(gcs_address, token, node, namespace or "", log_to_driver)
            _connection.dashboard_url = dashboard_url
        except BaseException:
            if node is not None:
                node.stop()
            raise
        try:
            # The job's packages are uploaded now, as in Ray: a working_dir too large fails init().
            runtime_env_mod.set_job_env(_connection.core, job_env)
        except BaseException:
            shutdown()
            raise
        return _connection


def _connect(
    gcs_address: str,
    token: str,
    node: node_mod.NodeProcesses | None,
    namespace: str,
    log_to_driver: bool = True,
) -> Connection:
    loop = process.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name="aioray-core", daemon=True)
    thread.start()
    ready.wait()
    try:
        core = asyncio.run_coroutine_threadsafe(
            _start_core(loop, gcs_address, token, node, namespace, log_to_driver), loop
        ).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        raise
    connect(core)
    return Connection(core, loop, thread, node, gcs_address, namespace)


async def _start_core(
    loop: asyncio.AbstractEventLoop,
    gcs_address: str,
    token: str,
    node: node_mod.NodeProcesses | None,
    namespace: str,
    log_to_driver: bool = True,
) -> CoreWorker:
    channels = rpc.ChannelPool(token)
    gcs = channels.stub(gcs_address, pb.NodeInfoGcsServiceStub)
    deadline = loop.time() + CONNECT_RETRY_S
    local = None
    while local is None:
        try:
            view = await gcs.get_cluster_view(pb.Empty(), timeout=5)
        except rpc.GRPCError as e:
            channels.close()
            raise rpc.translate_error(e, f"connecting to {gcs_address}") from None
        except _UNREACHABLE as e:
            if loop.time() > deadline:
                channels.close()
                raise ConnectionError(
                    f"could not reach the aioray cluster at {gcs_address} within {CONNECT_RETRY_S:.0f}s ({e}); "
                    "is `aioray start --head` running there?"
                ) from None
            channels.drop(gcs_address)
            await asyncio.sleep(0.2)
            continue
        local = _pick_local_node(view.nodes, node)
        if local is None:
            # The GCS may answer before the node's raylet registered: give it the same window.
            if loop.time() > deadline:
                channels.close()
                raise ConnectionError(
                    f"the cluster at {gcs_address} has no live node on this machine to attach to"
                )
            await asyncio.sleep(0.1)
    core = CoreWorker(
        is_driver=True,
        worker_id=random_id(16),
        node=local,
        gcs_address=gcs_address,
        token=token,
        job_id=b"",
        loop=loop,
        namespace=namespace,
    )
    # Serve on the node's address, so workers of other nodes (other machines) reach this driver.
    await core.start(rpc.split_address(local.address)[0])
    try:
        # Before the job exists: a driver that is SIGKILLed later says nothing, but its raylet,
        # watching its process, tells the GCS (its job finishes, its leases everywhere end).
        await channels.stub(local.address, pb.NodeManagerStub).register_driver(
            pb.RegisterWorkerRequest(worker_id=core.worker_id, address=core.address, pid=os.getpid()),
            timeout=10,
        )
        request = pb.RegisterJobRequest(
            driver_address=core.address,
            driver_pid=os.getpid(),
            namespace=namespace,
            version=versions.build_version(),
            submission_id=os.environ.get(jobs.SUBMISSION_ID_ENV, ""),
            driver_node_id=local.node_id,
        )
        try:
            reply = await channels.stub(gcs_address, pb.JobInfoGcsServiceStub).register_job(
                request, timeout=10
            )
        except rpc.GRPCError as e:
            if e.status == rpc.Status.FAILED_PRECONDITION:
                raise RuntimeError(f"cannot connect to the cluster at {gcs_address}: {e.message}") from None
            raise
        core.job_id = reply.job_id
        if log_to_driver:
            await core.print_worker_logs()
    except BaseException:
        await core.close()
        raise
    finally:
        channels.close()
    core.note_nodes(view.nodes)
    return core


def _pick_local_node(nodes: list[pb.NodeInfo], started: node_mod.NodeProcesses | None) -> pb.NodeInfo | None:
    alive = [n for n in nodes if n.alive]
    if started is not None:
        for n in alive:
            if n.node_id.hex() == started.node_id:
                return n
    # Several nodes may share this machine (tests, or `aioray start` twice): prefer the head.
    local = [n for n in alive if os.path.exists(f"/dev/shm/{n.store_name}")]
    local.sort(key=lambda n: not n.is_head)
    return local[0] if local else None


def shutdown() -> None:
    global _connection
    with _lock:
        conn, _connection = _connection, None
        if conn is None:
            return
        object_ref.set_global_worker(None)
        core = conn.core
        # First, while the cluster is there: what the job's workers printed last is printed.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(core.drain_worker_logs(), conn.loop).result(5)

        # Placement group changes not waited for (a removal just before the end) go out first.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(
                core.group_changes.flush(GROUP_CHANGES_FLUSH_S), conn.loop
            ).result(GROUP_CHANGES_FLUSH_S + 1)

        async def finish_job() -> None:
            # Idle leases first: once the job is finished, raylets kill what it still leases.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(core.submitter.return_leases(1.0), 1.5)
            # Best effort within the wait below: a GCS that is gone is not waited for.
            stub = core.gcs(pb.JobInfoGcsServiceStub, reconnect_timeout_s=2)
            await asyncio.wait_for(stub.mark_job_finished(pb.JobId(job_id=core.job_id), timeout=2), 2.5)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(finish_job(), conn.loop).result(4.5)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(core.close(), conn.loop).result(5)
        conn.loop.call_soon_threadsafe(conn.loop.stop)
        conn.thread.join(5)
        if conn.node is not None:
            conn.node.stop()


atexit.register(shutdown)
