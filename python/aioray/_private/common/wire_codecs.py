"""Hand-written codecs for the protocol messages whose generic betterproto coding is the cost.

betterproto decodes each entry of a ``map<string, double>`` as a message of its own: a
`ResourceMap` of 43 entries (a node holding ten placement groups: each adds its bundles'
resource names) took ~5 ms to parse and as long to write, and nodes' totals travel in every
`NodeInfo` published to every raylet. These codecs write protobuf's map encoding (one
length-delimited entry per key: key field 1, value field 2, a zero value left out) and read any
encoding of it; anything they do not expect (unknown fields, another wire type) goes to
betterproto's own decoder, so they can only be faster, never different.

`install()` replaces the methods on the generated classes; nested messages are coded through
the same methods, so a `NodeInfo` or `BundleReply` benefits too. It runs once per process, when
this package's `rpc` module is imported (every process that speaks the protocol does).
"""

from __future__ import annotations

import struct
from typing import Any

from aioray._proto.aioray import v1 as pb

_DOUBLE = struct.Struct("<d")
_ENTRY_TAG = 0x0A  # field 1, length-delimited
_KEY_TAG = 0x0A  # an entry's field 1 (the key), length-delimited
_DOUBLE_VALUE_TAG = 0x11  # an entry's field 2 (the value), 64-bit


class _Unexpected(Exception):
    """Bytes these codecs do not handle; betterproto's decoder takes them."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise _Unexpected
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Unexpected


def _encode_varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_amounts(data: bytes) -> dict[str, float]:
    """The ``amounts`` of an encoded `ResourceMap`; `_Unexpected` for anything but its one field."""
    out: dict[str, float] = {}
    pos = 0
    end_all = len(data)
    unpack = _DOUBLE.unpack_from
    while pos < end_all:
        if data[pos] != _ENTRY_TAG:
            raise _Unexpected
        length, pos = _varint(data, pos + 1)
        end = pos + length
        if end > end_all:
            raise _Unexpected
        key = ""
        value = 0.0
        while pos < end:
            tag = data[pos]
            if tag == _KEY_TAG:
                size, pos = _varint(data, pos + 1)
                if pos + size > end:
                    raise _Unexpected
                key = data[pos : pos + size].decode("utf-8")
                pos += size
            elif tag == _DOUBLE_VALUE_TAG and pos + 9 <= end:
                value = unpack(data, pos + 1)[0]
                pos += 9
            else:
                raise _Unexpected
        out[key] = value
    return out


def encode_amounts(amounts: dict[str, float]) -> bytes:
    parts = []
    pack = _DOUBLE.pack
    for key, value in amounts.items():
        raw = key.encode("utf-8")
        # A zero value is left out of its entry: it is the default.
        entry = b"\x0a" + _encode_varint(len(raw)) + raw + (b"\x11" + pack(value) if value else b"")
        parts.append(b"\x0a" + _encode_varint(len(entry)) + entry)
    return b"".join(parts)


_generic_parse = pb.ResourceMap.parse
_generic_bytes = pb.ResourceMap.__bytes__


def _parse_resource_map(self: pb.ResourceMap, data: bytes) -> pb.ResourceMap:
    try:
        amounts = decode_amounts(bytes(data))
    except (_Unexpected, UnicodeDecodeError):
        return _generic_parse(self, data)
    self.amounts = amounts
    return self


def _resource_map_bytes(self: pb.ResourceMap) -> bytes:
    if self._unknown_fields:
        return bytes(_generic_bytes(self))
    return encode_amounts(self.amounts)


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    cls: Any = pb.ResourceMap
    cls.parse = _parse_resource_map
    cls.__bytes__ = _resource_map_bytes
    cls.SerializeToString = _resource_map_bytes
    _installed = True


__all__ = ["decode_amounts", "encode_amounts", "install"]
