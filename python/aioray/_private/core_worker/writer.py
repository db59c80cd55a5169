"""The object writer: `put`, large task arguments and large return values go into this node's store.

A value up to the inline limit stays in the owner's memory. A larger one is
written into the node's shared-memory store as a pinned primary copy that
lives until its owner frees it. When the store is full the raylet first
spills other primary copies to disk; an object that still does not fit is
written straight to a file in the spill directory and registered with the
raylet, and readers map it from there.
"""

from __future__ import annotations

import contextlib
import mmap
import os

from aioray._private.common import serialization
from aioray._private.common.config import INLINE_LIMIT, SPILL_THRESHOLD
from aioray._private.common.ids import IdGenerator
from aioray._private.core_worker.object_ref import ObjectRef
from aioray._private.core_worker.ownership import ObjectValue, OwnershipTable
from aioray._private.core_worker.runtime import Runtime, quietly
from aioray._proto.aioray import v1 as pb
from aioray._store import Buffer, ObjectStore
from aioray.exceptions import ObjectExistsError, ObjectStoreFullError

PRESSURE_CHECK_BYTES = 1 << 20  # after writing an object this large, see whether the store needs spilling


class ObjectWriter:
    def __init__(
        self,
        runtime: Runtime,
        refs: OwnershipTable,
        store: ObjectStore,
        ids: IdGenerator,
        node_id: bytes,
        spill_dir: str,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        self._runtime = runtime
        self._refs = refs
        self._store = store
        self.ids = ids
        self.node_id = node_id
        self.spill_dir = spill_dir
        self.inline_limit = inline_limit
        self._spill_hinted = False

    def put(self, value: object) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed: pass the ref itself, or put its value")
        return self.put_frame(serialization.serialize(value))

    def put_frame(self, frame: serialization.Frame) -> ObjectRef:
        """Owns a new object holding `frame` (any thread)."""
        oid = self.ids.put_id()
        ref = ObjectRef(oid, self._runtime.address)
        inner = tuple((r.binary(), r.owner_address) for r in frame.contained_refs)
        if frame.size <= self.inline_limit:
            value = ObjectValue(frame.to_bytes())
        else:
            self.write_to_store(oid, frame)
            value = ObjectValue(None, self.node_id, self._runtime.raylet_address, frame.size)
        self._refs.set_value(oid, value, inner)
        return ref

    def write_to_store(self, oid: bytes, frame: serialization.Frame) -> None:
        """Writes a primary copy into this node's store, pinned until the owner frees it (not on the loop)."""
        try:
            buf = self._create(oid, frame.size)
        except ObjectStoreFullError:
            self._spill_for(frame.size)
            try:
                buf = self._create(oid, frame.size)
            except ObjectStoreFullError:
                self._write_to_spill_file(oid, frame)
                return
        try:
            frame.write_into(memoryview(buf))
        except BaseException:
            buf.release()
            self._store.delete(oid)
            raise
        self._store.seal(oid)
        self._store.pin(oid)
        buf.release()
        if frame.size >= PRESSURE_CHECK_BYTES:
            self._check_pressure()

    def _create(self, oid: bytes, size: int) -> Buffer:
        """A new object `oid`, replacing whatever an earlier attempt of the same task left behind.

        A retried or reconstructed task writes the same return ids again. Its earlier attempt may have
        sealed them (and died before replying) or died half-way through writing. The owner never
        learnt of that copy, so this attempt's value replaces it; readers of the old copy keep theirs
        until they release it.
        """
        try:
            return self._store.create(oid, size)
        except ObjectExistsError:
            self._store.delete(oid)
            return self._store.create(oid, size)

    def _spill_for(self, nbytes: int) -> None:
        async def spill() -> None:
            stub = self._runtime.raylet(pb.ObjectManagerStub)
            await stub.spill_objects(pb.SpillRequest(nbytes=nbytes), timeout=110)

        self._runtime.run_sync(spill(), timeout=120)

    def _check_pressure(self) -> None:
        used, total = self._store.usage()
        if used > SPILL_THRESHOLD * total and not self._spill_hinted:
            self._spill_hinted = True

            async def hint() -> None:
                try:
                    stub = self._runtime.raylet(pb.ObjectManagerStub)
                    await stub.spill_objects(pb.SpillRequest(nbytes=0), timeout=120)
                finally:
                    self._spill_hinted = False

            hinting = hint()
            if not self._runtime.spawn_threadsafe(quietly(hinting)):
                hinting.close()  # never started: no spill hint is under way
                self._spill_hinted = False

    def _write_to_spill_file(self, oid: bytes, frame: serialization.Frame) -> None:
        """An object the store cannot hold even after spilling: written to disk, mapped by readers."""
        os.makedirs(self.spill_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.spill_dir, f"direct-{oid.hex()}.bin")
        try:
            with open(path, "w+b") as f:
                f.truncate(frame.size)
                with mmap.mmap(f.fileno(), frame.size) as mm:
                    view = memoryview(mm)
                    try:
                        frame.write_into(view)
                    finally:
                        view.release()
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(path)
            capacity = self._store.usage()[1]
            raise ObjectStoreFullError(
                f"cannot store an object of {frame.size} bytes: the object store ({capacity} bytes) is full of "
                f"pinned objects and the spill directory {self.spill_dir} failed too ({e})"
            ) from None
        spilled = pb.SpilledObject(object_id=oid, path=path, offset=0, size=frame.size)

        async def register() -> None:
            await self._runtime.raylet(pb.ObjectManagerStub).register_spilled(spilled, timeout=30)

        self._runtime.run_sync(register(), timeout=120)
