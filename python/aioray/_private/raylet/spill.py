"""Spilling: the raylet moves pinned primary copies to local disk under memory pressure, and back.

Objects are written in batches, one file per spill round, each object at a
page-aligned offset (so a reader can map it straight from the file). A file
is deleted once every object in it was freed or restored; the whole spill
directory goes when the node stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from typing import Any

from aioray._private.common.config import SPILL_TARGET, SPILL_THRESHOLD
from aioray._store import ObjectStore
from aioray.exceptions import ObjectStoreFullError

log = logging.getLogger("aioray.spill")

PAGE = 4096
MAX_BATCH_BYTES = 256 << 20
OFF_LOOP_CREATE_BYTES = 1 << 20


@dataclass(slots=True)
class Spilled:
    path: str
    offset: int
    size: int


async def create_off_loop(store: ObjectStore, oid: bytes, size: int) -> Any:
    """`store.create`, with a large object's page faults taken in a thread rather than on the loop.

    Creating an object of 1 MiB or more faults its pages in at once; for hundreds of MiB of fresh
    memory that is a few hundred milliseconds the raylet's loop must not stall for.
    """
    if size < OFF_LOOP_CREATE_BYTES:
        return store.create(oid, size)
    creating = asyncio.ensure_future(asyncio.to_thread(store.create, oid, size))
    try:
        return await asyncio.shield(creating)
    except asyncio.CancelledError:

        def undo(done: asyncio.Future[Any]) -> None:  # no unsealed object may outlive its creator's interest
            if not done.cancelled() and done.exception() is None:
                done.result().release()
                store.delete(oid)

        creating.add_done_callback(undo)
        raise


def _page_up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


class SpillManager:
    def __init__(self, store: ObjectStore, spill_dir: str) -> None:
        self.store = store
        self.dir = spill_dir
        self.objects: dict[bytes, Spilled] = {}
        self._files: dict[str, set[bytes]] = {}
        self._lock = asyncio.Lock()
        self._restoring: dict[bytes, asyncio.Task[Spilled | None]] = {}
        self._counter = 0
        self._tlock = threading.Lock()  # guards objects/_files against the writer thread
        self.spilled_bytes = 0
        self.spilled_total = 0
        self.restored_bytes = 0

    def _new_path(self, tag: str) -> str:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._counter += 1
        return os.path.join(self.dir, f"{tag}-{os.getpid()}-{self._counter}.bin")

    # -- spilling ------------------------------------------------------------------------------
    async def spill(self, nbytes: int) -> int:
        """Spills LRU primary copies until `nbytes` were freed or nothing is left; returns bytes freed."""
        async with self._lock:
            freed = 0
            while freed < nbytes:
                batch, total = [], 0
                for oid, size in self.store.spillable(256):
                    batch.append((oid, size))
                    total += size
                    if freed + total >= nbytes or total >= MAX_BATCH_BYTES:
                        break
                if not batch:
                    break
                freed += await asyncio.to_thread(self._write_batch, batch)
            return freed

    async def maybe_spill(self) -> None:
        """Background spilling once the store is above the threshold."""
        used, total = self.store.usage()
        if used > SPILL_THRESHOLD * total:
            await self.spill(int(used - SPILL_TARGET * total))

    def _write_batch(self, batch: list[tuple[bytes, int]]) -> int:
        path = self._new_path("spill")
        written: list[tuple[bytes, Spilled]] = []
        with open(path, "wb") as f:
            offset = 0
            for oid, size in batch:
                buf = self.store.get(oid)
                if buf is None:  # freed meanwhile
                    continue
                try:
                    f.seek(offset)
                    f.write(memoryview(buf))
                finally:
                    buf.release()
                written.append((oid, Spilled(path, offset, size)))
                offset = _page_up(offset + size)
        freed = 0
        with self._tlock:
            for oid, entry in written:
                # Only if the owner did not free it while we wrote: then the copy on disk is the one.
                if self.store.contains(oid):
                    self.objects[oid] = entry
                    self._files.setdefault(path, set()).add(oid)
                    with contextlib.suppress(KeyError):
                        self.store.unpin(oid)
                    self.store.delete(oid)
                    freed += entry.size
                    self.spilled_bytes += entry.size
                    self.spilled_total += entry.size
            if path not in self._files:
                os.unlink(path)
        return freed

    def register(self, oid: bytes, entry: Spilled) -> None:
        """An object written straight to the spill directory by its creator (too big for the store)."""
        with self._tlock:
            self.objects[oid] = entry
            self._files.setdefault(entry.path, set()).add(oid)
            self.spilled_bytes += entry.size
            self.spilled_total += entry.size

    # -- restoring and freeing -----------------------------------------------------------------
    async def restore(self, oid: bytes, spill_for_room: bool = True) -> tuple[bool, Spilled | None]:
        """(True, None) once the object is back in the store; (False, where) when it does not fit
        and must be read from disk; (False, None) when it was never spilled here."""
        if self.store.contains(oid):
            return True, None
        entry = self.objects.get(oid)
        if entry is None:
            return False, None
        restoring = self._restoring.get(oid)
        if restoring is None:
            # One restore per object, which no waiter's cancellation cancels: it always finishes
            # (sealed and pinned, or cleaned up) for the other waiters and the next caller.
            restoring = self._restoring[oid] = asyncio.ensure_future(
                self._restore(oid, entry, spill_for_room)
            )
            restoring.add_done_callback(lambda done: self._restore_done(oid, done))
        left_on_disk = await asyncio.shield(restoring)
        return left_on_disk is None, left_on_disk

    def _restore_done(self, oid: bytes, done: asyncio.Task[Spilled | None]) -> None:
        if self._restoring.get(oid) is done:
            del self._restoring[oid]
        if not done.cancelled():
            done.exception()  # marked as retrieved: the waiters left, if any, raise it themselves

    async def _restore(self, oid: bytes, entry: Spilled, spill_for_room: bool) -> Spilled | None:
        try:
            buf = await create_off_loop(self.store, oid, entry.size)
        except ObjectStoreFullError:
            if not spill_for_room or entry.size > self.store.usage()[1]:
                return entry
            await self.spill(entry.size)
            try:
                buf = await create_off_loop(self.store, oid, entry.size)
            except ObjectStoreFullError:
                return entry  # readers map it from the file instead
        # Not a task: nothing cancels the read, so `reading` is done only once the thread let go of `buf`.
        reading = asyncio.get_running_loop().run_in_executor(None, _read_into, entry, buf)
        try:
            await asyncio.shield(reading)
        except BaseException:

            def discard(done: asyncio.Future[None]) -> None:  # no unsealed object may stay behind
                if not done.cancelled():
                    done.exception()  # retrieved: this restore failed or was given up anyway
                buf.release()
                self.store.delete(oid)

            if reading.done():
                discard(reading)
            else:
                reading.add_done_callback(discard)
            raise
        self.store.seal(oid)
        self.store.pin(oid)
        buf.release()
        self.restored_bytes += entry.size
        self._drop(oid)
        return None

    def free(self, oid: bytes) -> None:
        self._drop(oid)

    def _drop(self, oid: bytes) -> None:
        with self._tlock:
            entry = self.objects.pop(oid, None)
            if entry is None:
                return
            self.spilled_bytes -= entry.size
            live = self._files.get(entry.path)
            if live is not None:
                live.discard(oid)
                if not live:
                    del self._files[entry.path]
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _read_into(entry: Spilled, buf: object) -> None:
    # Released even on an error (whose traceback keeps this frame): the caller then releases `buf`.
    with memoryview(buf) as view, open(entry.path, "rb") as f:  # type: ignore[arg-type]
        f.seek(entry.offset)
        done = 0
        while done < entry.size:
            n = f.readinto(view[done:])
            if not n:
                raise OSError(f"spill file {entry.path} is truncated")
            done += n
