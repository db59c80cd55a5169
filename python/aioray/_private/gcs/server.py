"""The Global Control Service process: one per cluster, on the head node.

It serves one gRPC service per table (see `proto/aioray/v1/gcs.proto`): the
node table, jobs, actors, workers, the KV store (also the function table), the
object directory, the event log and pub/sub. The tables reach each other only
through the few callables wired here. Run as ``python -m aioray._private.gcs
--port N`` (the auth token comes from the environment).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from aioray._private.common import process, rpc
from aioray._private.gcs.actor_manager import ActorManager, WorkerTable
from aioray._private.gcs.events import EventLog
from aioray._private.gcs.jobs import JobTable
from aioray._private.gcs.kv import InternalKv
from aioray._private.gcs.node_table import NodeTable
from aioray._private.gcs.object_directory import ObjectDirectory
from aioray._private.gcs.pubsub import Publisher

log = process.setup_logging("gcs")


class Gcs:
    """The GCS's tables, wired together; each is one gRPC service."""

    def __init__(self, token: str) -> None:
        self.channels = rpc.ChannelPool(token)
        self.events = EventLog()
        self.pubsub = Publisher(lambda: self.nodes.view())
        self.actors = ActorManager(self.channels, lambda: self.nodes.nodes.values())
        self.nodes = NodeTable(
            self.channels,
            self.pubsub.publish_local,
            self.pubsub.has_subscribers,
            self.events.record,
            self.actors.on_node_death,
        )
        self.jobs = JobTable(self.actors.on_job_finished)
        self.workers = WorkerTable(self.actors.on_worker_death)
        self.kv = InternalKv()
        self.objects = ObjectDirectory()
        self.stopped = asyncio.Event()

    def services(self) -> list[object]:
        return [
            self.nodes,
            self.jobs,
            self.actors,
            self.workers,
            self.kv,
            self.objects,
            self.events,
            self.pubsub,
        ]

    def close(self) -> None:
        self.pubsub.close()
        self.nodes.close()
        self.channels.close()


async def serve(host: str, port: int, token: str) -> None:
    gcs = Gcs(token)
    server, bound = await rpc.start_server(gcs.services(), host, port, token)
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="aioray-gcs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    token = os.environ.get(process.TOKEN_ENV, "")
    process.install_uvloop()
    asyncio.run(serve(args.host, args.port, token))


__all__ = ["Gcs", "main"]
