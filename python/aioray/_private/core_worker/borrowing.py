"""The borrow protocol (seed 004, ownership): owners learn who holds their refs, and free when nobody does.

A process that receives a ref it does not own registers itself with the
owner as a borrower before the ref can be used (a task's borrows are sent,
and acknowledged, before its result is); a worker that passes on a ref of a
third owner registers the receiver with that owner. When the ownership table
releases an entry, this module carries out the consequences: an owned
object's primary copy leaves the local store at once and other nodes' raylets
are told to free theirs; a borrowed one is returned to its owner. Sends are
batched per loop step, one sender per owner keeps the order of adds and
removes of the same ref.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from aioray._private.common import rpc
from aioray._private.core_worker.ownership import OwnershipTable, Released
from aioray._private.core_worker.runtime import Runtime, quietly
from aioray._proto.aioray import v1 as pb
from aioray._store import ObjectStore


class BorrowProtocol:
    def __init__(
        self,
        runtime: Runtime,
        refs: OwnershipTable,
        store: ObjectStore,
        node_id: bytes,
        on_freed: Callable[[list[Released]], None],
    ) -> None:
        """`on_freed(released)` runs on the loop for every batch of released entries, before any message leaves."""
        self._runtime = runtime
        self._refs = refs
        self._store = store
        self._node_id = node_id
        self._on_freed = on_freed
        self.address = ""  # this process's address, once its server is up
        self._frees: dict[str, list[bytes]] = {}
        self._unborrows: dict[str, list[bytes]] = {}
        self._senders: dict[str, asyncio.Lock] = {}
        self._flush_scheduled = False

    # -- releases (any thread) -----------------------------------------------------------------
    def on_release(self, released: list[Released]) -> None:
        """The ownership table's release callback."""
        if self._runtime.closed:
            return
        # Primary copies in this node's store go at once, from this thread: the next
        # put then reuses memory whose pages are already faulted in.
        for oid, _, value, owned, _ in released:
            if owned and value is not None and value.inline is None and value.node_id == self._node_id:
                with contextlib.suppress(Exception):
                    self._store.delete(oid)
        if self._runtime.in_loop_thread():
            self.released(released)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed at exit
                self._runtime.call_soon(self.released, released)

    def released(self, released: list[Released]) -> None:
        """On the loop: frees or returns what the table released."""
        self._on_freed(released)  # once per batch: a get of an object holding 10k refs frees 10k
        for oid, owner, value, owned, registered in released:
            if owned and value is not None and value.inline is None and value.node_address:
                # Local ones left the store already; the raylet still drops any spilled copy.
                self._frees.setdefault(value.node_address, []).append(oid)
            elif registered:
                self._unborrows.setdefault(owner, []).append(oid)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._runtime.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        frees, self._frees = self._frees, {}
        for raylet, oids in frees.items():
            stub = self._runtime.channels.stub(raylet, pb.ObjectManagerStub)
            self._runtime.spawn(quietly(stub.free_objects(pb.ObjectIds(ids=oids), timeout=30)))
        unborrows, self._unborrows = self._unborrows, {}
        for owner, oids in unborrows.items():
            self._runtime.spawn(self._send(owner, self.address, remove=oids))

    # -- registrations -------------------------------------------------------------------------
    def lend_refs(self, inner: list[tuple[bytes, str]], borrower: str) -> None:
        """Refs inside a value sent to `borrower`: register it as their borrower (task thread)."""
        table = self._refs
        mine = [oid for oid, owner in inner if owner == self.address]
        if mine:
            table.add_borrower(mine, borrower)
        others = [(oid, owner) for oid, owner in inner if owner != self.address and owner != borrower]
        if others:
            table.note_lent(others, borrower)

    def has_pending(self) -> bool:
        return self._refs.has_pending_registrations()

    async def flush_registrations(self) -> None:
        """On the loop: sends borrow registrations and waits until every owner acknowledged them."""
        table = self._refs
        sends = [
            self._send(owner, self.address, add=oids) for owner, oids in table.take_registrations().items()
        ]
        sends += [
            self._send(owner, borrower, add=oids) for (owner, borrower), oids in table.take_lends().items()
        ]
        if sends:
            await asyncio.gather(*sends, return_exceptions=True)

    async def _send(
        self, owner: str, borrower: str, add: Iterable[bytes] = (), remove: Iterable[bytes] = ()
    ) -> None:
        # One sender per owner keeps adds and removes of the same ref in order.
        lock = self._senders.setdefault(owner, asyncio.Lock())
        async with lock:
            stub = self._runtime.channels.stub(owner, pb.CoreWorkerStub)
            update = pb.BorrowerUpdate(borrower_address=borrower, add=list(add), remove=list(remove))
            with contextlib.suppress(*rpc.CONNECTION_ERRORS):  # the owner is gone, and its objects with it
                await stub.update_borrowers(update, timeout=30)

    def on_update(self, update: pb.BorrowerUpdate) -> None:
        """The owner's side: a borrower registered or dropped refs."""
        table = self._refs
        if update.add:
            table.add_borrower(update.add, update.borrower_address)
        if update.remove:
            table.remove_borrower(update.remove, update.borrower_address)
