"""The borrow protocol over a real ownership table, with the peers' stubs faked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aioray._private.core_worker.borrowing import BorrowProtocol
from aioray._private.core_worker.ownership import ObjectValue, OwnershipTable
from aioray._private.core_worker.runtime import Runtime
from aioray._proto.aioray import v1 as pb

ME = "me:1"
OTHER = "other:1"
THIRD = "third:1"
BORROWER = "borrower:1"
NODE = b"this-node"
LOCAL_RAYLET = "raylet:1"
REMOTE_RAYLET = "raylet:2"


class FakeStub:
    def __init__(self, address: str, calls: list[tuple[str, str, Any]]) -> None:
        self.address = address
        self.calls = calls

    async def update_borrowers(self, update: pb.BorrowerUpdate, timeout: float | None = None) -> pb.Empty:
        self.calls.append((self.address, "update_borrowers", update))
        return pb.Empty()

    async def free_objects(self, ids: pb.ObjectIds, timeout: float | None = None) -> pb.Empty:
        self.calls.append((self.address, "free_objects", ids))
        return pb.Empty()


class FakeStore:
    def __init__(self) -> None:
        self.deleted: list[bytes] = []

    def delete(self, oid: bytes) -> bool:
        self.deleted.append(oid)
        return True


class Harness:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.calls: list[tuple[str, str, Any]] = []
        self.stub_classes: list[tuple[str, type]] = []
        self.store = FakeStore()
        self.freed: list[tuple[bytes, bool]] = []
        self.table = OwnershipTable(ME, lambda released: self.borrows.on_release(released))
        self.borrows = BorrowProtocol(
            runtime,
            self.table,
            self.store,  # type: ignore[arg-type]
            NODE,
            lambda released: self.freed.extend((r[0], r[3]) for r in released),
        )
        self.borrows.address = ME

    def stub(self, address: str, cls: type) -> FakeStub:
        self.stub_classes.append((address, cls))
        return FakeStub(address, self.calls)

    async def settle(self, count: int) -> None:
        """Lets the loop run until `count` calls were sent, and a few steps more to catch extra ones."""
        for _ in range(50):
            if len(self.calls) >= count:
                break
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(self.calls) == count, self.calls


def update(
    address: str, borrower: str, add: tuple[bytes, ...] = (), remove: tuple[bytes, ...] = ()
) -> tuple[str, str, Any]:
    message = pb.BorrowerUpdate(borrower_address=borrower, add=list(add), remove=list(remove))
    return (address, "update_borrowers", message)


@pytest.fixture
async def h(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    runtime = Runtime(asyncio.get_running_loop(), "token", "gcs:1", LOCAL_RAYLET)
    runtime.bind_loop_thread()
    harness = Harness(runtime)
    monkeypatch.setattr(runtime.channels, "stub", harness.stub)
    yield harness
    runtime.close()


def owned_in_store(h: Harness, oid: bytes, node: bytes, raylet: str) -> None:
    h.table.add_local(oid, ME)
    h.table.set_value(oid, ObjectValue(None, node, raylet, 100))


# -- lending and registering ---------------------------------------------------------------------


async def test_lend_registers_borrowers_of_own_refs_and_queues_third_party_ones(h: Harness) -> None:
    h.table.add_local(b"mine", ME)
    h.borrows.lend_refs([(b"mine", ME), (b"theirs", OTHER), (b"its-own", BORROWER)], BORROWER)
    entry = h.table.get(b"mine")
    assert entry is not None and entry.borrowers == {BORROWER}
    # The borrower's own ref needs no registration: it is the owner.
    assert h.table.take_lends() == {(OTHER, BORROWER): [b"theirs"]}
    assert h.calls == [], "nothing is sent until the registrations are flushed"


async def test_flush_registrations_tells_each_owner(h: Harness) -> None:
    h.table.add_local(b"borrowed", OTHER)
    h.table.note_deserialized(b"borrowed", OTHER)
    h.borrows.lend_refs([(b"lent-1", THIRD), (b"lent-2", THIRD)], BORROWER)
    assert h.borrows.has_pending()
    await h.borrows.flush_registrations()
    assert sorted(h.calls, key=lambda c: c[0]) == [
        update(OTHER, ME, add=(b"borrowed",)),
        update(THIRD, BORROWER, add=(b"lent-1", b"lent-2")),
    ]
    assert {cls for _, cls in h.stub_classes} == {pb.CoreWorkerStub}
    assert not h.borrows.has_pending()
    await h.borrows.flush_registrations()
    assert len(h.calls) == 2, "each registration is sent once"


# -- releases ------------------------------------------------------------------------------------


async def test_releasing_a_local_owned_store_object_deletes_it_and_frees_it_at_its_raylet(h: Harness) -> None:
    owned_in_store(h, b"obj", NODE, LOCAL_RAYLET)
    h.table.add_local(b"other-obj", ME)
    h.table.remove_local(b"obj")
    assert h.store.deleted == [b"obj"], "the primary copy leaves the store at once, nothing else"
    assert h.freed == [(b"obj", True)]
    await h.settle(1)
    assert h.calls == [(LOCAL_RAYLET, "free_objects", pb.ObjectIds(ids=[b"obj"]))]
    assert h.stub_classes == [(LOCAL_RAYLET, pb.ObjectManagerStub)]


async def test_releasing_an_owned_object_on_another_node_only_tells_that_raylet(h: Harness) -> None:
    owned_in_store(h, b"a", b"remote-node", REMOTE_RAYLET)
    owned_in_store(h, b"b", b"remote-node", REMOTE_RAYLET)
    h.table.remove_local(b"a")
    h.table.remove_local(b"b")
    assert h.store.deleted == []
    await h.settle(1)
    assert h.calls == [(REMOTE_RAYLET, "free_objects", pb.ObjectIds(ids=[b"a", b"b"]))], (
        "batched per loop step"
    )


async def test_releasing_an_inline_owned_object_sends_nothing(h: Harness) -> None:
    h.table.add_local(b"small", ME)
    h.table.set_value(b"small", ObjectValue(b"frame"))
    h.table.remove_local(b"small")
    await h.settle(0)
    assert h.freed == [(b"small", True)]
    assert h.store.deleted == []


async def test_releasing_a_registered_borrowed_ref_returns_it_to_its_owner(h: Harness) -> None:
    h.table.add_local(b"x", OTHER)
    h.table.note_deserialized(b"x", OTHER)
    await h.borrows.flush_registrations()
    h.table.remove_local(b"x")
    assert h.freed == [(b"x", False)]
    await h.settle(2)
    assert h.calls[1] == update(OTHER, ME, remove=(b"x",))
    assert h.store.deleted == []


async def test_releasing_an_unregistered_borrowed_ref_sends_nothing(h: Harness) -> None:
    h.table.add_local(b"x", OTHER)
    h.table.note_deserialized(b"x", OTHER)
    h.table.remove_local(b"x")  # before the registration was ever sent
    await h.borrows.flush_registrations()
    await h.settle(0)
    assert h.freed == [(b"x", False)]


async def test_a_release_off_the_loop_deletes_there_and_reports_on_the_loop(h: Harness) -> None:
    owned_in_store(h, b"obj", NODE, LOCAL_RAYLET)
    await asyncio.to_thread(h.table.remove_local, b"obj")
    assert h.store.deleted == [b"obj"]
    await h.settle(1)
    assert h.freed == [(b"obj", True)]
    assert h.calls[0][:2] == (LOCAL_RAYLET, "free_objects")


async def test_nothing_happens_once_the_runtime_is_closed(h: Harness) -> None:
    owned_in_store(h, b"obj", NODE, LOCAL_RAYLET)
    h.runtime.closed = True
    h.table.remove_local(b"obj")
    await h.settle(0)
    assert h.store.deleted == [] and h.freed == []


# -- the owner's side ----------------------------------------------------------------------------


async def test_on_update_adds_and_removes_borrowers(h: Harness) -> None:
    owned_in_store(h, b"obj", NODE, LOCAL_RAYLET)
    h.borrows.on_update(pb.BorrowerUpdate(borrower_address=BORROWER, add=[b"obj"]))
    h.table.remove_local(b"obj")
    assert b"obj" in h.table, "the borrower keeps it alive"
    assert h.table.get(b"obj").borrowers == {BORROWER}  # type: ignore[union-attr]
    h.borrows.on_update(pb.BorrowerUpdate(borrower_address=BORROWER, remove=[b"obj"]))
    assert b"obj" not in h.table
    assert h.freed == [(b"obj", True)]
    await h.settle(1)
    assert h.calls[0][:2] == (LOCAL_RAYLET, "free_objects")
