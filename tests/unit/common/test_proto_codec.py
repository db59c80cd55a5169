"""betterproto codes messages with its Rust codec (a dependency), not its pure-Python one."""

from __future__ import annotations

import betterproto

from aioray._proto.aioray import v1 as pb


def test_messages_are_coded_by_the_rust_codec() -> None:
    import betterproto_rust_codec  # noqa: F401  (the dependency is installed)

    assert betterproto.Message.parse.__name__ == "__parse_patch"
    assert betterproto.Message.__bytes__.__name__ == "__bytes_patch"


def test_maps_and_nested_messages_round_trip() -> None:
    amounts = {f"custom_group_{i}_{'ab' * 9}": 0.001 * i for i in range(50)} | {"CPU": 0.0, "é": -1.5}
    node = pb.NodeInfo(
        node_id=b"n" * 28,
        total=pb.ResourceMap(amounts=amounts),
        available=pb.ResourceMap(amounts={}),
        labels={"k": "v"},
        alive=True,
        store_capacity=1 << 40,
    )
    again = pb.NodeInfo().parse(bytes(node))
    assert again == node and again.total.amounts == amounts and again.labels == {"k": "v"}
