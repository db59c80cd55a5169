"""The raylet process: one per node. It owns the node's store segment, its workers and local scheduling.

It serves four gRPC services: the node manager (leases, workers), the
object manager (the store as seen from outside, transfers between nodes),
the metrics agent (its workers' metrics, for the node's ``/metrics`` page)
and the log agent (its workers' log files), plus the raw data port and the
``/metrics`` HTTP endpoint. This module wires them together, keeps the GCS
informed of the node's free resources, and runs the process:
``python -m aioray._private.raylet`` (see `aioray._private.node`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any

from aioray._private.common import metrics, process, rpc, segments
from aioray._private.common import task_events as te
from aioray._private.common.config import GCS_RECONNECT_TIMEOUT_S
from aioray._private.common.ids import random_id
from aioray._private.common.node_resources import NODE_ID_LABEL, gpu_ids_for
from aioray._private.common.resources import ResourceSet
from aioray._private.raylet.cluster_view import ClusterView
from aioray._private.raylet.log_monitor import LogMonitor, log_dir_of
from aioray._private.raylet.memory_monitor import MemoryMonitor, MonitorConfig
from aioray._private.raylet.metrics_agent import MetricsAgent
from aioray._private.raylet.node_manager import NodeManager
from aioray._private.raylet.object_manager import ObjectManager
from aioray._private.raylet.runtime_env_agent import RuntimeEnvAgent
from aioray._private.raylet.spill import SpillManager
from aioray._private.raylet.worker_pool import WorkerPool, WorkerProc
from aioray._proto.aioray import v1 as pb
from aioray._store import ObjectStore

log = process.setup_logging("raylet")

REPORT_DELAY_S = 0.05


class Raylet:
    def __init__(self, args: argparse.Namespace, token: str) -> None:
        self.node_id = random_id(16)
        self.host = args.host
        self.gcs_address = args.gcs_address
        self.token = token
        self.is_head = args.head
        self.address = ""
        # AIORAY_SESSION_TAG (optional) marks every segment of one test session or deployment.
        self.store_name = segments.segment_name(segments.session_tag(), os.getpid(), self.node_id)
        self.store = ObjectStore.create(self.store_name, args.object_store_memory)
        self.spill = SpillManager(
            self.store, os.path.join(args.spill_dir, f"spill-{self.node_id.hex()[:16]}")
        )
        self.channels = rpc.ChannelPool(token)
        self.view = ClusterView(self.channels, self.gcs_address)
        self.pool = WorkerPool(self._worker_env, self._spawn, self._on_worker_exit)
        self.session_dir = args.spill_dir
        self.logs = LogMonitor(
            log_dir_of(args.spill_dir, self.node_id),
            self.node_id,
            self.host,
            self._publish,
            self._daemon_logs,
        )
        self.pool.logs = self.logs
        self.metrics = MetricsAgent(metrics.REGISTRY, self._gcs_metrics if self.is_head else None)
        # Scheduling and transfer events of tasks (common.task_events), sent to the GCS in batches.
        self.task_events = te.TaskEventBuffer()
        self.event_flusher = te.EventFlusher(
            self.task_events, lambda: (self.node_id, b"", os.getpid(), "raylet"), self._send_events
        )
        total = ResourceSet(json.loads(args.resources))
        self.labels = {**json.loads(args.labels), NODE_ID_LABEL: self.node_id.hex()}
        self.nodes = NodeManager(
            self.node_id,
            total,
            self.view,
            self.pool,
            self.node_info,
            self.schedule_report,
            self.gcs_address,
            lambda: self.stopped.set(),
            gpu_ids=gpu_ids_for(total.get("GPU")),
            labels=self.labels,
            events=self.task_events,
        )
        # Kills leased workers while the node's memory is above the threshold (memory_monitor).
        self.memory = MemoryMonitor(
            lambda: f"{self.node_id.hex()} ({self.address})",
            self.nodes.memory_candidates,
            self.nodes.kill_for_memory,
            MonitorConfig.from_env(os.environ),
        )
        self.view.on_change = self.nodes.replan
        self.view.on_worker_death = self.nodes.owner_died
        self.nodes.report_death = lambda death: self._spawn(self._report_death(death))
        # Runtime environments are cached in the spill folder: removed with it when the raylet stops,
        # and reclaimed with it by the next node start if the raylet was killed.
        self.runtime_envs = RuntimeEnvAgent(os.path.join(self.spill.dir, "runtime_env"), self._kv_get)
        self.nodes.runtime_envs = self.runtime_envs
        self.pool.on_env_failed = self.nodes.fail_runtime_env
        self.pool.on_start_failed = self.nodes.dispatch
        self.pool.soft_limit = max(1, int(self.nodes.total.get("CPU")))
        self.objects = ObjectManager(
            self.node_id,
            self.store,
            self.spill,
            self.view,
            self.channels,
            self.gcs_address,
            token,
            self._spawn,
            self.schedule_report,
            self.task_events,
        )
        # Workers start on demand (a lease that finds none idle starts one), so an idle node is three
        # processes; --prestart-workers starts one per CPU at once for the first tasks' latency.
        self.min_workers = max(1, int(self.nodes.total.get("CPU"))) if args.prestart_workers else 0
        self.stopping = False
        self.stopped = asyncio.Event()
        self._report_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def services(self) -> list[object]:
        return [self.nodes, self.objects, self.metrics, self.logs]

    async def _publish(self, message: pb.PubMessage) -> None:
        stub = self.channels.gcs_stub(self.gcs_address, pb.PubSubGcsServiceStub, GCS_RECONNECT_TIMEOUT_S)
        await stub.publish(message, timeout=5)

    async def _gcs_metrics(self) -> metrics.Snapshot | None:
        """The GCS's metrics, for the head's page; None while it does not answer (restarting)."""
        try:
            stub = self.channels.stub(self.gcs_address, pb.MetricsSourceStub)
            reply = await stub.get_metrics(pb.Empty(), timeout=2)
            return metrics.decode_snapshot(reply.data)
        except Exception as e:
            log.debug("no GCS metrics for this scrape: %r", e)
            return None

    def _daemon_logs(self) -> dict[str, str]:
        """This node's daemon logs, when they go to files: the raylet's (its stderr) and, on the
        head, the GCS's; by their file names."""
        found = {}
        with contextlib.suppress(OSError):
            own = os.readlink("/proc/self/fd/2")
            if os.path.isfile(own):
                found[os.path.basename(own)] = own
        if self.is_head:
            gcs_log = os.path.join(self.session_dir, f"gcs-{rpc.split_address(self.gcs_address)[1]}.log")
            if os.path.isfile(gcs_log):
                found[os.path.basename(gcs_log)] = gcs_log
        return found

    def _register_metrics(self) -> None:
        """The node's gauges, read when a snapshot is taken."""
        reg = metrics.REGISTRY
        store = self.store.stats

        def store_stat(key: str) -> metrics.Collect:
            return lambda: float(store()[key])

        def pinned() -> float:
            s = store()
            return float(max(0, s["object_bytes"] - s["evictable_bytes"]))

        reg.gauge(
            "aioray_object_store_capacity_bytes",
            "Size of the node's object store",
            collect=store_stat("capacity"),
        )
        reg.gauge(
            "aioray_object_store_used_bytes", "Bytes of the store in use", collect=store_stat("used_bytes")
        )
        reg.gauge(
            "aioray_object_store_objects", "Objects in the node's store", collect=store_stat("num_objects")
        )
        reg.gauge(
            "aioray_object_store_pinned_bytes",
            "Bytes of objects the store cannot evict now (primary copies, objects being read or written)",
            collect=pinned,
        )
        reg.gauge(
            "aioray_object_store_evictable_bytes",
            "Bytes of cached copies the store may evict",
            collect=store_stat("evictable_bytes"),
        )
        spill = self.spill
        reg.gauge(
            "aioray_spilled_bytes",
            "Bytes of objects spilled to disk now",
            collect=lambda: spill.spilled_bytes,
        )
        reg.counter(
            "aioray_spilled_bytes_total",
            "Bytes written to disk by spilling",
            collect=lambda: spill.spilled_total,
        )
        reg.counter(
            "aioray_restored_bytes_total", "Bytes restored from disk", collect=lambda: spill.restored_bytes
        )
        pool, nodes = self.pool, self.nodes

        def workers() -> dict[tuple[str, ...], float]:
            registered = sum(1 for w in pool.workers.values() if w.registered.done())
            idle = len(pool.idle)
            return {("idle",): idle, ("leased",): registered - idle, ("starting",): pool.starting}

        reg.gauge("aioray_workers", "Worker processes of the node by state", ("state",), collect=workers)
        reg.gauge("aioray_leases_active", "Worker leases held now", collect=lambda: len(nodes.leases))
        reg.gauge(
            "aioray_leases_queued",
            "Lease requests waiting here for resources or a worker",
            collect=lambda: sum(1 for w in nodes.waiting if not w.future.done()),
        )
        reg.gauge(
            "aioray_resources_total",
            "The node's resources",
            ("resource",),
            collect=lambda: {(k,): v for k, v in nodes.total.to_dict().items()},
        )
        reg.gauge(
            "aioray_resources_available",
            "The node's resources not held by leases",
            ("resource",),
            collect=lambda: {(k,): v for k, v in nodes.available.to_dict().items()},
        )

    def _worker_env(self) -> dict[str, str]:
        return {
            process.TOKEN_ENV: self.token,
            "AIORAY_RAYLET_ADDRESS": self.address,
            "AIORAY_GCS_ADDRESS": self.gcs_address,
            "AIORAY_NODE_ID": self.node_id.hex(),
            "AIORAY_STORE_NAME": self.store_name,
        }

    async def _send_events(self, payload: bytes) -> None:
        stub = self.channels.gcs_stub(self.gcs_address, pb.TaskInfoGcsServiceStub, te.SEND_TIMEOUT_S)
        await stub.add_task_events(pb.Blob(data=payload), timeout=te.SEND_TIMEOUT_S)

    async def _kv_get(self, key: str) -> bytes | None:
        """A value of the GCS key-value store (runtime env packages), None if it has none."""
        stub = self.channels.gcs_stub(self.gcs_address, pb.InternalKvGcsServiceStub, GCS_RECONNECT_TIMEOUT_S)
        reply = await stub.kv_get(pb.KvKey(key=key), timeout=60)
        return reply.value if reply.found else None

    def _on_worker_exit(self, worker: WorkerProc, code: int | None) -> None:
        self.metrics.retire(worker.worker_id)
        # Views of store objects it still held would keep them from being freed or evicted.
        with contextlib.suppress(Exception):
            self.store.reap_dead_clients()
        death = self.nodes.on_worker_exit(worker, code)
        if death is not None:
            self._spawn(self._report_death(death))

    async def _report_death(self, death: pb.WorkerDeath) -> None:
        with contextlib.suppress(Exception):
            stub = self.channels.gcs_stub(
                self.gcs_address, pb.WorkerInfoGcsServiceStub, GCS_RECONNECT_TIMEOUT_S
            )
            await stub.report_worker_death(death, timeout=10)

    # -- node info and resource reports ----------------------------------------------------------
    def _store_stats(self) -> dict[str, int]:
        if self.stopping:  # the store may be gone already while a last RPC is answered
            with contextlib.suppress(RuntimeError):
                return self.store.stats()
            return {"capacity": 0, "used_bytes": 0, "num_objects": 0}
        return self.store.stats()

    def node_info(self) -> pb.NodeInfo:
        stats = self._store_stats()
        port = self.objects.data_port.port
        return pb.NodeInfo(
            node_id=self.node_id,
            address=self.address,
            object_manager_address=f"{self.host}:{port}" if port else "",
            store_name=self.store_name,
            total=pb.ResourceMap(amounts=self.nodes.total.to_dict()),
            available=pb.ResourceMap(amounts=self.nodes.available.to_dict()),
            alive=True,
            is_head=self.is_head,
            start_time=time.time(),
            store_capacity=stats["capacity"],
            store_used=stats["used_bytes"],
            store_objects=stats["num_objects"],
            num_workers=len(self.pool.workers),
            spill_dir=self.spill.dir,
            spilled_bytes=self.spill.spilled_bytes,
            restored_bytes=self.spill.restored_bytes,
            spilled_total=self.spill.spilled_total,
            labels=self.labels,
            metrics_export_port=self.metrics.server.port,
        )

    def schedule_report(self) -> None:
        """Reports the node's free resources and store use to the GCS soon (changes coalesce)."""
        if not self._report_scheduled and not self.stopping:
            self._report_scheduled = True
            asyncio.get_running_loop().call_later(REPORT_DELAY_S, lambda: self._spawn(self._report()))

    async def _report(self) -> None:
        self._report_scheduled = False
        if self.stopping:
            return
        stats = self.store.stats()
        report = pb.ResourceReport(
            node_id=self.node_id,
            available=pb.ResourceMap(amounts=self.nodes.available.to_dict()),
            store_used=stats["used_bytes"],
            store_objects=stats["num_objects"],
            num_workers=len(self.pool.workers),
            spilled_bytes=self.spill.spilled_bytes,
            restored_bytes=self.spill.restored_bytes,
            spilled_total=self.spill.spilled_total,
        )
        with contextlib.suppress(Exception):
            stub = self.channels.stub(self.gcs_address, pb.NodeInfoGcsServiceStub)
            await stub.report_resources(report, timeout=5)

    async def stop(self) -> None:
        self.stopping = self.view.stopping = self.pool.stopping = True
        await self.memory.stop()
        await self.event_flusher.close()
        self.nodes.stop()
        await self.pool.stop()
        await self.runtime_envs.stop()
        await self.logs.stop()
        self.metrics.close()
        self.objects.close()
        self.channels.close()
        self.store.destroy()
        self.spill.close()


async def serve(args: argparse.Namespace, token: str) -> None:
    raylet = Raylet(args, token)
    try:
        server, port = await rpc.start_server(raylet.services(), args.host, args.port, token, "raylet")
        raylet.address = f"{args.host}:{port}"
        raylet._register_metrics()
        await raylet.metrics.start(args.host, args.metrics_export_port)
        # Where only the RPC ports pass between machines, AIORAY_OBJECT_TRANSFER=grpc keeps the data
        # port closed and peers pull this node's objects over its gRPC stream (slower, ~0.3 GB/s).
        if os.environ.get("AIORAY_OBJECT_TRANSFER", "socket") != "grpc":
            await raylet.objects.data_port.start(args.host)
        await raylet.view.register(raylet.node_info)
    except BaseException:
        raylet.metrics.close()
        raylet.store.destroy()
        raylet.spill.close()
        raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, raylet.stopped.set)
    process.watch_lifeline(loop, raylet.stopped.set)
    raylet._spawn(raylet.view.follow(raylet.node_info))
    raylet.logs.start()
    raylet.pool.start(raylet.min_workers)
    raylet.memory.start()
    raylet.event_flusher.start()
    process.announce_ready(
        json.dumps(
            {
                "address": raylet.address,
                "node_id": raylet.node_id.hex(),
                "store_name": raylet.store_name,
                "metrics_export_port": raylet.metrics.server.port,
            }
        )
    )
    await raylet.stopped.wait()
    await raylet.stop()
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="aioray-raylet")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gcs-address", required=True)
    parser.add_argument("--resources", default="{}", help="JSON map, CPU and GPU included")
    parser.add_argument("--object-store-memory", type=int, required=True)
    parser.add_argument("--labels", default="{}", help="JSON map of the node's labels")
    parser.add_argument("--head", action="store_true")
    parser.add_argument(
        "--spill-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "aioray-session")
    )
    parser.add_argument("--prestart-workers", action="store_true")
    parser.add_argument(
        "--metrics-export-port", type=int, default=0, help="port of the node's /metrics (0: a free one)"
    )
    args = parser.parse_args()
    token = os.environ.get(process.TOKEN_ENV, "")
    process.install_uvloop()
    asyncio.run(serve(args, token))
