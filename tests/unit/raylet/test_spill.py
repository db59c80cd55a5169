"""Spilling pinned primary copies to disk and restoring them, on a real store and a temporary directory."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aioray._private.common.config import SPILL_TARGET, SPILL_THRESHOLD
from aioray._private.common.spill_files import map_spilled
from aioray._private.raylet import spill
from aioray._private.raylet.spill import PAGE, Spilled, SpillManager
from aioray._store import ObjectStore

CAPACITY = 1 << 20
SIZE = 10_000


@pytest.fixture
def store(shm_name: str) -> Iterator[ObjectStore]:
    s = ObjectStore.create(shm_name, CAPACITY)
    yield s
    s.verify()
    s.destroy()


@pytest.fixture
def manager(store: ObjectStore, tmp_path: Path) -> Iterator[SpillManager]:
    m = SpillManager(store, str(tmp_path / "spill"))
    yield m
    m.close()


def oid(n: int) -> bytes:
    return n.to_bytes(20, "little")


def data(n: int, size: int = SIZE) -> bytes:
    return bytes([n % 256]) * size


def put_primary(store: ObjectStore, n: int, size: int = SIZE, pin: bool = True) -> None:
    with store.create(oid(n), size) as buf:
        memoryview(buf)[:] = data(n, size)
    store.seal(oid(n))
    if pin:
        store.pin(oid(n))


def read(store: ObjectStore, n: int) -> bytes:
    buf = store.get(oid(n))
    assert buf is not None
    with buf:
        view = memoryview(buf)
        try:
            return bytes(view)
        finally:
            view.release()


def files(manager: SpillManager) -> list[str]:
    return sorted(os.listdir(manager.dir)) if os.path.isdir(manager.dir) else []


def exists(path: str) -> bool:
    return os.path.exists(path)


def write_file(directory: str, name: str, content: bytes) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def on_disk(entry: Spilled) -> bytes:
    view = map_spilled(entry.path, entry.offset, entry.size)
    try:
        return bytes(view)
    finally:
        view.release()


# -- spilling -----------------------------------------------------------------------------------


async def test_spill_writes_several_objects_to_one_file_and_frees_their_memory(
    store: ObjectStore, manager: SpillManager
) -> None:
    for n in (1, 2, 3):
        put_primary(store, n)
    used_before = store.usage()[0]

    assert await manager.spill(3 * SIZE) == 3 * SIZE

    assert len(files(manager)) == 1
    entries = [manager.objects[oid(n)] for n in (1, 2, 3)]
    assert len({e.path for e in entries}) == 1
    assert [e.offset for e in entries] == [0, 3 * PAGE, 6 * PAGE], "page-aligned, in LRU order"
    for n, entry in zip((1, 2, 3), entries, strict=True):
        assert entry.size == SIZE
        assert on_disk(entry) == data(n)
        assert not store.contains(oid(n))
    assert store.usage()[0] < used_before and store.stats()["num_objects"] == 0
    assert manager.spilled_bytes == manager.spilled_total == 3 * SIZE


async def test_spill_stops_once_enough_was_freed(store: ObjectStore, manager: SpillManager) -> None:
    for n in (1, 2, 3):
        put_primary(store, n)
    assert await manager.spill(SIZE + 1) == 2 * SIZE
    assert set(manager.objects) == {oid(1), oid(2)}, "least recently used first"
    assert store.contains(oid(3))


async def test_max_batch_bytes_splits_batches_into_files(
    store: ObjectStore, manager: SpillManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spill, "MAX_BATCH_BYTES", SIZE + SIZE // 2)
    for n in (1, 2, 3):
        put_primary(store, n)
    assert await manager.spill(3 * SIZE) == 3 * SIZE
    assert len(files(manager)) == 2
    paths = [manager.objects[oid(n)].path for n in (1, 2, 3)]
    assert paths[0] == paths[1] != paths[2]


async def test_only_pinned_primaries_are_spilled(store: ObjectStore, manager: SpillManager) -> None:
    put_primary(store, 1, pin=False)  # a secondary copy: evictable, never spilled
    put_primary(store, 2)
    assert await manager.spill(2 * SIZE) == SIZE
    assert set(manager.objects) == {oid(2)}
    assert store.contains(oid(1))


async def test_spill_with_nothing_spillable_frees_nothing(store: ObjectStore, manager: SpillManager) -> None:
    assert await manager.spill(SIZE) == 0
    assert files(manager) == []


async def test_maybe_spill_respects_the_threshold(store: ObjectStore, manager: SpillManager) -> None:
    total = store.usage()[1]
    size = 64 * 1024
    n = 0
    while store.usage()[0] + size + PAGE <= SPILL_THRESHOLD * total:
        n += 1
        put_primary(store, n, size)
    await manager.maybe_spill()
    assert manager.objects == {}, "below the threshold nothing is spilled"

    n += 1
    put_primary(store, n, size)
    assert store.usage()[0] > SPILL_THRESHOLD * total
    await manager.maybe_spill()
    assert manager.objects
    assert store.usage()[0] <= SPILL_TARGET * total


# -- restoring and freeing ----------------------------------------------------------------------


async def test_restore_brings_an_object_back_pinned(store: ObjectStore, manager: SpillManager) -> None:
    put_primary(store, 1)
    put_primary(store, 2)
    await manager.spill(2 * SIZE)

    assert await manager.restore(oid(1)) == (True, None)

    assert store.contains(oid(1))
    assert read(store, 1) == data(1)
    assert oid(1) in dict(store.spillable()), "a restored primary is pinned again"
    assert oid(1) not in manager.objects
    assert manager.restored_bytes == SIZE
    assert manager.spilled_bytes == SIZE
    assert len(files(manager)) == 1, "the file still holds the other object"
    assert await manager.restore(oid(1)) == (True, None), "already in the store"


async def test_restore_of_an_object_never_spilled(manager: SpillManager) -> None:
    assert await manager.restore(oid(99)) == (False, None)


async def test_restore_without_room_leaves_it_on_disk(store: ObjectStore, manager: SpillManager) -> None:
    big = CAPACITY * 3 // 5  # two never fit together
    put_primary(store, 1, big)
    await manager.spill(big)
    put_primary(store, 2, big)  # now the spilled one cannot come back without spilling this one
    found, entry = await manager.restore(oid(1), spill_for_room=False)
    assert not found
    assert entry == manager.objects[oid(1)]
    assert store.contains(oid(2)) and not store.contains(oid(1))


async def test_restore_spills_others_to_make_room(store: ObjectStore, manager: SpillManager) -> None:
    big = CAPACITY * 3 // 5  # two never fit together
    put_primary(store, 1, big)
    await manager.spill(big)
    put_primary(store, 2, big)
    assert await manager.restore(oid(1)) == (True, None)
    assert read(store, 1) == data(1, big)
    assert set(manager.objects) == {oid(2)}


class GatedRead:
    """Holds the restore's read thread, with a memoryview of the buffer taken, until `go` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Event()
        self.go = threading.Event()
        real = spill._read_into

        def read_into(entry: Spilled, buf: object) -> None:
            with memoryview(buf):  # type: ignore[arg-type]
                self.started.set()
                assert self.go.wait(5)
            real(entry, buf)

        monkeypatch.setattr(spill, "_read_into", read_into)

    async def reading(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 5)


async def test_a_restorer_cancelled_during_the_read_leaves_the_restore_to_finish(
    store: ObjectStore, manager: SpillManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_primary(store, 1)
    await manager.spill(SIZE)
    gate = GatedRead(monkeypatch)
    first = asyncio.ensure_future(manager.restore(oid(1)))
    await gate.reading()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.go.set()
    assert await asyncio.wait_for(manager.restore(oid(1)), 5) == (True, None)
    assert read(store, 1) == data(1)
    assert oid(1) in dict(store.spillable()), "sealed and pinned again"
    assert manager.objects == {} and manager.restored_bytes == SIZE


async def test_a_cancelled_restorer_does_not_cancel_the_others(
    store: ObjectStore, manager: SpillManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_primary(store, 1)
    await manager.spill(SIZE)
    gate = GatedRead(monkeypatch)
    first = asyncio.ensure_future(manager.restore(oid(1)))
    await gate.reading()
    second = asyncio.ensure_future(manager.restore(oid(1)))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled() and not second.done()
    gate.go.set()
    assert await asyncio.wait_for(second, 5) == (True, None)
    assert read(store, 1) == data(1)


async def test_a_restore_cancelled_itself_cleans_up_once_the_read_let_go(
    store: ObjectStore, manager: SpillManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_primary(store, 1)
    await manager.spill(SIZE)
    gate = GatedRead(monkeypatch)
    waiter = asyncio.ensure_future(manager.restore(oid(1)))
    await gate.reading()
    manager._restoring[oid(1)].cancel()  # as when the raylet's loop shuts down
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.go.set()
    for _ in range(500):  # the unsealed object goes once the thread is done with it
        if not store.stats()["num_objects"]:
            break
        await asyncio.sleep(0.01)
    assert store.stats()["num_objects"] == 0
    monkeypatch.undo()
    assert await manager.restore(oid(1)) == (True, None)
    assert read(store, 1) == data(1)


async def test_a_failed_read_leaves_no_unsealed_object_behind(
    store: ObjectStore, manager: SpillManager
) -> None:
    path = write_file(manager.dir, "short.bin", data(7, SIZE // 2))
    manager.register(oid(7), Spilled(path, 0, SIZE))
    with pytest.raises(OSError, match="truncated"):
        await manager.restore(oid(7))
    assert not store.contains(oid(7))
    assert oid(7) in manager.objects, "still on disk"
    with pytest.raises(OSError, match="truncated"):
        await manager.restore(oid(7))  # not ObjectExistsError: the failed attempt was cleaned up
    write_file(manager.dir, "short.bin", data(7))  # whole now
    assert await manager.restore(oid(7)) == (True, None)
    assert read(store, 7) == data(7)


async def test_freeing_every_object_of_a_file_deletes_it(store: ObjectStore, manager: SpillManager) -> None:
    put_primary(store, 1)
    put_primary(store, 2)
    await manager.spill(2 * SIZE)
    (path,) = {e.path for e in manager.objects.values()}
    manager.free(oid(1))
    assert exists(path)
    manager.free(oid(1))  # twice is harmless
    manager.free(oid(2))
    assert not exists(path)
    assert manager.objects == {} and manager.spilled_bytes == 0


async def test_restoring_the_last_object_of_a_file_deletes_it(
    store: ObjectStore, manager: SpillManager
) -> None:
    put_primary(store, 1)
    await manager.spill(SIZE)
    (path,) = {e.path for e in manager.objects.values()}
    await manager.restore(oid(1))
    assert not exists(path)


async def test_register_a_directly_written_file(store: ObjectStore, manager: SpillManager) -> None:
    path = write_file(manager.dir, "direct.bin", b"\0" * PAGE + data(7))
    manager.register(oid(7), Spilled(path, PAGE, SIZE))
    assert manager.spilled_bytes == manager.spilled_total == SIZE

    assert await manager.restore(oid(7)) == (True, None)
    assert read(store, 7) == data(7)
    assert not exists(path), "its only object is back in the store"


async def test_close_removes_the_spill_directory(store: ObjectStore, manager: SpillManager) -> None:
    put_primary(store, 1)
    await manager.spill(SIZE)
    manager.close()
    assert not exists(manager.dir)
