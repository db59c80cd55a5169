"""The GCS's placement policy for placement groups, on hand-made nodes."""

from __future__ import annotations

from aioray._private.common import proto_enums as E
from aioray._private.common.resources import ResourceSet
from aioray._private.gcs.placement_policy import Candidate, place
from aioray._proto.aioray import v1 as pb


def node(
    name: str, free: dict[str, float], total: dict[str, float] | None = None, **labels: str
) -> Candidate:
    return Candidate(name.encode(), ResourceSet(free), ResourceSet(total or free), labels)


def shapes(*bundles: dict[str, float]) -> list[ResourceSet]:
    return [ResourceSet(b) for b in bundles]


def cpus(n: float, count: int) -> list[ResourceSet]:
    return [ResourceSet({"CPU": n})] * count


def nodes_of(assignment: dict[int, bytes] | None) -> list[str]:
    assert assignment is not None
    return [assignment[i].decode() for i in sorted(assignment)]


# -- PACK ---------------------------------------------------------------------------------------


def test_pack_puts_everything_on_one_node_when_one_has_room() -> None:
    out = place(cpus(1, 3), E.PG_PACK, [node("a", {"CPU": 2}), node("b", {"CPU": 4})])
    assert nodes_of(out.assignment) == ["b", "b", "b"]


def test_pack_prefers_the_tightest_node_that_fits() -> None:
    out = place(cpus(1, 2), E.PG_PACK, [node("big", {"CPU": 16}), node("small", {"CPU": 2})])
    assert nodes_of(out.assignment) == ["small", "small"]


def test_pack_spans_nodes_when_none_fits_all_and_uses_as_few_as_it_can() -> None:
    out = place(cpus(1, 5), E.PG_PACK, [node("a", {"CPU": 2}), node("b", {"CPU": 3}), node("c", {"CPU": 3})])
    assert out.assignment is not None
    assert len(set(out.assignment.values())) == 2


def test_pack_fills_the_node_of_already_placed_bundles_first() -> None:
    out = place(cpus(1, 2), E.PG_PACK, [node("a", {"CPU": 4}), node("b", {"CPU": 1})], placed={0: b"b"})
    assert out.assignment == {1: b"b"}


# -- SPREAD -------------------------------------------------------------------------------------


def test_spread_uses_distinct_nodes_when_it_can() -> None:
    out = place(
        cpus(1, 3), E.PG_SPREAD, [node("a", {"CPU": 4}), node("b", {"CPU": 4}), node("c", {"CPU": 4})]
    )
    assert sorted(nodes_of(out.assignment)) == ["a", "b", "c"]


def test_spread_is_soft_and_shares_nodes_rather_than_wait() -> None:
    out = place(cpus(1, 4), E.PG_SPREAD, [node("a", {"CPU": 2}), node("b", {"CPU": 2})])
    assert sorted(nodes_of(out.assignment)) == ["a", "a", "b", "b"]


def test_spread_keeps_clear_of_nodes_holding_placed_bundles() -> None:
    out = place(cpus(1, 2), E.PG_SPREAD, [node("a", {"CPU": 4}), node("b", {"CPU": 4})], placed={0: b"a"})
    assert out.assignment == {1: b"b"}


# -- STRICT_PACK --------------------------------------------------------------------------------


def test_strict_pack_needs_one_node_with_room_for_all() -> None:
    nodes = [node("a", {"CPU": 2}), node("b", {"CPU": 2})]
    out = place(cpus(1, 3), E.PG_STRICT_PACK, nodes)
    assert out.assignment is None
    assert "STRICT_PACK" in out.reason and out.infeasible


def test_strict_pack_waits_for_resources_on_a_busy_node_that_could_fit() -> None:
    out = place(cpus(1, 3), E.PG_STRICT_PACK, [node("a", {"CPU": 1}, {"CPU": 4})])
    assert out.assignment is None
    assert not out.infeasible and out.reason.startswith("waiting for resources")


def test_strict_pack_sums_different_resources() -> None:
    bundles = shapes({"CPU": 1}, {"GPU": 1}, {"CPU": 1, "custom": 1})
    nodes = [node("cpu", {"CPU": 8}), node("gpu", {"CPU": 2, "GPU": 1, "custom": 1})]
    assert nodes_of(place(bundles, E.PG_STRICT_PACK, nodes).assignment) == ["gpu"] * 3


# -- STRICT_SPREAD ------------------------------------------------------------------------------


def test_strict_spread_puts_each_bundle_on_its_own_node() -> None:
    nodes = [node(n, {"CPU": 4}) for n in "abc"]
    assert sorted(nodes_of(place(cpus(1, 3), E.PG_STRICT_SPREAD, nodes).assignment)) == ["a", "b", "c"]


def test_strict_spread_with_too_few_nodes_is_infeasible() -> None:
    out = place(cpus(1, 3), E.PG_STRICT_SPREAD, [node("a", {"CPU": 8}), node("b", {"CPU": 8})])
    assert out.assignment is None and out.infeasible
    assert "3 distinct nodes" in out.reason


def test_strict_spread_finds_the_matching_a_greedy_pass_would_miss() -> None:
    # Bundle 0 fits on both nodes, bundle 1 only on "a": greedy would give "a" to bundle 0.
    bundles = shapes({"CPU": 1}, {"CPU": 1, "special": 1})
    nodes = [node("a", {"CPU": 4, "special": 1}), node("b", {"CPU": 1})]
    out = place(bundles, E.PG_STRICT_SPREAD, nodes)
    assert out.assignment == {0: b"b", 1: b"a"}


def test_strict_spread_rescheduling_avoids_the_nodes_of_surviving_bundles() -> None:
    nodes = [node(n, {"CPU": 4}) for n in "abc"]
    out = place(cpus(1, 3), E.PG_STRICT_SPREAD, nodes, placed={0: b"a", 2: b"c"})
    assert out.assignment == {1: b"b"}


# -- in general ---------------------------------------------------------------------------------


def test_nothing_fits_without_live_nodes() -> None:
    out = place(cpus(1, 1), E.PG_PACK, [])
    assert out.assignment is None and out.infeasible and "no node" in out.reason


def test_a_bundle_larger_than_any_node_is_infeasible_and_says_which() -> None:
    out = place(shapes({"CPU": 1}, {"GPU": 2}), E.PG_SPREAD, [node("a", {"CPU": 4, "GPU": 1})])
    assert out.assignment is None and out.infeasible
    assert "bundle 1" in out.reason


def test_an_already_placed_group_needs_nothing() -> None:
    assert place(cpus(1, 2), E.PG_STRICT_SPREAD, [], placed={0: b"a", 1: b"b"}).assignment == {}


def test_free_resources_are_debited_across_bundles_of_one_round() -> None:
    # Two nodes with 1.5 CPUs each: three bundles of 1 cannot fit.
    out = place(cpus(1, 3), E.PG_PACK, [node("a", {"CPU": 1.5}), node("b", {"CPU": 1.5})])
    assert out.assignment is None


def test_label_selectors_restrict_each_bundle() -> None:
    zone_b = [pb.LabelConstraint(key="zone", op=E.LABEL_IN, values=["b"])]
    not_gpu = [pb.LabelConstraint(key="gpu", op=E.LABEL_DOES_NOT_EXIST)]
    nodes = [
        node("a", {"CPU": 4}, zone="a"),
        node("b", {"CPU": 4}, zone="b", gpu="yes"),
        node("c", {"CPU": 4}),
    ]
    out = place(cpus(1, 2), E.PG_SPREAD, nodes, selectors=[zone_b, not_gpu])
    assert out.assignment is not None
    assert out.assignment[0] == b"b" and out.assignment[1] in (b"a", b"c")
    out = place(cpus(1, 2), E.PG_STRICT_PACK, nodes, selectors=[zone_b, not_gpu])
    assert out.assignment is None and out.infeasible


def test_the_policy_places_64_bundles_on_a_200_node_cluster() -> None:
    """(How fast: benches/scheduling_policy.py.)"""
    nodes = [node(f"n{i:03}", {"CPU": 8, "GPU": 1}) for i in range(200)]
    for strategy in (E.PG_PACK, E.PG_SPREAD, E.PG_STRICT_SPREAD):
        out = place(cpus(1, 64), strategy, nodes)
        assert out.assignment is not None and len(out.assignment) == 64
        if strategy == E.PG_STRICT_SPREAD:
            assert len(set(out.assignment)) == 64
