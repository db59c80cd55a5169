"""betterproto codes messages with its Rust codec (a dependency), not its pure-Python one, and its
attribute access is replaced by a faster one that behaves the same."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import betterproto

import aioray  # noqa: F401  (installs the faster attribute access, as every aioray process does)
from aioray._private.common import message_access
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


# -- faster attribute access (common/message_access.py) ----------------------------------------------
@dataclass(eq=False, repr=False)
class _Choice(betterproto.Message):
    name: str = betterproto.string_field(1, group="kind")
    number: int = betterproto.int64_field(2, group="kind")
    empty: pb.Empty = betterproto.message_field(3, group="kind")  # noqa: RUF009
    maybe: int | None = betterproto.int32_field(4, optional=True)
    items: list[pb.ResourceMap] = betterproto.message_field(5)  # noqa: RUF009


def _behaviour() -> list[object]:
    """What a program can observe of messages: defaults, one-of groups, presence, the wire form."""
    seen: list[object] = []
    choice = _Choice()
    seen += [bytes(choice), choice.maybe, choice.items, betterproto.which_one_of(choice, "kind")]
    seen.append(betterproto.serialized_on_wire(choice))
    choice.name = "a"
    seen += [bytes(choice), betterproto.which_one_of(choice, "kind")]
    choice.number = 0  # a one-of's chosen field is sent even when it is the default
    seen += [bytes(choice), betterproto.which_one_of(choice, "kind")]
    try:
        seen.append(choice.name)
    except AttributeError as e:
        seen.append(("AttributeError", str(e)))
    choice.empty = pb.Empty()  # an empty message set as a field is sent
    seen += [bytes(choice), betterproto.which_one_of(choice, "kind")]
    choice.maybe = 0
    seen.append(bytes(choice))
    again = _Choice().parse(bytes(choice))
    seen += [again == choice, repr(again), again.maybe, betterproto.which_one_of(again, "kind")]
    seen += [
        repr(_Choice(number=5)),
        bytes(_Choice(number=5)),
        betterproto.serialized_on_wire(_Choice(number=5)),
    ]
    node = pb.NodeInfo(node_id=b"n", total=pb.ResourceMap(amounts={"CPU": 2.0}))
    seen += [bytes(node), node.available, node.labels, repr(pb.NodeInfo().parse(bytes(node)))]
    nested = pb.NodeInfo()
    nested.total.amounts["x"] = 1.0  # a default message read, then changed in place
    seen += [bytes(nested), betterproto.serialized_on_wire(nested.available)]
    return seen


def test_faster_attribute_access_behaves_as_betterproto() -> None:
    assert message_access.installed()  # by `import aioray`
    fast = _behaviour()
    try:
        for name, method in message_access.ORIGINAL_METHODS.items():
            setattr(betterproto.Message, name, method)
        original = _behaviour()
    finally:
        message_access.install()
    assert fast == original


def test_betterproto_is_the_version_the_replacements_were_written_for() -> None:
    # Another version may have changed what the replaced methods must do: check them against it,
    # then move the pin.
    assert betterproto.__version__ == message_access.PINNED_VERSION


def test_no_field_name_starts_with_an_underscore() -> None:
    # The faster __getattribute__ takes such names for betterproto's own state.
    for message in vars(pb).values():
        if isinstance(message, type) and issubclass(message, betterproto.Message):
            assert not [f.name for f in dataclasses.fields(message) if f.name.startswith("_")], message
