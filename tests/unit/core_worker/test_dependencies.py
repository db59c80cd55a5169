"""Packing task arguments at submission and resolving ref arguments before a push."""

from __future__ import annotations

import threading

import pytest

from aioray._private.common import serialization, task_spec
from aioray._private.core_worker.dependencies import DependencyResolver
from aioray._private.core_worker.object_ref import ObjectRef
from aioray._private.core_worker.ownership import ObjectValue, OwnershipTable

ME = "me:1"
OTHER = "other:1"
LIMIT = 256
DEAD_NODE = b"dead-node"


def oid(n: int) -> bytes:
    return n.to_bytes(20, "little")


def ref(n: int, owner: str = OTHER) -> ObjectRef:
    return ObjectRef(oid(n), owner, _count=False)


def value_of(arg: tuple[object, ...]) -> object:
    assert arg[0] == task_spec.ARG_INLINE
    value, is_error = serialization.deserialize(arg[1])  # type: ignore[arg-type]
    assert not is_error
    return value


class Harness:
    """A resolver over a real ownership table, with the store put and the value waits faked."""

    def __init__(self) -> None:
        self.released: list[object] = []
        self.table = OwnershipTable(ME, self.released.extend)
        self.puts: list[serialization.Frame] = []
        self.values: dict[bytes, list[ObjectValue]] = {}
        self.waits: list[tuple[bytes, str, float | None]] = []
        self.reconstructed: list[bytes] = []
        self.dead_nodes: set[bytes] = set()
        self.resolver = DependencyResolver(
            self.table, self.put_frame, self.wait_value, self.reconstruct, self.dead_nodes, lambda: ME, LIMIT
        )

    def put_frame(self, frame: serialization.Frame) -> ObjectRef:
        self.puts.append(frame)
        return ref(1000 + len(self.puts), ME)

    async def wait_value(self, object_id: bytes, owner: str, timeout: float | None) -> ObjectValue:
        self.waits.append((object_id, owner, timeout))
        values = self.values[object_id]
        return values.pop(0) if len(values) > 1 else values[0]

    async def reconstruct(self, object_id: bytes) -> None:
        self.reconstructed.append(object_id)


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- pack ---------------------------------------------------------------------------------------


def test_small_values_travel_inline(h: Harness) -> None:
    packed = h.resolver.pack("f", (1, "two", [3.0]), {})
    assert [value_of(a) for a in packed.args] == [1, "two", [3.0]]
    assert packed.deps == [] and packed.kept_alive == []
    assert h.puts == [] and len(h.table) == 0


def test_a_large_value_goes_through_the_store_and_is_kept_alive(h: Harness) -> None:
    big = b"x" * (LIMIT * 4)
    packed = h.resolver.pack("f", (1, big), {})
    (frame,) = h.puts
    assert frame.size > LIMIT
    assert serialization.deserialize(frame.to_bytes())[0] == big
    assert packed.deps == [(1, oid(1001), ME)]
    assert packed.args[1] == (task_spec.ARG_INLINE, b""), "filled in when resolved"
    assert packed.kept_alive == [(oid(1001), ME)]
    entry = h.table.get(oid(1001))
    assert entry is not None and entry.owned and entry.submitted == 1


def test_ref_arguments_become_dependencies_counted_as_submitted(h: Harness) -> None:
    packed = h.resolver.pack("f", (ref(1), 5, ref(1)), {})
    assert packed.deps == [(0, oid(1), OTHER), (2, oid(1), OTHER)]
    assert packed.args[0] == packed.args[2] == (task_spec.ARG_INLINE, b"")
    assert value_of(packed.args[1]) == 5
    assert packed.kept_alive == [(oid(1), OTHER), (oid(1), OTHER)]
    entry = h.table.get(oid(1))
    assert entry is not None and not entry.owned and entry.submitted == 2


def test_refs_inside_a_value_are_kept_alive_but_not_resolved(h: Harness) -> None:
    packed = h.resolver.pack("f", ([ref(7), ref(8, ME)],), {})
    assert packed.deps == []
    assert packed.kept_alive == [(oid(7), OTHER), (oid(8), ME)]
    assert h.table.get(oid(7)).submitted == 1  # type: ignore[union-attr]
    assert h.table.get(oid(8)).submitted == 1  # type: ignore[union-attr]


def test_kept_alive_refs_are_released_once_the_call_is_done(h: Harness) -> None:
    packed = h.resolver.pack("f", (ref(1), [ref(2)]), {})
    h.table.remove_submitted([o for o, _ in packed.kept_alive])
    assert len(h.table) == 0
    assert sorted(r[0] for r in h.released) == [oid(1), oid(2)]  # type: ignore[index]


def test_keyword_arguments_come_after_the_positional_ones(h: Harness) -> None:
    packed = h.resolver.pack("f", (1,), {"x": 2, "dep": ref(3)})
    assert value_of(packed.args[0]) == 1
    assert value_of(packed.args[1]) == 2
    assert packed.deps == [(2, oid(3), OTHER)]


def test_an_unpicklable_argument_is_named_in_the_type_error(h: Harness) -> None:
    with pytest.raises(TypeError, match=r"^f: argument 1 cannot be sent to a worker: .*lock"):
        h.resolver.pack("f", (1, threading.Lock()), {})


def test_an_unpicklable_keyword_argument_is_named_in_the_type_error(h: Harness) -> None:
    with pytest.raises(TypeError, match=r"^g: keyword argument 'guard' cannot be sent to a worker"):
        h.resolver.pack("g", (1,), {"ok": 2, "guard": threading.Lock()})


def test_a_failed_pack_leaves_no_submitted_counts_behind(h: Harness) -> None:
    h.table.add_local(oid(1), OTHER)  # the caller's own handle on ref(1)
    big = b"x" * (LIMIT * 4)
    with pytest.raises(TypeError, match=r"^f: argument 3 cannot be sent to a worker"):
        h.resolver.pack("f", (ref(1), big, [ref(2)], threading.Lock()), {})
    assert len(h.puts) == 1, "the large argument was put before the failure"
    entry = h.table.get(oid(1))
    assert entry is not None and entry.submitted == 0 and entry.local == 1
    assert h.table.get(oid(2)) is None
    assert h.table.get(oid(1001)) is None, "the put argument is no longer kept alive"
    assert sorted(r[0] for r in h.released) == [oid(2), oid(1001)]  # type: ignore[index]
    assert len(h.table) == 1


# -- resolve ------------------------------------------------------------------------------------


async def test_resolve_fills_inline_values_and_store_locations(h: Harness) -> None:
    inline = serialization.serialize({"a": 1}).to_bytes()
    h.values[oid(1)] = [ObjectValue(inline)]
    h.values[oid(2)] = [ObjectValue(None, b"node-2", "raylet-2:1", 12345)]
    packed = h.resolver.pack("f", (ref(1), 9, ref(2)), {})
    assert await h.resolver.resolve(packed.args, packed.deps) is None
    assert packed.args[0] == (task_spec.ARG_INLINE, inline)
    assert value_of(packed.args[1]) == 9
    assert packed.args[2] == (task_spec.ARG_STORE, oid(2), b"node-2", 12345, "raylet-2:1")
    assert h.waits == [(oid(1), OTHER, None), (oid(2), OTHER, None)]
    assert h.reconstructed == []


async def test_resolve_returns_the_error_frame_of_a_failed_dependency(h: Harness) -> None:
    error = serialization.serialize(ValueError("upstream failed"), is_error=True).to_bytes()
    h.values[oid(1)] = [ObjectValue(error)]
    h.values[oid(2)] = [ObjectValue(serialization.serialize(2).to_bytes())]
    packed = h.resolver.pack("f", (ref(1), ref(2)), {})
    assert await h.resolver.resolve(packed.args, packed.deps) == error
    assert [w[0] for w in h.waits] == [oid(1)], "stops at the first failure"


async def test_resolve_rebuilds_an_owned_dependency_whose_node_died(h: Harness) -> None:
    h.dead_nodes.add(DEAD_NODE)
    h.values[oid(1)] = [
        ObjectValue(None, DEAD_NODE, "dead:1", 100),
        ObjectValue(None, b"alive", "alive:1", 100),
    ]
    packed = h.resolver.pack("f", (ref(1, ME),), {})
    assert await h.resolver.resolve(packed.args, packed.deps) is None
    assert h.reconstructed == [oid(1)]
    assert len(h.waits) == 2
    assert packed.args[0] == (task_spec.ARG_STORE, oid(1), b"alive", 100, "alive:1")


async def test_resolve_leaves_a_borrowed_dependency_on_a_dead_node_to_its_owner(h: Harness) -> None:
    h.dead_nodes.add(DEAD_NODE)
    h.values[oid(1)] = [ObjectValue(None, DEAD_NODE, "dead:1", 100)]
    packed = h.resolver.pack("f", (ref(1, OTHER),), {})
    assert await h.resolver.resolve(packed.args, packed.deps) is None
    assert h.reconstructed == []
    assert packed.args[0] == (task_spec.ARG_STORE, oid(1), DEAD_NODE, 100, "dead:1")
