"""The ownership table: reference counts and values of the objects a process knows.

For every object id the process holds references to, the table counts
- ``local``: live ObjectRef instances in this process,
- ``submitted``: pending tasks of this process that take it as an argument,
- ``contained``: live objects of this process whose value contains the ref,
- ``borrowers`` (owner only): other processes that hold it.
When every count is zero the entry goes: an owned object is freed (value
dropped, store copies deleted); a borrowed one is returned to its owner. The
actions run outside the lock, through the callbacks given at construction.

Counts change from any thread (ObjectRef.__del__ runs wherever the garbage
collector does), so all of it sits behind one re-entrant lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class ObjectValue:
    """Where an object's value is: inline bytes (a frame) or a node's store."""

    inline: bytes | None
    node_id: bytes | None = None
    node_address: str | None = None  # the raylet holding the primary copy
    size: int = 0
    # Read by someone (get, await, a task that took it as an argument, a borrower): an error
    # value freed before that is reported as unhandled, as Ray does.
    accessed: bool = False


class Entry:
    __slots__ = (
        "borrowers",
        "contained",
        "inner",
        "local",
        "owned",
        "owner",
        "registered",
        "submitted",
        "value",
    )

    def __init__(self, owner: str, owned: bool) -> None:
        self.owner = owner
        self.owned = owned
        self.local = 0
        self.submitted = 0
        self.contained = 0
        self.borrowers: set[str] | None = None
        self.registered = False
        self.inner: tuple[tuple[bytes, str], ...] = ()
        self.value: ObjectValue | None = None

    def in_use(self) -> bool:
        return bool(self.local or self.submitted or self.contained or self.borrowers)


# (object id, owner address, value or None, owned, registered-with-owner)
Released = tuple[bytes, str, ObjectValue | None, bool, bool]


class OwnershipTable:
    def __init__(self, address: str, on_release: Callable[[list[Released]], None]) -> None:
        self.address = address
        self._on_release = on_release
        self._entries: dict[bytes, Entry] = {}
        self._lock = threading.RLock()
        self._pending_registrations: dict[bytes, str] = {}
        # Refs of other owners that this process passed on to a borrower: (owner, borrower) -> ids.
        self._pending_lends: dict[tuple[str, str], list[bytes]] = {}

    # -- counting -----------------------------------------------------------------------------
    def _entry(self, oid: bytes, owner: str) -> Entry:
        e = self._entries.get(oid)
        if e is None:
            e = self._entries[oid] = Entry(owner, owner == self.address)
        return e

    def add_local(self, oid: bytes, owner: str) -> None:
        with self._lock:
            self._entry(oid, owner).local += 1

    def remove_local(self, oid: bytes) -> None:
        released: list[Released] = []
        with self._lock:
            e = self._entries.get(oid)
            if e is not None:
                e.local -= 1
                self._maybe_release(oid, e, released)
        if released:
            self._on_release(released)

    def add_submitted(self, refs: Iterable[tuple[bytes, str]]) -> None:
        with self._lock:
            for oid, owner in refs:
                self._entry(oid, owner).submitted += 1

    def remove_submitted(self, oids: Iterable[bytes]) -> None:
        self._decrement(oids, "submitted")

    def add_borrower(self, oids: Iterable[bytes], borrower: str) -> None:
        with self._lock:
            for oid in oids:
                e = self._entries.get(oid)
                if e is not None and e.owned:
                    if e.borrowers is None:
                        e.borrowers = set()
                    e.borrowers.add(borrower)

    def remove_borrower(self, oids: Iterable[bytes], borrower: str) -> None:
        released: list[Released] = []
        with self._lock:
            for oid in oids:
                e = self._entries.get(oid)
                if e is not None and e.borrowers:
                    e.borrowers.discard(borrower)
                    self._maybe_release(oid, e, released)
        if released:
            self._on_release(released)

    def _decrement(self, oids: Iterable[bytes], field: str) -> None:
        released: list[Released] = []
        with self._lock:
            for oid in oids:
                e = self._entries.get(oid)
                if e is not None:
                    setattr(e, field, getattr(e, field) - 1)
                    self._maybe_release(oid, e, released)
        if released:
            self._on_release(released)

    def _maybe_release(self, oid: bytes, e: Entry, released: list[Released]) -> None:
        if e.in_use():
            return
        del self._entries[oid]
        # A registration never sent needs no matching "remove" at the owner.
        unsent = self._pending_registrations.pop(oid, None) is not None
        released.append((oid, e.owner, e.value, e.owned, e.registered and not unsent))
        for inner_oid, _ in e.inner:
            inner = self._entries.get(inner_oid)
            if inner is not None:
                inner.contained -= 1
                self._maybe_release(inner_oid, inner, released)

    # -- values -------------------------------------------------------------------------------
    def set_value(
        self,
        oid: bytes,
        value: ObjectValue,
        inner: tuple[tuple[bytes, str], ...] = (),
        inner_registered: bool = False,
    ) -> bool:
        """Records a value and the refs it contains; False if nobody references the object any more.

        `inner_registered`: the process that produced the value already
        registered us with the owners of the inner refs (task results do).
        """
        with self._lock:
            e = self._entries.get(oid)
            if e is None:
                return False
            e.value = value
            if inner and not e.inner:
                e.inner = inner
                for inner_oid, owner in inner:
                    self._entry(inner_oid, owner).contained += 1
                    ie = self._entries[inner_oid]
                    if inner_registered and not ie.owned:
                        ie.registered = True
            return True

    def value(self, oid: bytes) -> ObjectValue | None:
        e = self._entries.get(oid)
        return e.value if e is not None else None

    def get(self, oid: bytes) -> Entry | None:
        return self._entries.get(oid)

    def __contains__(self, oid: bytes) -> bool:
        return oid in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    # -- borrowing ----------------------------------------------------------------------------
    def note_deserialized(self, oid: bytes, owner: str) -> None:
        """A ref arrived from another process: register with its owner unless done."""
        if owner == self.address:
            return
        with self._lock:
            e = self._entries.get(oid)
            if e is not None and not e.registered:
                e.registered = True
                self._pending_registrations[oid] = owner

    def take_registrations(self) -> dict[str, list[bytes]]:
        """Borrow registrations not yet sent, grouped by owner."""
        with self._lock:
            pending, self._pending_registrations = self._pending_registrations, {}
        by_owner: dict[str, list[bytes]] = {}
        for oid, owner in pending.items():
            by_owner.setdefault(owner, []).append(oid)
        return by_owner

    def note_lent(self, refs: Iterable[tuple[bytes, str]], borrower: str) -> None:
        """Refs of other owners inside a value sent to `borrower`: their owners must learn of it."""
        with self._lock:
            for oid, owner in refs:
                self._pending_lends.setdefault((owner, borrower), []).append(oid)

    def take_lends(self) -> dict[tuple[str, str], list[bytes]]:
        """Lends not yet reported, by (owner, borrower)."""
        with self._lock:
            lends, self._pending_lends = self._pending_lends, {}
        return lends

    def has_pending_registrations(self) -> bool:
        return bool(self._pending_lends) or bool(self._pending_registrations)

    def snapshot(self) -> list[tuple[bytes, Entry]]:
        """Every entry now (their counts may move on while the caller reads them)."""
        with self._lock:
            return list(self._entries.items())

    def stats(self) -> dict[str, int]:
        with self._lock:
            owned = sum(1 for e in self._entries.values() if e.owned)
            return {"owned": owned, "borrowed": len(self._entries) - owned}
