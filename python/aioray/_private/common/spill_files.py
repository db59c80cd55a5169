"""Reading spilled objects straight from their files (shared by the raylet and the workers).

A spill file holds objects at page-aligned offsets, so a reader maps exactly
the pages of one object, read-only and zero-copy.
"""

from __future__ import annotations

import mmap


def map_spilled(path: str, offset: int, size: int) -> memoryview:
    """A read-only, zero-copy view of `size` bytes at `offset` of a spill file."""
    start = offset - offset % mmap.PAGESIZE
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), size + offset - start, offset=start, prot=mmap.PROT_READ)
    return memoryview(mm)[offset - start : offset - start + size]
