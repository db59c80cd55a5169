"""The object writer over a real store segment: a retried task's returns replace its earlier attempt's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest

from aioray._private.common import serialization
from aioray._private.common.ids import IdGenerator
from aioray._private.core_worker.ownership import OwnershipTable
from aioray._private.core_worker.runtime import Runtime
from aioray._private.core_worker.writer import ObjectWriter
from aioray._store import ObjectStore


@pytest.fixture
def store(shm_name: str) -> Iterator[ObjectStore]:
    s = ObjectStore.create(shm_name, 8 << 20)
    try:
        yield s
    finally:
        s.destroy()


def writer_on(store: ObjectStore) -> ObjectWriter:
    # Writes of small objects that need no spilling never touch the runtime or the table.
    return ObjectWriter(
        cast(Runtime, None),
        cast(OwnershipTable, None),
        store,
        cast(IdGenerator, None),
        b"n" * 16,
        "/nonexistent",
    )


def read(store: ObjectStore, oid: bytes) -> Any:
    buf = store.get(oid)
    assert buf is not None
    try:
        value, is_error = serialization.deserialize(buf)
        assert not is_error
        return value
    finally:
        buf.release()


def test_a_sealed_copy_from_an_earlier_attempt_is_replaced(store: ObjectStore) -> None:
    oid = b"r" * 20
    writer = writer_on(store)
    writer.write_to_store(oid, serialization.serialize(b"first attempt" * 1000))
    writer.write_to_store(oid, serialization.serialize(b"retry" * 3000))
    assert read(store, oid) == b"retry" * 3000
    assert store.stats()["num_objects"] == 1


def test_a_half_written_copy_is_reclaimed(store: ObjectStore) -> None:
    oid = b"h" * 20
    half = store.create(oid, 4096)  # an attempt that never sealed (its creator is this live process)
    half.release()
    writer_on(store).write_to_store(oid, serialization.serialize(list(range(100))))
    assert read(store, oid) == list(range(100))


def test_a_reader_of_the_replaced_copy_keeps_its_bytes(store: ObjectStore) -> None:
    oid = b"k" * 20
    writer = writer_on(store)
    writer.write_to_store(oid, serialization.serialize(b"old" * 5000))
    held = store.get(oid)
    assert held is not None
    writer.write_to_store(oid, serialization.serialize(b"new" * 5000))
    try:
        assert serialization.deserialize(held) == (b"old" * 5000, False)
    finally:
        held.release()
    assert read(store, oid) == b"new" * 5000
    store.verify()
