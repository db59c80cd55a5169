"""The Global Control Service process: one per cluster, on the head node.

It serves one gRPC service per table (see `proto/aioray/v1/gcs.proto`): the
node table, jobs, actors, workers, the KV store (also the function table), the
object directory, the event log, the task table and pub/sub. The tables reach each other only
through the few callables wired here. Run as ``python -m aioray._private.gcs
--port N [--storage URL]`` (the auth token comes from the environment).

With a durable ``--storage`` (see `storage`), the tables are stored as they
change and a GCS restarted on the same port reloads them before it serves:
raylets re-register, and actors, jobs, names and functions are all still there.
The event log, the task table and pub/sub subscriptions are not kept. Placement groups are kept too, and the
raylets' bundles are reconciled with them (see `placement_groups`).

On the head it also keeps the Prometheus service discovery file of the nodes' ``/metrics``
endpoints (``--metrics-sd-file``, `service_discovery`), and serves its own metrics to the head's
raylet (``MetricsSource``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import signal
import sys

from aioray._private.common import metrics, process, rpc
from aioray._private.common.pubsub import NODE_CHANNEL, WORKER_DEATH_CHANNEL
from aioray._private.gcs.actor_manager import ActorManager, WorkerTable
from aioray._private.gcs.events import EventLog
from aioray._private.gcs.jobs import JobTable
from aioray._private.gcs.kv import InternalKv
from aioray._private.gcs.node_table import NodeTable
from aioray._private.gcs.object_directory import ObjectDirectory
from aioray._private.gcs.placement_groups import PlacementGroupManager
from aioray._private.gcs.pubsub import Publisher
from aioray._private.gcs.service_discovery import ServiceDiscoveryFile
from aioray._private.gcs.storage import MemoryStorage, StorageError, Tables, open_storage
from aioray._private.gcs.task_table import TaskTable
from aioray._proto.aioray import v1 as pb

log = process.setup_logging("gcs")


class Gcs:
    """The GCS's tables, wired together; each is one gRPC service."""

    def __init__(self, token: str, tables: Tables | None = None, sd_file: str | None = None) -> None:
        """`sd_file`: where to keep the Prometheus service discovery file (None: nowhere)."""
        self.tables = tables if tables is not None else Tables()
        self.service_discovery = ServiceDiscoveryFile(sd_file) if sd_file else None
        self.channels = rpc.ChannelPool(token)
        self.events = EventLog()
        self.pubsub = Publisher(lambda: self.nodes.view())
        self.actors = ActorManager(self.channels, lambda: self.nodes.nodes.values(), self.tables)
        self.placement_groups = PlacementGroupManager(
            self.channels,
            lambda: self.nodes.nodes.values(),
            lambda info: self.nodes.update_resources(info),
            self.tables,
        )
        # Actors in a placement group wait for it to be placed before they lease a worker.
        self.actors.wait_for_placement = self.placement_groups.wait_for_shape
        self.nodes = NodeTable(
            self.channels,
            self._publish,
            self.pubsub.has_subscribers,
            self.events.record,
            self._on_node_death,
            self.tables,
        )
        self.nodes.on_resources = self.placement_groups.kick
        self.jobs = JobTable(
            self._on_job_finished,
            self.tables,
            self.placement_groups.on_job_finished,
            kv=lambda: self.kv.kv,
        )
        self.workers = WorkerTable(self._on_worker_death, self.tables)
        self.kv = InternalKv(self.tables)
        self.objects = ObjectDirectory(self.tables)
        self.tasks = TaskTable()
        self.stopped = asyncio.Event()
        self._register_metrics()

    def _publish(self, channel: str, data: bytes) -> None:
        self.pubsub.publish_local(channel, data)
        if channel == NODE_CHANNEL and self.service_discovery is not None:
            self.service_discovery.update(self.nodes.nodes.values())

    def _register_metrics(self) -> None:
        reg = metrics.REGISTRY

        def nodes() -> dict[tuple[str, ...], float]:
            alive = sum(1 for n in self.nodes.nodes.values() if n.alive)
            return {("alive",): alive, ("dead",): len(self.nodes.nodes) - alive}

        def actors() -> dict[tuple[str, ...], float]:
            counts = collections.Counter(
                pb.ActorInfoState(a.info.state).name for a in self.actors.actors.values()
            )
            return {(state,): float(counts[state]) for state in ("PENDING", "ALIVE", "RESTARTING", "DEAD")}

        reg.gauge(
            "aioray_cluster_nodes", "Nodes of the cluster by state (from the GCS)", ("state",), collect=nodes
        )
        reg.gauge("aioray_actors", "Actors by state (from the GCS)", ("state",), collect=actors)
        reg.gauge(
            "aioray_jobs_running", "Drivers connected to the cluster", collect=lambda: len(self.jobs.jobs)
        )

    def _on_worker_death(self, death: pb.WorkerDeath) -> None:
        # Every raylet releases what the dead process leased there (raylets see only their own
        # workers exit); the actors it owned die below, which ends their leases. Kept for raylets
        # that subscribe later (their stream broke); a death heard twice changes nothing.
        self.pubsub.publish_local(WORKER_DEATH_CHANNEL, bytes(death), keep=bool(death.worker_id))
        self.actors.on_worker_death(death)
        self.jobs.on_driver_death(death.address)

    def _on_job_finished(self, driver_address: str) -> None:
        self.actors.on_job_finished(driver_address)
        # A driver of a submitted job whose entrypoint died is marked finished by the job manager:
        # what it still leases is released as for a driver whose raylet saw it die.
        self.pubsub.publish_local(WORKER_DEATH_CHANNEL, bytes(pb.WorkerDeath(address=driver_address)))

    def _on_node_death(self, node_id: bytes) -> None:
        self.placement_groups.on_node_death(node_id)  # first: restarted actors wait for their bundles
        self.actors.on_node_death(node_id)
        self.jobs.on_node_death(node_id)

    async def recover(self) -> None:
        """Loads every stored table (nodes first: rescheduled actors and placement groups need them)."""
        nodes = await self.nodes.recover()
        groups = await self.placement_groups.recover()
        actors = await self.actors.recover()
        jobs = await self.jobs.recover()
        keys = await self.kv.recover()
        objects = await self.objects.recover()
        if self.service_discovery is not None:
            self.service_discovery.update(self.nodes.nodes.values())
        if nodes or actors or jobs or keys or objects or groups:
            self.events.record(
                "gcs",
                "INFO",
                f"the GCS recovered from {self.tables.storage.description}: {nodes} live node(s), "
                f"{actors} live actor(s), {jobs} job(s), {keys} KV key(s), {objects} object location(s), "
                f"{groups} placement group(s)",
            )

    def services(self) -> list[object]:
        return [
            self.nodes,
            self.jobs,
            self.actors,
            self.placement_groups,
            self.workers,
            self.kv,
            self.objects,
            self.events,
            self.tasks,
            self.pubsub,
            metrics.MetricsSource(),
        ]

    def close(self) -> None:
        if self.service_discovery is not None:
            self.service_discovery.remove()
        self.pubsub.close()
        self.nodes.close()
        self.placement_groups.close()
        for actor in self.actors.actors.values():
            if actor.task is not None:
                actor.task.cancel()
        self.channels.close()


async def serve(
    host: str,
    port: int,
    token: str,
    storage_url: str | None = None,
    namespace: str | None = None,
    sd_file: str | None = None,
) -> int:
    """Serves until stopped; returns the exit code (1 if the storage failed)."""
    storage = await open_storage(storage_url, namespace or (f"gcs-{port}" if port else None))
    failure: list[BaseException] = []
    gcs: Gcs | None = None

    def on_storage_failure(error: BaseException) -> None:
        failure.append(error)
        if gcs is not None:
            gcs.stopped.set()

    tables = Tables(storage, on_fatal=on_storage_failure, unread=isinstance(storage, MemoryStorage))
    gcs = Gcs(token, tables, sd_file)
    try:
        try:
            await gcs.recover()
        except Exception as e:
            raise StorageError(f"cannot load the GCS tables from {storage.description}: {e}") from e
        server, bound = await rpc.start_server(gcs.services(), host, port, token, "gcs")
    except BaseException:
        gcs.close()
        await tables.close()
        raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gcs.stopped.set)
    process.watch_lifeline(loop, gcs.stopped.set)
    process.announce_ready(str(bound))
    await gcs.stopped.wait()
    gcs.close()
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2)
    await tables.close()
    if failure:
        log.error("the GCS stops: its storage %s failed: %s", storage.description, failure[0])
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="aioray-gcs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--storage",
        default=None,
        help="where the tables are kept across GCS restarts: memory:// (the default), "
        "sqlite:///ABS/PATH.sqlite3 or redis://HOST:PORT[/DB]; ?namespace=NAME keeps clusters apart",
    )
    parser.add_argument(
        "--storage-namespace",
        default=None,
        help="the cluster's namespace in the storage (default: gcs-<port>)",
    )
    parser.add_argument(
        "--metrics-sd-file",
        default=None,
        help="keep a Prometheus file-based service discovery file of the nodes' /metrics endpoints here",
    )
    args = parser.parse_args()
    token = os.environ.get(process.TOKEN_ENV, "")
    process.install_uvloop()
    try:
        code = asyncio.run(
            serve(args.host, args.port, token, args.storage, args.storage_namespace, args.metrics_sd_file)
        )
    except StorageError as e:
        print(f"aioray gcs: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(code)


__all__ = ["Gcs", "main"]
