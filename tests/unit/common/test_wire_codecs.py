"""The hand-written ResourceMap codec against betterproto's own: each reads what the other wrote,
and whatever the codec does not expect is handed to betterproto."""

from __future__ import annotations

import math

from aioray._private.common import wire_codecs
from aioray._proto.aioray import v1 as pb

MAPS = [
    {},
    {"CPU": 2.0},
    {"CPU": 0.0, "GPU": -0.0, "é": 1e-3, "": 5.0, "x" * 300: -1.5, "big": 1e300},
    {f"custom_group_{i}_{'ab' * 9}": 0.001 * i for i in range(200)},
]


def generic_bytes(amounts: dict[str, float]) -> bytes:
    return bytes(wire_codecs._generic_bytes(pb.ResourceMap(amounts=amounts)))


def generic_parse(data: bytes) -> dict[str, float]:
    return dict(wire_codecs._generic_parse(pb.ResourceMap(), data).amounts)


def test_betterproto_reads_what_the_codec_wrote() -> None:
    for amounts in MAPS:
        assert generic_parse(wire_codecs.encode_amounts(amounts)) == amounts


def test_decoding_reads_back_what_betterproto_wrote() -> None:
    for amounts in MAPS:
        assert wire_codecs.decode_amounts(generic_bytes(amounts)) == amounts


def test_installed_codec_serves_nested_messages() -> None:
    wire_codecs.install()
    amounts = MAPS[2]
    node = pb.NodeInfo(node_id=b"n", total=pb.ResourceMap(amounts=amounts), labels={"k": "v"})
    again = pb.NodeInfo().parse(bytes(node))
    assert again.total.amounts == amounts and again.labels == {"k": "v"} and again == node
    assert math.copysign(1.0, again.total.amounts["GPU"]) == 1.0  # a zero is left out, read back as 0.0


def test_unexpected_bytes_go_to_betterproto() -> None:
    wire_codecs.install()
    # A field this version does not know (a newer peer's): betterproto reads it and keeps it.
    data = generic_bytes({"CPU": 1.0}) + b"\x10\x01"
    parsed = pb.ResourceMap().parse(data)
    assert parsed.amounts == generic_parse(data) == {"CPU": 1.0}
    assert bytes(parsed).endswith(b"\x10\x01")
    truncated = generic_bytes({"CPU": 2.0})[:-3]
    try:
        wire_codecs.decode_amounts(truncated)
    except wire_codecs._Unexpected:
        pass
    else:
        raise AssertionError("a truncated entry was decoded")
