"""The node's shared-memory object store (Rust, via PyO3).

One segment per node holds the object table, allocator and LRU list, guarded by
a robust process-shared mutex: any process of the node creates, seals and reads
objects without talking to another process, and reads are zero-copy.
"""

from typing import Final, overload

from aioray.exceptions import ObjectExistsError as ObjectExistsError
from aioray.exceptions import ObjectStoreFullError as ObjectStoreFullError

MAX_ID_LEN: Final[int]
"""Longest object id in bytes (ids are 1 to 32 bytes)."""

class Buffer:
    """A zero-copy view of one object's payload in shared memory.

    Export it with ``memoryview(buf)`` (or hand it to ``pickle.loads(...,
    buffers=...)``, numpy, ...). It holds a reader reference, so the object
    cannot be evicted or freed under you, until :meth:`release` is called or
    the buffer is garbage-collected. Buffers from :meth:`ObjectStore.get` are
    read-only; the one from :meth:`ObjectStore.create` is writable.
    """

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    @property
    def readonly(self) -> bool:
        """Whether the buffer refuses writable exports."""
    @property
    def released(self) -> bool:
        """Whether the reader reference was dropped."""
    def release(self) -> None:
        """Drops the reader reference now.

        Raises ``BufferError`` while memoryviews of the buffer are alive:
        release those first. Releasing twice is harmless.
        """
    def __enter__(self) -> Buffer: ...
    def __exit__(self, *exc: object) -> None: ...

class ObjectStore:
    """A store segment as mapped by this process."""

    # `create` is one descriptor (rust/python.rs): on the class it makes a segment, on an instance an
    # object. A type checker cannot express that without mixing a static and an instance overload.
    @overload  # type: ignore[misc]
    @staticmethod
    def create(
        name: str, capacity: int, *, max_objects: int | None = None, populate: bool = False
    ) -> ObjectStore:
        """Creates a new segment ``name`` holding ``capacity`` payload bytes.

        The calling process owns it and must :meth:`destroy` it. ``max_objects``
        sizes the object table (default: one entry per 64 KiB of capacity,
        4,096 to 1,048,576); ``populate=True`` faults every page in now.
        Raises ``OSError`` if the name exists.
        """
    @overload
    def create(self, object_id: bytes, size: int) -> Buffer:
        """Creates an unsealed object and returns its writable buffer.

        Evicts least-recently-used objects (sealed, unpinned, unread) if
        needed. Raises :class:`ObjectExistsError` if the id exists and
        :class:`ObjectStoreFullError` at once when even evicting everything
        evictable would not make room. Seal it when written.
        """
    @staticmethod
    def attach(name: str) -> ObjectStore:
        """Maps the existing segment ``name`` (another process created it)."""
    @property
    def name(self) -> str:
        """The segment's name."""
    @property
    def destroyed(self) -> bool:
        """Whether :meth:`destroy` was called in this process."""
    def seal(self, object_id: bytes) -> None:
        """Makes the object immutable and visible to :meth:`get` in every process.

        Raises ``KeyError`` if absent and ``ValueError`` if already sealed.
        """
    def get(self, object_id: bytes) -> Buffer | None:
        """A read-only buffer of a sealed object, or ``None`` if absent or unsealed.

        Counts as a use for LRU eviction.
        """
    def contains(self, object_id: bytes) -> bool:
        """Whether the object is present and sealed."""
    def __contains__(self, object_id: bytes) -> bool: ...
    def delete(self, object_id: bytes) -> bool:
        """Deletes the object; returns whether it existed.

        The id is free again at once; the memory is reused when the last
        reader releases its buffer.
        """
    def pin(self, object_id: bytes) -> None:
        """Protects the object from eviction (``KeyError`` if absent)."""
    def unpin(self, object_id: bytes) -> None:
        """Makes the object evictable again (``KeyError`` if absent)."""
    def reap_dead_clients(self) -> int:
        """Gives back the reader references of processes that died without releasing them.

        Objects whose deletion waited on those readers are freed, objects they kept from
        eviction become evictable again, and unsealed objects the dead processes created
        are reclaimed. The raylet calls it when a worker exits. Returns the number of
        references given back. Each process's references are tracked on its first create
        or get, for up to 128 processes and 384 distinct objects per process.
        """
    def evict(self, nbytes: int) -> int:
        """Evicts LRU objects until ``nbytes`` are freed or nothing is evictable.

        Also reclaims unsealed objects whose creating process died. Returns
        the bytes freed (block sizes, headers included).
        """
    def evictable(self, limit: int = 1024) -> list[tuple[bytes, int]]:
        """Up to ``limit`` evictable objects as ``(id, size)``, least recently used first."""
    def spillable(self, limit: int = 1024) -> list[tuple[bytes, int]]:
        """Up to ``limit`` pinned, sealed objects nobody reads, as ``(id, size)``, least recently
        used first: the primary copies a raylet may spill to disk."""
    def usage(self) -> tuple[int, int]:
        """``(used, total)`` bytes of the data region, in constant time."""
    def stats(self) -> dict[str, int]:
        """Counters: ``capacity``, ``used_bytes``, ``object_bytes``, ``num_objects``,
        ``num_sealed``, ``num_pinned``, ``num_evicted``, ``evicted_bytes``,
        ``num_reclaimed``, ``evictable_bytes``, ``max_objects``, ``num_recoveries``,
        ``reaped_readers``."""
    def populate(self) -> None:
        """Faults in every page of the segment in this process, contents unchanged."""
    def verify(self) -> None:
        """Checks every metadata invariant; raises ``RuntimeError`` naming the first violation."""
    def destroy(self) -> None:
        """Creator only: removes the segment's name; memory goes when the last process unmaps it."""
    def _hold_lock(self, seconds: float) -> None: ...
