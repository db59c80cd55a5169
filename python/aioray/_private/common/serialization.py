"""Values on the wire and in the store: cloudpickle protocol 5 with out-of-band buffers.

A serialised value is one *frame*::

    header (64 bytes, padded) | in-band pickle | buffer 0 | buffer 1 | ...

with every part starting on a 64-byte boundary, so numpy arrays read from the
store are aligned, zero-copy, read-only views of shared memory. ObjectRefs met
while pickling are collected (they are "contained" in the value) so the owner
can count them.
"""

from __future__ import annotations

import pickle
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

_MAGIC = 0xA10A
_FLAG_ERROR = 1
_HEAD = struct.Struct("<HHIQ")  # magic, flags, number of buffers, in-band length
_ALIGN = 64

_local = threading.local()
# Exact types whose pickle cannot contain code, buffers or ObjectRefs.
_PLAIN = frozenset({int, float, bool, str, bytes, type(None)})


def _pad(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class SerializationError(TypeError):
    """A value could not be serialised; the message says which one and why."""


class Frame:
    """A value pickled with its out-of-band buffers, not yet laid out in memory."""

    __slots__ = ("buffers", "contained_refs", "inband", "is_error", "size")

    def __init__(self, inband: bytes, buffers: list[memoryview], contained_refs: list[Any], is_error: bool):
        self.inband = inband
        self.buffers = buffers
        self.contained_refs = contained_refs
        self.is_error = is_error
        header = _pad(_HEAD.size + 8 * len(buffers))
        size = header + _pad(len(inband))
        for b in buffers:
            size += _pad(b.nbytes)
        self.size = size

    def write_into(self, out: memoryview) -> None:
        """Lays the frame out in `out` (exactly `size` bytes, e.g. a store buffer)."""
        flags = _FLAG_ERROR if self.is_error else 0
        _HEAD.pack_into(out, 0, _MAGIC, flags, len(self.buffers), len(self.inband))
        pos = _HEAD.size
        for b in self.buffers:
            struct.pack_into("<Q", out, pos, b.nbytes)
            pos += 8
        pos = _pad(pos)
        out[pos : pos + len(self.inband)] = self.inband
        pos = _pad(pos + len(self.inband))
        for b in self.buffers:
            n = b.nbytes
            out[pos : pos + n] = b.cast("B") if b.ndim != 1 or b.format != "B" else b
            pos = _pad(pos + n)

    def to_bytes(self) -> bytes:
        out = bytearray(self.size)
        self.write_into(memoryview(out))
        return bytes(out)


def serialize(value: Any, *, is_error: bool = False) -> Frame:
    """Pickles `value`; raises :class:`SerializationError` saying what failed."""
    if type(value) in _PLAIN:  # nothing cloudpickle adds: skip its pickler set-up (~3 µs)
        return Frame(pickle.dumps(value, protocol=5), [], [], is_error)
    buffers: list[memoryview] = []
    refs: list[Any] = []
    previous = getattr(_local, "refs", None)
    _local.refs = refs
    try:
        inband = cloudpickle.dumps(value, protocol=5, buffer_callback=lambda b: buffers.append(b.raw()))
    except Exception as e:
        raise SerializationError(f"could not serialize {_describe(value)}: {type(e).__name__}: {e}") from e
    finally:
        _local.refs = previous
    return Frame(inband, buffers, refs, is_error)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def note_contained_ref(ref: Any) -> None:
    """Called by ObjectRef.__reduce__: records the ref in the value being serialised."""
    refs = getattr(_local, "refs", None)
    if refs is not None:
        refs.append(ref)


def deserialize(data: Buffer) -> tuple[Any, bool]:
    """Unpickles a frame; returns (value, is_error). Buffers stay views of `data`."""
    view = memoryview(data)
    magic, flags, nbuf, inband_len = _HEAD.unpack_from(view, 0)
    if magic != _MAGIC:
        raise ValueError("not an aioray value frame")
    pos = _HEAD.size
    sizes = struct.unpack_from(f"<{nbuf}Q", view, pos) if nbuf else ()
    pos = _pad(pos + 8 * nbuf)
    inband = view[pos : pos + inband_len]
    pos = _pad(pos + inband_len)
    buffers = []
    for n in sizes:
        buffers.append(view[pos : pos + n])
        pos = _pad(pos + n)
    is_error = bool(flags & _FLAG_ERROR)
    try:
        return pickle.loads(inband, buffers=buffers), is_error
    except Exception as e:
        if not is_error:
            raise
        # An error raised remotely whose class cannot be rebuilt here (not importable, or its
        # __init__ takes other arguments): it still arrives as an error, with what can be said.
        from aioray.exceptions import RayError

        return RayError(f"a remote error could not be deserialized here ({type(e).__name__}: {e})"), True


def dumps_plain(value: Any) -> bytes:
    """Control-plane payloads (task specs, results): plain pickle, no frames."""
    return pickle.dumps(value, protocol=5)


loads_plain: Callable[[bytes], Any] = pickle.loads


def peek_flags(frame: bytes | memoryview) -> tuple[int, bool]:
    """(number of out-of-band buffers, is_error) of a frame, without unpickling it."""
    _, flags, nbuf, _ = _HEAD.unpack_from(frame, 0)
    return nbuf, bool(flags & _FLAG_ERROR)
