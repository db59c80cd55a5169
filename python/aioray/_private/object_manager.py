"""The object manager: moves objects between nodes' stores in chunks over a gRPC stream.

A node that needs an object pulls it from a node that holds a copy: the holder
streams it in chunks (HTTP/2 flow control keeps several in flight), the puller
writes them straight into a new object in its own store, seals it unpinned
(a cached secondary copy that LRU eviction may take back) and records the new
location with the GCS. Concurrent pulls of one object share one transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aioray._proto.aioray import v1 as pb
from aioray.exceptions import ObjectStoreFullError

if TYPE_CHECKING:
    from aioray._private.raylet import Raylet

log = logging.getLogger("aioray.object_manager")
CHUNK = 4 << 20


class ObjectManager:
    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet
        self._pulls: dict[bytes, asyncio.Future[None]] = {}

    async def fetch(self, oid: bytes, source: str, size: int) -> None:
        """Pulls `oid` from the raylet at `source` unless a copy is here already."""
        store = self.raylet.store
        if store.contains(oid):
            return
        fut = self._pulls.get(oid)
        if fut is None:
            fut = self._pulls[oid] = asyncio.get_running_loop().create_future()
            try:
                await self._pull(oid, source, size)
                fut.set_result(None)
            except BaseException as e:
                fut.set_exception(e)
                raise
            finally:
                del self._pulls[oid]
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved by the waiters, if any
        else:
            await asyncio.shield(fut)

    async def _pull(self, oid: bytes, source: str, size: int) -> None:
        store = self.raylet.store
        try:
            buf = store.create(oid, size)
        except ObjectStoreFullError:
            await self.raylet.spill.spill(size)
            buf = store.create(oid, size)
        view = memoryview(buf)
        offset = 0
        try:
            stub = self.raylet.channels.stub(source, pb.RayletStub)
            async for chunk in stub.read_object(pb.ReadRequest(object_id=oid, chunk_size=CHUNK), timeout=600):
                n = len(chunk.data)
                view[offset : offset + n] = chunk.data
                offset += n
            if offset != size:
                raise ConnectionError(f"object {oid.hex()} arrived with {offset} of {size} bytes")
        except BaseException:
            view.release()
            buf.release()
            store.delete(oid)
            raise
        view.release()
        store.seal(oid)
        buf.release()
        with contextlib.suppress(Exception):
            gcs = self.raylet.channels.stub(self.raylet.gcs_address, pb.GcsStub)
            await gcs.add_object_locations(
                pb.ObjectLocationUpdate(node_id=self.raylet.node_id, object_ids=[oid])
            )

    async def read(self, oid: bytes, chunk_size: int) -> AsyncIterator[pb.Blob]:
        """Streams one of this node's objects (restoring it from disk first if it was spilled)."""
        store = self.raylet.store
        buf = store.get(oid)
        if buf is None:
            in_store, on_disk = await self.raylet.spill.restore(oid, spill_for_room=False)
            buf = store.get(oid) if in_store else None
            if buf is None and on_disk is not None:
                from aioray._private.core_worker import _map_file

                buf = _map_file(on_disk.path, on_disk.offset, on_disk.size)
        if buf is None:
            raise LookupError(f"object {oid.hex()} is not on this node")
        view = memoryview(buf)
        try:
            chunk = chunk_size or CHUNK
            for start in range(0, len(view), chunk):
                yield pb.Blob(data=bytes(view[start : start + chunk]))
        finally:
            view.release()
            if hasattr(buf, "release"):
                buf.release()
