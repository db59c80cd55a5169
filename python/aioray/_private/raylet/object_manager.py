"""The object manager (seed 000, protocols d, e and f): the node's store as other processes see it.

Workers of this node ask it to pull objects from other nodes (`FetchObject`),
to restore spilled objects, to spill under pressure, and to free primary
copies their owners released (the copies other nodes pulled are freed too,
found through the GCS object directory). Object managers of other nodes pull
this node's objects over the data port (`data_port`), or over the
`ReadObject` gRPC stream when the port is closed.

A pulled copy is sealed unpinned: a cached secondary copy that LRU eviction
may take back. Its location is recorded with the GCS. Concurrent pulls of one
object share one transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aioray._private.common import rpc
from aioray._private.common import task_events as te
from aioray._private.common.config import GCS_RECONNECT_TIMEOUT_S
from aioray._private.common.spill_files import map_spilled
from aioray._private.raylet import data_port
from aioray._private.raylet.cluster_view import ClusterView
from aioray._private.raylet.data_port import PULLED, PULLED_BYTES, SERVED, SERVED_BYTES
from aioray._private.raylet.spill import Spilled, SpillManager, create_off_loop
from aioray._proto.aioray import v1 as pb
from aioray._store import ObjectStore
from aioray.exceptions import ObjectStoreFullError

log = logging.getLogger("aioray.object_manager")
CHUNK = 4 << 20
TRANSFER_TIMEOUT_S = 600


class ObjectManager(pb.ObjectManagerBase):
    def __init__(
        self,
        node_id: bytes,
        store: ObjectStore,
        spill: SpillManager,
        view: ClusterView,
        channels: rpc.ChannelPool,
        gcs_address: str,
        token: str,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        store_changed: Callable[[], None],
        events: te.TaskEventBuffer | None = None,
    ) -> None:
        self.node_id = node_id
        self.events = events if events is not None else te.TaskEventBuffer(enabled=False)
        self.store = store
        self.spill = spill
        self.view = view
        self._channels = channels
        self._gcs_address = gcs_address
        self._token = token
        self._spawn = spawn
        self._store_changed = store_changed
        self.data_port = data_port.DataPortServer(token, self._readable, spawn)
        self._pulls: dict[bytes, asyncio.Future[None]] = {}
        self._new_locations: set[bytes] = set()  # copies pulled here, not yet told to the GCS
        self._publishing_locations = False

    def _directory(self) -> pb.ObjectDirectoryGcsServiceStub:
        return self._channels.gcs_stub(
            self._gcs_address, pb.ObjectDirectoryGcsServiceStub, GCS_RECONNECT_TIMEOUT_S
        )

    # -- freeing ---------------------------------------------------------------------------------
    async def free_objects(self, object_ids: pb.ObjectIds) -> pb.Empty:
        for oid in object_ids.ids:
            self._new_locations.discard(oid)
            with contextlib.suppress(KeyError):
                self.store.unpin(oid)
            self.store.delete(oid)
            self.spill.free(oid)
        self._store_changed()
        if object_ids.ids and len(self.view.nodes) > 1:
            self._spawn(self._free_copies(list(object_ids.ids)))
        return pb.Empty()

    async def _free_copies(self, oids: list[bytes]) -> None:
        """The owner freed these primary copies: free the copies other nodes pulled, too."""
        with contextlib.suppress(Exception):
            directory = self._directory()
            found = await directory.get_object_locations(pb.ObjectIds(ids=oids), timeout=10)
            by_node: dict[bytes, list[bytes]] = {}
            for loc in found.locations:
                for node_id in loc.node_ids:
                    if node_id != self.node_id:
                        by_node.setdefault(node_id, []).append(loc.object_id)
            addresses = self.view.raylet_addresses()
            for node_id, ids in by_node.items():
                if node_id in addresses:
                    peer = self._channels.stub(addresses[node_id], pb.ObjectManagerStub)
                    with contextlib.suppress(Exception):
                        await peer.free_objects(pb.ObjectIds(ids=ids), timeout=10)
                await directory.remove_object_locations(
                    pb.ObjectLocationUpdate(node_id=node_id, object_ids=ids)
                )

    # -- spilling --------------------------------------------------------------------------------
    async def spill_objects(self, spill_request: pb.SpillRequest) -> pb.SpillReply:
        if spill_request.nbytes == 0:
            await self.spill.maybe_spill()  # a creator saw the store pass the threshold
            freed = 0
        else:
            freed = await self.spill.spill(spill_request.nbytes)
        self._store_changed()
        return pb.SpillReply(freed=freed)

    async def restore_object(self, restore_request: pb.RestoreRequest) -> pb.RestoreReply:
        in_store, on_disk = await self.spill.restore(restore_request.object_id)
        self._store_changed()
        if in_store:
            return pb.RestoreReply(found=True, in_store=True)
        if on_disk is None:
            return pb.RestoreReply(found=False)
        return pb.RestoreReply(found=True, path=on_disk.path, offset=on_disk.offset, size=on_disk.size)

    async def register_spilled(self, spilled_object: pb.SpilledObject) -> pb.Empty:
        s = spilled_object
        self.spill.register(s.object_id, Spilled(s.path, s.offset, s.size))
        self._store_changed()
        return pb.Empty()

    # -- pulling from other nodes ----------------------------------------------------------------
    async def fetch_object(self, fetch_request: pb.FetchRequest) -> pb.FetchReply:
        req = fetch_request
        try:
            pulled = await self.fetch(req.object_id, req.source_address, req.size)
        except Exception as e:
            return pb.FetchReply(ok=False, message=f"{type(e).__name__}: {e}")
        if pulled and req.task_id:
            fields = {
                "object_id": req.object_id,
                "from_node_id": req.source_node_id or self.view.node_id_of(req.source_address),
                "to_node_id": self.node_id,
                "bytes": req.size,
            }
            self.events.record(req.task_id, req.attempt, te.ARGS_PULLED, fields)
        self._store_changed()
        return pb.FetchReply(ok=True)

    async def fetch(self, oid: bytes, source: str, size: int) -> bool:
        """Pulls `oid` from the raylet at `source` unless a copy is here already; True if this call
        started the transfer (others that wait for the same pull get False)."""
        if self.store.contains(oid):
            return False
        fut = self._pulls.get(oid)
        if fut is None:
            fut = self._pulls[oid] = asyncio.get_running_loop().create_future()
            try:
                await self._pull(oid, source, size)
                fut.set_result(None)
                return True
            except BaseException as e:
                fut.set_exception(e)
                raise
            finally:
                del self._pulls[oid]
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved by the waiters, if any
        await asyncio.shield(fut)
        return False

    async def _pull(self, oid: bytes, source: str, size: int) -> None:
        store = self.store
        data_address = self.view.data_address_of(source)
        if data_address is None:  # a node that joined after our last look at the cluster
            await self.view.refresh_now()
            data_address = self.view.data_address_of(source)
        sock = await data_port.connect(data_address) if data_address is not None else None
        try:
            try:
                buf = await create_off_loop(store, oid, size)
            except ObjectStoreFullError:
                await self.spill.spill(size)
                buf = await create_off_loop(store, oid, size)
            view = memoryview(buf)
            try:
                async with asyncio.timeout(TRANSFER_TIMEOUT_S):  # a peer that stalls mid-transfer
                    if sock is not None:
                        await data_port.receive(sock, self._token, oid, source, view)
                    else:
                        await self._receive_grpc(oid, source, view)
            except BaseException:
                view.release()
                buf.release()
                store.delete(oid)
                raise
        finally:
            if sock is not None:
                sock.close()
        view.release()
        store.seal(oid)
        buf.release()
        PULLED.inc()
        PULLED_BYTES.inc(size)
        self._note_location(oid)

    def _note_location(self, oid: bytes) -> None:
        """Tells the GCS's object directory of a new copy here, in the background and batched: the copy
        is readable now, even while the GCS is away (being restarted), and one update carries the
        copies of many pulls."""
        self._new_locations.add(oid)
        if not self._publishing_locations:
            self._publishing_locations = True
            self._spawn(self._publish_locations())

    async def _publish_locations(self) -> None:
        try:
            while self._new_locations:
                batch, self._new_locations = list(self._new_locations), set()
                with contextlib.suppress(Exception):
                    await self._directory().add_object_locations(
                        pb.ObjectLocationUpdate(node_id=self.node_id, object_ids=batch)
                    )
        finally:
            self._publishing_locations = False

    async def _receive_grpc(self, oid: bytes, source: str, view: memoryview) -> None:
        offset = 0
        stub = self._channels.stub(source, pb.ObjectManagerStub)
        async for chunk in stub.read_object(
            pb.ReadRequest(object_id=oid, chunk_size=CHUNK), timeout=TRANSFER_TIMEOUT_S
        ):
            n = len(chunk.data)
            if offset + n > len(view):
                raise ConnectionError(f"object {oid.hex()} arrived larger than {len(view)} bytes")
            view[offset : offset + n] = chunk.data
            offset += n
        if offset != len(view):
            raise ConnectionError(f"object {oid.hex()} arrived with {offset} of {len(view)} bytes")

    # -- serving this node's objects -------------------------------------------------------------
    async def _readable(self, oid: bytes) -> object | None:
        """A read buffer of one of this node's objects, restored or mapped from disk if it was spilled."""
        buf: object | None = self.store.get(oid)
        if buf is None:
            in_store, on_disk = await self.spill.restore(oid, spill_for_room=False)
            buf = self.store.get(oid) if in_store else None
            if buf is None and on_disk is not None:
                buf = map_spilled(on_disk.path, on_disk.offset, on_disk.size)
        return buf

    async def read_object(self, read_request: pb.ReadRequest) -> AsyncIterator[pb.Blob]:
        """Streams one of this node's objects over gRPC (restoring it from disk first if it was spilled)."""
        buf = await self._readable(read_request.object_id)
        if buf is None:
            raise rpc.GRPCError(
                rpc.Status.NOT_FOUND, f"object {read_request.object_id.hex()} is not on this node"
            )
        view = memoryview(buf)  # type: ignore[arg-type]
        try:
            chunk = read_request.chunk_size or CHUNK
            for start in range(0, len(view), chunk):
                yield pb.Blob(data=bytes(view[start : start + chunk]))
            SERVED.inc()
            SERVED_BYTES.inc(len(view))
        finally:
            view.release()
            data_port.release(buf)

    async def get_object_status(self, object_ids: pb.ObjectIds) -> pb.ObjectStatus:
        ids = list(object_ids.ids)
        return pb.ObjectStatus(
            in_store=[oid for oid in ids if self.store.contains(oid)],
            spilled=[oid for oid in ids if oid in self.spill.objects],
        )

    def close(self) -> None:
        self.data_port.close()
