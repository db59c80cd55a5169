"""The Global Control Service: node, job, function (KV), object-location and event tables, plus pub/sub.

Run as a process: ``python -m aioray._private.gcs --port N`` (the auth token
comes from the environment). One per cluster, on the head node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

from aioray._private import process, rpc
from aioray._private.gcs_actors import ActorManager
from aioray._private.pubsub import NODE_CHANNEL, RESOURCE_CHANNEL, VIEW_CHANNEL
from aioray._proto.aioray import v1 as pb

log = process.setup_logging("gcs")

HEALTH_CHECK_PERIOD_S = 1.0
HEALTH_CHECK_TIMEOUT_S = 3.0  # a raylet starved of CPU for a moment is not dead
HEALTH_CHECK_FAILURES = 3


class GcsService(pb.GcsBase):
    def __init__(self, token: str) -> None:
        self.nodes: dict[bytes, pb.NodeInfo] = {}
        self.kv: dict[str, bytes] = {}
        self.object_locations: dict[bytes, set[bytes]] = {}
        self.events: list[pb.Event] = []
        self.jobs: dict[bytes, pb.RegisterJobRequest] = {}
        self._job_counter = 0
        self._subscribers: dict[str, set[asyncio.Queue[pb.PubMessage | None]]] = {}
        self._channels = rpc.ChannelPool(token)
        self.actors = ActorManager(self, self._channels)
        self._health_task: asyncio.Task[None] | None = None
        self.stopped = asyncio.Event()

    # -- nodes ---------------------------------------------------------------------------------
    async def register_node(self, node_info: pb.NodeInfo) -> pb.RegisterNodeReply:
        node_info.alive = True
        node_info.start_time = node_info.start_time or time.time()
        self.nodes[node_info.node_id] = node_info
        self._event("gcs", "INFO", f"node {node_info.node_id.hex()[:12]} joined at {node_info.address}")
        self._publish(NODE_CHANNEL, bytes(node_info))
        if self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self._health_check())
        return pb.RegisterNodeReply(view=self._view())

    async def report_resources(self, resource_report: pb.ResourceReport) -> pb.Empty:
        node = self.nodes.get(resource_report.node_id)
        if node is not None and node.alive:
            node.available = resource_report.available
            node.store_used = resource_report.store_used
            node.store_objects = resource_report.store_objects
            node.num_workers = resource_report.num_workers
            node.spilled_bytes = resource_report.spilled_bytes
            node.restored_bytes = resource_report.restored_bytes
            node.spilled_total = resource_report.spilled_total
            if self._subscribers.get(RESOURCE_CHANNEL):
                self._publish(RESOURCE_CHANNEL, bytes(resource_report))
        return pb.Empty()

    def _view(self) -> pb.ClusterView:
        return pb.ClusterView(nodes=list(self.nodes.values()))

    async def get_cluster_view(self, empty: pb.Empty) -> pb.ClusterView:
        return self._view()

    async def _health_check(self) -> None:
        """Declares a raylet dead after several failed pings in a row."""
        failures: dict[bytes, int] = {}
        while True:
            await asyncio.sleep(HEALTH_CHECK_PERIOD_S)
            for node in list(self.nodes.values()):
                if not node.alive:
                    continue
                stub = self._channels.stub(node.address, pb.RayletStub)
                try:
                    await stub.get_node_info(pb.Empty(), timeout=HEALTH_CHECK_TIMEOUT_S)
                    failures.pop(node.node_id, None)
                except Exception:
                    failures[node.node_id] = failures.get(node.node_id, 0) + 1
                    if failures[node.node_id] >= HEALTH_CHECK_FAILURES:
                        node.alive = False
                        self._channels.drop(node.address)
                        self.actors.on_node_death(node.node_id)
                        self._event("gcs", "ERROR", f"node {node.node_id.hex()[:12]} is dead (no answer)")
                        self._publish(NODE_CHANNEL, bytes(node))

    # -- jobs ----------------------------------------------------------------------------------
    async def register_job(self, register_job_request: pb.RegisterJobRequest) -> pb.RegisterJobReply:
        self._job_counter += 1
        job_id = self._job_counter.to_bytes(4, "little")
        self.jobs[job_id] = register_job_request
        return pb.RegisterJobReply(job_id=job_id)

    async def mark_job_finished(self, job_id: pb.JobId) -> pb.Empty:
        job = self.jobs.pop(job_id.job_id, None)
        if job is not None and job.driver_address:
            self.actors.on_job_finished(job.driver_address)
        return pb.Empty()

    # -- actors --------------------------------------------------------------------------------
    async def create_actor(self, create_actor_request: pb.CreateActorRequest) -> pb.ActorInfo:
        return await self.actors.create(create_actor_request)

    async def get_actor_info(self, get_actor_info_request: pb.GetActorInfoRequest) -> pb.ActorInfo:
        return await self.actors.get_info(get_actor_info_request)

    async def get_named_actor(self, named_actor_request: pb.NamedActorRequest) -> pb.ActorInfo:
        return self.actors.named_actor(named_actor_request)

    async def kill_actor(self, kill_actor_request: pb.KillActorRequest) -> pb.Empty:
        actor = self.actors.actors.get(kill_actor_request.actor_id)
        if actor is not None and not (kill_actor_request.only_if_not_detached and actor.info.detached):
            stop = self.actors.kill(actor, "it was killed", no_restart=kill_actor_request.no_restart)
            if stop is not None:
                await stop  # the worker is gone when the caller hears back
        return pb.Empty()

    async def list_actors(self, empty: pb.Empty) -> pb.ActorList:
        return pb.ActorList(actors=[a.info for a in self.actors.actors.values()])

    async def report_worker_death(self, worker_death: pb.WorkerDeath) -> pb.Empty:
        self.actors.on_worker_death(worker_death)
        return pb.Empty()

    # -- KV (also the function table: key "fn:<id>") -----------------------------------------------
    async def kv_put(self, kv_put_request: pb.KvPutRequest) -> pb.KvPutReply:
        key = kv_put_request.key
        if key in self.kv and not kv_put_request.overwrite:
            return pb.KvPutReply(added=False)
        self.kv[key] = kv_put_request.value
        return pb.KvPutReply(added=True)

    async def kv_get(self, kv_key: pb.KvKey) -> pb.KvGetReply:
        value = self.kv.get(kv_key.key)
        return pb.KvGetReply(found=value is not None, value=value or b"")

    async def kv_del(self, kv_key: pb.KvKey) -> pb.KvDelReply:
        return pb.KvDelReply(deleted=self.kv.pop(kv_key.key, None) is not None)

    async def kv_keys(self, kv_key: pb.KvKey) -> pb.KvKeysReply:
        return pb.KvKeysReply(keys=[k for k in self.kv if k.startswith(kv_key.key)])

    # -- object locations ----------------------------------------------------------------------
    async def add_object_locations(self, object_location_update: pb.ObjectLocationUpdate) -> pb.Empty:
        node = object_location_update.node_id
        for oid in object_location_update.object_ids:
            self.object_locations.setdefault(oid, set()).add(node)
        return pb.Empty()

    async def remove_object_locations(self, object_location_update: pb.ObjectLocationUpdate) -> pb.Empty:
        node = object_location_update.node_id
        for oid in object_location_update.object_ids:
            nodes = self.object_locations.get(oid)
            if nodes is not None:
                nodes.discard(node)
                if not nodes:
                    del self.object_locations[oid]
        return pb.Empty()

    async def get_object_locations(self, object_ids: pb.ObjectIds) -> pb.ObjectLocations:
        return pb.ObjectLocations(
            locations=[
                pb.ObjectLocation(object_id=oid, node_ids=sorted(self.object_locations.get(oid, ())))
                for oid in object_ids.ids
            ]
        )

    # -- events and pub/sub --------------------------------------------------------------------
    def _event(self, source: str, severity: str, message: str) -> None:
        self.events.append(pb.Event(time=time.time(), source=source, severity=severity, message=message))
        del self.events[:-10000]
        log.info("%s", message)

    async def add_event(self, event: pb.Event) -> pb.Empty:
        self.events.append(event)
        del self.events[:-10000]
        return pb.Empty()

    async def get_events(self, empty: pb.Empty) -> pb.EventList:
        return pb.EventList(events=list(self.events))

    def _publish(self, channel: str, data: bytes) -> None:
        for q in self._subscribers.get(channel, ()):
            q.put_nowait(pb.PubMessage(channel=channel, data=data))

    async def publish(self, pub_message: pb.PubMessage) -> pb.Empty:
        self._publish(pub_message.channel, pub_message.data)
        return pb.Empty()

    async def subscribe(self, subscribe_request: pb.SubscribeRequest) -> AsyncIterator[pb.PubMessage]:
        q: asyncio.Queue[pb.PubMessage | None] = asyncio.Queue()
        if subscribe_request.with_cluster_view:  # queued before any update, in the same loop step
            q.put_nowait(pb.PubMessage(channel=VIEW_CHANNEL, data=bytes(self._view())))
        for ch in subscribe_request.channels:
            self._subscribers.setdefault(ch, set()).add(q)
        try:
            while (msg := await q.get()) is not None:
                yield msg
        finally:
            for ch in subscribe_request.channels:
                self._subscribers.get(ch, set()).discard(q)

    def close(self) -> None:
        for subs in self._subscribers.values():
            for q in subs:
                q.put_nowait(None)
        if self._health_task is not None:
            self._health_task.cancel()
        self._channels.close()


async def serve(host: str, port: int, token: str) -> None:
    service = GcsService(token)
    server, bound = await rpc.start_server([service], host, port, token)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stopped.set)
    process.watch_lifeline(loop, service.stopped.set)
    process.announce_ready(str(bound))
    await service.stopped.wait()
    service.close()
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


if __name__ == "__main__":
    main()
