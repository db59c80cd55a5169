"""The raylet: one per node. Owns the node's store segment, the worker pool and local scheduling.

Owners lease workers here for a resource shape (``RequestWorkerLease``); the
raylet grants one when the shape fits the node's free resources, starts more
workers when none is idle, answers INFEASIBLE when no node of the cluster could
ever fit the shape, and frees the resources when the lease is returned or the
worker dies. Run as ``python -m aioray._private.raylet`` (see `node.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aioray._private import process, rpc
from aioray._private.ids import random_id
from aioray._private.object_manager import ObjectManager
from aioray._private.pubsub import NODE_CHANNEL, RESOURCE_CHANNEL, VIEW_CHANNEL
from aioray._private.resources import ResourceSet
from aioray._private.spill import Spilled, SpillManager
from aioray._proto.aioray import v1 as pb
from aioray._store import ObjectStore

log = process.setup_logging("raylet")

WORKER_START_TIMEOUT_S = 60.0
REPORT_DELAY_S = 0.05
RESUBSCRIBE_S = 0.5


@dataclass(eq=False)
class WorkerProc:
    worker_id: bytes
    proc: asyncio.subprocess.Process
    address: str = ""
    registered: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    lease_id: bytes | None = None
    lifeline: int = -1  # write end of the worker's lifeline pipe
    killed: bool = False  # we killed it on purpose: its exit is no news


@dataclass(eq=False)
class Lease:
    lease_id: bytes
    worker: WorkerProc
    resources: ResourceSet
    owner: str
    blocked: bool = False


@dataclass(eq=False)
class LeaseWaiter:
    request: pb.LeaseRequest
    resources: ResourceSet
    future: asyncio.Future[pb.LeaseReply]


class Raylet(pb.RayletBase):
    def __init__(self, args: argparse.Namespace, token: str) -> None:
        self.node_id = random_id(16)
        self.host = args.host
        self.gcs_address = args.gcs_address
        self.token = token
        self.is_head = args.head
        self.total = ResourceSet(json.loads(args.resources))
        self.available = ResourceSet(json.loads(args.resources))
        # AIORAY_SESSION_TAG (optional) marks every segment of one test session or deployment.
        tag = os.environ.get("AIORAY_SESSION_TAG", "")
        self.store_name = f"aioray-{tag + '-' if tag else ''}{self.node_id.hex()[:16]}"
        self.store = ObjectStore.create(self.store_name, args.object_store_memory)
        self.objects = ObjectManager(self)
        self.spill = SpillManager(
            self.store, os.path.join(args.spill_dir, f"spill-{self.node_id.hex()[:16]}")
        )
        # Workers start on demand (a lease that finds none idle starts one), so an idle node is three
        # processes; --prestart-workers starts one per CPU at once for the first tasks' latency.
        self.min_workers = max(1, int(self.total.get("CPU"))) if args.prestart_workers else 0
        self.workers: dict[bytes, WorkerProc] = {}
        self.idle: collections.deque[WorkerProc] = collections.deque()
        self.starting = 0
        self.leases: dict[bytes, Lease] = {}
        self.waiting: list[LeaseWaiter] = []
        self.channels = rpc.ChannelPool(token)
        self.address = ""
        self.cluster_view: list[pb.NodeInfo] = []
        self.stopping = False
        self.stopped = asyncio.Event()
        self._report_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- node info and the GCS -------------------------------------------------------------------
    def node_info(self) -> pb.NodeInfo:
        stats = self.store.stats()
        return pb.NodeInfo(
            node_id=self.node_id,
            address=self.address,
            object_manager_address=f"{self.host}:{self.objects.port}" if self.objects.port else "",
            store_name=self.store_name,
            total=pb.ResourceMap(amounts=self.total.to_dict()),
            available=pb.ResourceMap(amounts=self.available.to_dict()),
            alive=True,
            is_head=self.is_head,
            start_time=time.time(),
            store_capacity=stats["capacity"],
            store_used=stats["used_bytes"],
            store_objects=stats["num_objects"],
            num_workers=len(self.workers),
            spill_dir=self.spill.dir,
            spilled_bytes=self.spill.spilled_bytes,
            restored_bytes=self.spill.restored_bytes,
            spilled_total=self.spill.spilled_total,
        )

    async def register_with_gcs(self) -> None:
        stub = self.channels.stub(self.gcs_address, pb.GcsStub)
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = await stub.register_node(self.node_info(), timeout=5)
                self.cluster_view = list(reply.view.nodes)
                return
            except rpc.CONNECTION_ERRORS:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def refresh_view_now(self) -> None:
        with contextlib.suppress(Exception):
            stub = self.channels.stub(self.gcs_address, pb.GcsStub)
            self.cluster_view = list((await stub.get_cluster_view(pb.Empty(), timeout=5)).nodes)

    async def follow_cluster(self) -> None:
        """Keeps `cluster_view` current from the GCS's node and resource channels (no polling)."""
        stub = self.channels.stub(self.gcs_address, pb.GcsStub)
        request = pb.SubscribeRequest(channels=[NODE_CHANNEL, RESOURCE_CHANNEL], with_cluster_view=True)
        while not self.stopping:
            with contextlib.suppress(*rpc.CONNECTION_ERRORS, rpc.GRPCError):
                async for msg in stub.subscribe(request):
                    self._apply_cluster_update(msg)
            if not self.stopping:  # the GCS went away: try again (it may come back)
                await asyncio.sleep(RESUBSCRIBE_S)

    def _apply_cluster_update(self, msg: pb.PubMessage) -> None:
        if msg.channel == VIEW_CHANNEL:
            self.cluster_view = list(pb.ClusterView().parse(msg.data).nodes)
        elif msg.channel == NODE_CHANNEL:
            node = pb.NodeInfo().parse(msg.data)
            others = [n for n in self.cluster_view if n.node_id != node.node_id]
            self.cluster_view = [*others, node]
        elif msg.channel == RESOURCE_CHANNEL:
            report = pb.ResourceReport().parse(msg.data)
            for n in self.cluster_view:
                if n.node_id == report.node_id:
                    n.available = report.available
                    n.store_used = report.store_used
                    n.store_objects = report.store_objects
                    n.num_workers = report.num_workers

    def schedule_report(self) -> None:
        if not self._report_scheduled and not self.stopping:
            self._report_scheduled = True
            asyncio.get_running_loop().call_later(REPORT_DELAY_S, lambda: self._spawn(self._report()))

    async def _report(self) -> None:
        self._report_scheduled = False
        stats = self.store.stats()
        report = pb.ResourceReport(
            node_id=self.node_id,
            available=pb.ResourceMap(amounts=self.available.to_dict()),
            store_used=stats["used_bytes"],
            store_objects=stats["num_objects"],
            num_workers=len(self.workers),
            spilled_bytes=self.spill.spilled_bytes,
            restored_bytes=self.spill.restored_bytes,
            spilled_total=self.spill.spilled_total,
        )
        with contextlib.suppress(Exception):
            await self.channels.stub(self.gcs_address, pb.GcsStub).report_resources(report, timeout=5)

    # -- worker pool -----------------------------------------------------------------------------
    def start_workers(self, count: int) -> None:
        """Starts `count` workers in the background; counted as starting at once, so that the
        dispatches that run before they register do not start more for the same demand."""
        self.starting += count
        for _ in range(count):
            self._spawn(self._start_worker())

    async def _start_worker(self) -> None:
        worker_id = random_id(16)
        env = dict(os.environ)
        env.update(
            {
                process.TOKEN_ENV: self.token,
                "AIORAY_RAYLET_ADDRESS": self.address,
                "AIORAY_GCS_ADDRESS": self.gcs_address,
                "AIORAY_NODE_ID": self.node_id.hex(),
                "AIORAY_STORE_NAME": self.store_name,
                "AIORAY_WORKER_ID": worker_id.hex(),
            }
        )
        life_r, life_w = os.pipe()
        env[process.LIFELINE_FD_ENV] = str(life_r)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "aioray._private.worker_main",
                env=env,
                pass_fds=[life_r],
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            self.starting -= 1
            os.close(life_w)
            raise
        finally:
            os.close(life_r)
        worker = WorkerProc(worker_id, proc, lifeline=life_w)
        self.workers[worker_id] = worker
        self._spawn(self._watch_worker(worker))
        try:
            await asyncio.wait_for(asyncio.shield(worker.registered), WORKER_START_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        except RuntimeError as e:  # it died before registering; _watch_worker cleaned up
            if not self.stopping:
                log.warning("%s", e)
        finally:
            self.starting -= 1

    async def _watch_worker(self, worker: WorkerProc) -> None:
        code = await worker.proc.wait()
        with contextlib.suppress(OSError):
            os.close(worker.lifeline)
        # Views of store objects it still held would keep them from being freed or evicted.
        with contextlib.suppress(Exception):
            self.store.reap_dead_clients()
        self.workers.pop(worker.worker_id, None)
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)
        if not worker.registered.done():
            worker.registered.set_exception(
                RuntimeError(f"worker exited with code {code} before registering")
            )
            worker.registered.exception()  # retrieved: a start failure is logged, not raised
        if worker.lease_id is not None:
            lease = self.leases.pop(worker.lease_id, None)
            if lease is not None:
                self._release(lease)
        if worker.address:
            # Leases that the dead worker held as an owner will never be returned.
            for lease in [ls for ls in self.leases.values() if ls.owner == worker.address]:
                self._return(lease, failed=False)
        if not self.stopping:
            if worker.address:
                death = pb.WorkerDeath(
                    node_id=self.node_id,
                    worker_id=worker.worker_id,
                    address=worker.address,
                    exit_code=code or 0,
                )
                self._spawn(self._report_death(death))
            if code not in (0, None) and not worker.killed:
                log.warning(
                    "worker %s (pid %d) exited with code %s",
                    worker.worker_id.hex()[:8],
                    worker.proc.pid,
                    code,
                )
            self._dispatch()
            self.schedule_report()

    async def _report_death(self, death: pb.WorkerDeath) -> None:
        with contextlib.suppress(Exception):
            await self.channels.stub(self.gcs_address, pb.GcsStub).report_worker_death(death, timeout=10)

    async def register_worker(
        self, register_worker_request: pb.RegisterWorkerRequest
    ) -> pb.RegisterWorkerReply:
        worker = self.workers.get(register_worker_request.worker_id)
        if worker is None or worker.registered.done():
            raise rpc.GRPCError(rpc.Status.FAILED_PRECONDITION, "unknown worker")
        worker.address = register_worker_request.address
        worker.registered.set_result(None)
        self.idle.append(worker)
        self._dispatch()
        return pb.RegisterWorkerReply(node=self.node_info(), gcs_address=self.gcs_address)

    # -- leases ----------------------------------------------------------------------------------
    def _feasible_somewhere(self, shape: ResourceSet) -> bool:
        if shape.fits_in(self.total):
            return True
        return any(
            node.alive and shape.fits_in(ResourceSet.from_wire(node.total.amounts))
            for node in self.cluster_view
            if node.node_id != self.node_id
        )

    async def request_worker_lease(self, lease_request: pb.LeaseRequest) -> pb.LeaseReply:
        if self.stopping:
            return pb.LeaseReply(status=pb.LeaseReplyStatus.REJECTED, message="the raylet is shutting down")
        shape = ResourceSet(lease_request.resources.amounts)
        if not self._feasible_somewhere(shape):
            # The view may predate a node that just joined: look again before saying no.
            await self.refresh_view_now()
        if not self._feasible_somewhere(shape):
            return pb.LeaseReply(
                status=pb.LeaseReplyStatus.INFEASIBLE,
                message=f"no node of the cluster has {shape.to_dict()} (this node has {self.total.to_dict()})",
            )
        if not lease_request.no_spillback and not shape.fits_in(self.available):
            # Full here: spill back to a node with the shape free right now, if there is one.
            free = [
                n
                for n in self.cluster_view
                if n.alive
                and n.node_id != self.node_id
                and shape.fits_in(ResourceSet.from_wire(n.available.amounts))
            ]
            if free:
                return pb.LeaseReply(status=pb.LeaseReplyStatus.SPILLBACK, retry_address=free[0].address)
        if not shape.fits_in(self.total):
            able = [
                n
                for n in self.cluster_view
                if n.alive
                and n.node_id != self.node_id
                and shape.fits_in(ResourceSet.from_wire(n.total.amounts))
            ]
            # Nodes with the shape free right now first.
            able.sort(key=lambda n: not shape.fits_in(ResourceSet.from_wire(n.available.amounts)))
            target = able[0]
            return pb.LeaseReply(status=pb.LeaseReplyStatus.SPILLBACK, retry_address=target.address)
        waiter = LeaseWaiter(lease_request, shape, asyncio.get_running_loop().create_future())
        self.waiting.append(waiter)
        self._dispatch()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            # The owner gave up (its call was cancelled): hand a granted lease back.
            if waiter in self.waiting:
                self.waiting.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                lease = self.leases.get(waiter.future.result().lease_id)
                if lease is not None:
                    self._return(lease, failed=False)
            raise

    def _dispatch(self) -> None:
        if self.stopping:
            return
        still_waiting = []
        wanted_workers = 0
        # Waiters that will get the next started workers hold their resources in this budget, so
        # one free CPU starts one worker however many requests are queued for it.
        budget = self.available
        for waiter in self.waiting:
            if waiter.future.done():
                continue
            if not waiter.resources.fits_in(budget):
                still_waiting.append(waiter)
                continue
            budget = budget - waiter.resources
            if not self.idle:
                still_waiting.append(waiter)
                wanted_workers += 1
                continue
            worker = self.idle.popleft()
            lease = Lease(random_id(16), worker, waiter.resources, waiter.request.owner_address)
            worker.lease_id = lease.lease_id
            self.leases[lease.lease_id] = lease
            self.available = self.available - waiter.resources
            waiter.future.set_result(
                pb.LeaseReply(
                    status=pb.LeaseReplyStatus.GRANTED,
                    lease_id=lease.lease_id,
                    worker_id=worker.worker_id,
                    worker_address=worker.address,
                    node_id=self.node_id,
                )
            )
        self.waiting = still_waiting
        self.start_workers(max(0, wanted_workers - self.starting))
        self.schedule_report()

    def _release(self, lease: Lease) -> None:
        if not lease.blocked:
            self.available = self.available + lease.resources
        lease.worker.lease_id = None

    def _return(self, lease: Lease, failed: bool) -> None:
        self.leases.pop(lease.lease_id, None)
        self._release(lease)
        worker = lease.worker
        if failed or worker.proc.returncode is not None:
            worker.killed = True
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
        elif worker.worker_id in self.workers:
            self.idle.append(worker)
        self._dispatch()

    async def return_worker_lease(self, return_lease_request: pb.ReturnLeaseRequest) -> pb.Empty:
        lease = self.leases.get(return_lease_request.lease_id)
        if lease is not None:
            self._return(lease, return_lease_request.worker_failed)
        return pb.Empty()

    async def notify_blocked(self, blocked_request: pb.BlockedRequest) -> pb.Empty:
        """A leased worker blocked in `get` lends its resources back, so nested tasks can run."""
        lease = self.leases.get(blocked_request.lease_id)
        if lease is not None and lease.blocked != blocked_request.blocked:
            lease.blocked = blocked_request.blocked
            if lease.blocked:
                self.available = self.available + lease.resources
                self._dispatch()
            else:
                self.available = self.available - lease.resources
                self.schedule_report()
        return pb.Empty()

    # -- objects and admin -----------------------------------------------------------------------
    async def free_objects(self, object_ids: pb.ObjectIds) -> pb.Empty:
        for oid in object_ids.ids:
            with contextlib.suppress(KeyError):
                self.store.unpin(oid)
            self.store.delete(oid)
            self.spill.free(oid)
        self.schedule_report()
        if object_ids.ids and self.cluster_view and len(self.cluster_view) > 1:
            self._spawn(self._free_copies(list(object_ids.ids)))
        return pb.Empty()

    async def _free_copies(self, oids: list[bytes]) -> None:
        """The owner freed these primary copies: free the copies other nodes pulled, too."""
        with contextlib.suppress(Exception):
            gcs = self.channels.stub(self.gcs_address, pb.GcsStub)
            found = await gcs.get_object_locations(pb.ObjectIds(ids=oids), timeout=10)
            by_node: dict[bytes, list[bytes]] = {}
            for loc in found.locations:
                for node_id in loc.node_ids:
                    if node_id != self.node_id:
                        by_node.setdefault(node_id, []).append(loc.object_id)
            addresses = {n.node_id: n.address for n in self.cluster_view if n.alive}
            for node_id, ids in by_node.items():
                if node_id in addresses:
                    raylet = self.channels.stub(addresses[node_id], pb.RayletStub)
                    with contextlib.suppress(Exception):
                        await raylet.free_objects(pb.ObjectIds(ids=ids), timeout=10)
                await gcs.remove_object_locations(pb.ObjectLocationUpdate(node_id=node_id, object_ids=ids))

    async def spill_objects(self, spill_request: pb.SpillRequest) -> pb.SpillReply:
        if spill_request.nbytes == 0:
            await self.spill.maybe_spill()  # a creator saw the store pass the threshold
            freed = 0
        else:
            freed = await self.spill.spill(spill_request.nbytes)
        self.schedule_report()
        return pb.SpillReply(freed=freed)

    async def restore_object(self, restore_request: pb.RestoreRequest) -> pb.RestoreReply:
        in_store, on_disk = await self.spill.restore(restore_request.object_id)
        self.schedule_report()
        if in_store:
            return pb.RestoreReply(found=True, in_store=True)
        if on_disk is None:
            return pb.RestoreReply(found=False)
        return pb.RestoreReply(found=True, path=on_disk.path, offset=on_disk.offset, size=on_disk.size)

    def data_address_of(self, raylet_address: str) -> tuple[str, int] | None:
        """The object-manager (data) address of the node whose raylet serves at `raylet_address`."""
        for node in self.cluster_view:
            if node.address == raylet_address and node.alive and node.object_manager_address:
                return rpc.split_address(node.object_manager_address)
        return None

    async def fetch_object(self, fetch_request: pb.FetchRequest) -> pb.FetchReply:
        req = fetch_request
        try:
            await self.objects.fetch(req.object_id, req.source_address, req.size)
        except Exception as e:
            return pb.FetchReply(ok=False, message=f"{type(e).__name__}: {e}")
        self.schedule_report()
        return pb.FetchReply(ok=True)

    async def read_object(self, read_request: pb.ReadRequest) -> AsyncIterator[pb.Blob]:
        try:
            async for chunk in self.objects.read(read_request.object_id, read_request.chunk_size):
                yield chunk
        except LookupError as e:
            raise rpc.GRPCError(rpc.Status.NOT_FOUND, str(e)) from None

    async def register_spilled(self, spilled_object: pb.SpilledObject) -> pb.Empty:
        s = spilled_object
        self.spill.register(s.object_id, Spilled(s.path, s.offset, s.size))
        self.schedule_report()
        return pb.Empty()

    async def get_node_info(self, empty: pb.Empty) -> pb.NodeInfo:
        return self.node_info()

    async def shutdown(self, empty: pb.Empty) -> pb.Empty:
        asyncio.get_running_loop().call_soon(self.stopped.set)
        return pb.Empty()

    async def stop(self) -> None:
        self.stopping = True
        for waiter in self.waiting:
            if not waiter.future.done():
                waiter.future.set_result(
                    pb.LeaseReply(status=pb.LeaseReplyStatus.REJECTED, message="the raylet is shutting down")
                )
        procs = [w.proc for w in self.workers.values()]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 3)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        await asyncio.gather(*(p.wait() for p in procs), return_exceptions=True)
        self.objects.close()
        self.channels.close()
        self.store.destroy()
        self.spill.close()


async def serve(args: argparse.Namespace, token: str) -> None:
    raylet = Raylet(args, token)
    try:
        server, port = await rpc.start_server([raylet], args.host, args.port, token)
        raylet.address = f"{args.host}:{port}"
        # Where only the RPC ports pass between machines, AIORAY_OBJECT_TRANSFER=grpc keeps the data
        # port closed and peers pull this node's objects over its gRPC stream (slower, ~0.3 GB/s).
        if os.environ.get("AIORAY_OBJECT_TRANSFER", "socket") != "grpc":
            await raylet.objects.start(args.host)
        await raylet.register_with_gcs()
    except BaseException:
        raylet.store.destroy()
        raylet.spill.close()
        raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, raylet.stopped.set)
    process.watch_lifeline(loop, raylet.stopped.set)
    raylet._spawn(raylet.follow_cluster())
    raylet.start_workers(raylet.min_workers)
    process.announce_ready(
        json.dumps(
            {"address": raylet.address, "node_id": raylet.node_id.hex(), "store_name": raylet.store_name}
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
    parser.add_argument("--head", action="store_true")
    parser.add_argument(
        "--spill-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "aioray-session")
    )
    parser.add_argument("--prestart-workers", action="store_true")
    args = parser.parse_args()
    token = os.environ.get(process.TOKEN_ENV, "")
    process.install_uvloop()
    asyncio.run(serve(args, token))


if __name__ == "__main__":
    main()
