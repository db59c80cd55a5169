"""Where a lease request goes: Ray's scheduling strategies on hand-made clusters."""

from __future__ import annotations

from aioray._private.common import bundles
from aioray._private.common import proto_enums as E
from aioray._private.common.resources import ResourceSet
from aioray._private.raylet import policy
from aioray._private.raylet.policy import INFEASIBLE, QUEUE, SPILL, Decision, Node, SpreadCursor, decide
from aioray._proto.aioray import v1 as pb

DEFAULT = pb.SchedulingStrategy()
ONE_CPU = ResourceSet({"CPU": 1})


def node(
    name: str,
    total: dict[str, float],
    available: dict[str, float] | None = None,
    labels: dict[str, str] | None = None,
    local: bool = False,
) -> Node:
    return Node(
        name.encode(),
        f"{name}:1",
        ResourceSet(total),
        ResourceSet.from_wire(total if available is None else available),
        labels or {},
        local,
    )


def cpus(n: float) -> ResourceSet:
    return ResourceSet({"CPU": n})


def go(
    nodes: list[Node], shape: ResourceSet = ONE_CPU, strategy: pb.SchedulingStrategy = DEFAULT, **kw: bool
) -> Decision:
    return decide(shape, strategy, nodes, kw.get("no_spillback", False), SpreadCursor())


def where(d: Decision) -> str:
    return "here" if d.action == QUEUE else d.address.split(":")[0] if d.action == SPILL else "nowhere"


# -- DEFAULT: Ray's hybrid policy ----------------------------------------------------------------


def test_default_packs_onto_this_node_while_it_is_below_half_used() -> None:
    nodes = [node("local", {"CPU": 4}, {"CPU": 3}, local=True), node("other", {"CPU": 4})]
    assert where(go(nodes)) == "here"


def test_default_spreads_once_this_node_is_half_used() -> None:
    nodes = [node("local", {"CPU": 4}, {"CPU": 2}, local=True), node("other", {"CPU": 4})]
    assert where(go(nodes)) == "other"


def test_default_picks_the_least_used_among_nodes_above_the_threshold() -> None:
    nodes = [
        node("local", {"CPU": 4}, {"CPU": 0}, local=True),
        node("busy", {"CPU": 4}, {"CPU": 1}),
        node("half", {"CPU": 4}, {"CPU": 2}),
    ]
    assert where(go(nodes)) == "half"


def test_default_packs_onto_other_nodes_in_view_order_below_the_threshold() -> None:
    nodes = [
        node("local", {"CPU": 4}, {"CPU": 0}, local=True),
        node("first", {"CPU": 8}, {"CPU": 6}),
        node("second", {"CPU": 8}),
    ]
    assert where(go(nodes)) == "first"


def test_default_queues_here_when_no_node_is_free_but_this_one_can_run_it() -> None:
    nodes = [node("local", {"CPU": 4}, {"CPU": 0}, local=True), node("other", {"CPU": 4}, {"CPU": 0})]
    assert where(go(nodes)) == "here"


def test_default_sends_what_never_fits_here_to_a_node_that_can() -> None:
    shape = ResourceSet({"GPU": 1})
    nodes = [
        node("local", {"CPU": 4}, local=True),
        node("gpu-busy", {"GPU": 1}, {"GPU": 0}),
        node("gpu", {"GPU": 2}),
    ]
    # Even a request spilled here already moves on: this node can never run it.
    assert where(go(nodes, shape)) == where(go(nodes, shape, no_spillback=True)) == "gpu"


def test_a_request_spilled_here_stays_if_this_node_can_run_it() -> None:
    nodes = [node("local", {"CPU": 4}, {"CPU": 0}, local=True), node("other", {"CPU": 4})]
    assert where(go(nodes, no_spillback=True)) == "here"


def test_infeasible_when_no_live_node_has_the_shape() -> None:
    nodes = [node("local", {"CPU": 4}, local=True), node("other", {"CPU": 8})]
    d = go(nodes, cpus(16))
    assert d.action == INFEASIBLE and "16" in d.message


def test_a_shape_of_a_placement_group_not_committed_yet_waits_here() -> None:
    shape = bundles.shape_in_bundle(cpus(1), b"\x01" * 14, 0)
    assert go([node("local", {"CPU": 4}, local=True)], shape).action == QUEUE


# -- SPREAD --------------------------------------------------------------------------------------


def test_spread_goes_round_the_equally_used_nodes() -> None:
    nodes = [node("a", {"CPU": 4}, local=True), node("b", {"CPU": 4}), node("c", {"CPU": 4})]
    cursor = SpreadCursor()
    spread = pb.SchedulingStrategy(kind=E.STRATEGY_SPREAD)
    picks = [where(decide(cpus(1), spread, nodes, False, cursor)) for _ in range(3)]
    assert sorted(picks) == ["b", "c", "here"]


def test_spread_picks_the_least_used_node() -> None:
    nodes = [
        node("a", {"CPU": 4}, {"CPU": 3}, local=True),
        node("b", {"CPU": 4}, {"CPU": 2}),
        node("c", {"CPU": 4}),
    ]
    assert where(go(nodes, strategy=pb.SchedulingStrategy(kind=E.STRATEGY_SPREAD))) == "c"


# -- NODE_AFFINITY -------------------------------------------------------------------------------


def affinity(name: str, soft: bool, spill: bool = False) -> pb.SchedulingStrategy:
    return pb.SchedulingStrategy(
        kind=E.STRATEGY_NODE_AFFINITY, node_id=name.encode(), soft=soft, spill_on_unavailable=spill
    )


def test_affinity_goes_to_its_node_even_when_busy() -> None:
    nodes = [node("local", {"CPU": 4}, local=True), node("target", {"CPU": 2}, {"CPU": 0})]
    assert where(go(nodes, strategy=affinity("target", soft=False))) == "target"
    assert where(go(nodes, strategy=affinity("local", soft=False))) == "here"


def test_hard_affinity_to_a_dead_or_too_small_node_is_infeasible() -> None:
    nodes = [node("local", {"CPU": 4}, local=True), node("small", {"CPU": 1})]
    dead = go(nodes, strategy=affinity("gone", soft=False))
    assert dead.action == INFEASIBLE and "dead or unknown" in dead.message
    assert go(nodes, cpus(2), affinity("small", soft=False)).action == INFEASIBLE


def test_soft_affinity_falls_back_when_the_node_is_dead_or_too_small() -> None:
    nodes = [node("local", {"CPU": 4}, local=True), node("small", {"CPU": 1})]
    assert where(go(nodes, strategy=affinity("gone", soft=True))) == "here"
    assert where(go(nodes, cpus(2), affinity("small", soft=True))) == "here"


def test_soft_affinity_spills_on_unavailable_only_when_asked() -> None:
    nodes = [node("local", {"CPU": 4}, local=True), node("target", {"CPU": 2}, {"CPU": 0})]
    assert where(go(nodes, strategy=affinity("target", soft=True))) == "target"
    assert where(go(nodes, strategy=affinity("target", soft=True, spill=True))) == "here"


# -- NODE_LABEL ----------------------------------------------------------------------------------


def label(key: str, op: int, *values: str) -> pb.LabelConstraint:
    return pb.LabelConstraint(key=key, op=pb.LabelConstraintOp(op), values=list(values))


def test_labels_keep_to_matching_nodes() -> None:
    nodes = [
        node("local", {"CPU": 4}, labels={"zone": "a"}, local=True),
        node("b", {"CPU": 4}, labels={"zone": "b"}),
    ]
    strategy = pb.SchedulingStrategy(kind=E.STRATEGY_NODE_LABEL, hard=[label("zone", E.LABEL_IN, "b", "c")])
    assert where(go(nodes, strategy=strategy)) == "b"
    none = pb.SchedulingStrategy(kind=E.STRATEGY_NODE_LABEL, hard=[label("zone", E.LABEL_IN, "z")])
    d = go(nodes, strategy=none)
    assert d.action == INFEASIBLE and "zone in ['z']" in d.message


def test_label_operators() -> None:
    labels = {"zone": "a", "gpu": "h100"}
    assert policy.matches(labels, policy.constraints_of([label("zone", E.LABEL_NOT_IN, "b")]))
    assert not policy.matches(labels, policy.constraints_of([label("zone", E.LABEL_NOT_IN, "a")]))
    assert policy.matches(
        labels, policy.constraints_of([label("spot", E.LABEL_NOT_IN, "yes")])
    )  # missing counts as not in
    assert policy.matches(labels, policy.constraints_of([label("gpu", E.LABEL_EXISTS)]))
    assert policy.matches(labels, policy.constraints_of([label("spot", E.LABEL_DOES_NOT_EXIST)]))
    assert not policy.matches(labels, policy.constraints_of([label("gpu", E.LABEL_DOES_NOT_EXIST)]))


def test_soft_labels_are_preferred_while_a_matching_node_is_free() -> None:
    nodes = [
        node("local", {"CPU": 4}, labels={"tier": "x"}, local=True),
        node("pref", {"CPU": 4}, labels={"tier": "x", "ssd": "yes"}),
    ]
    strategy = pb.SchedulingStrategy(
        kind=E.STRATEGY_NODE_LABEL,
        hard=[label("tier", E.LABEL_IN, "x")],
        soft_labels=[label("ssd", E.LABEL_EXISTS)],
    )
    assert where(go(nodes, strategy=strategy)) == "pref"
    nodes[1] = node("pref", {"CPU": 4}, {"CPU": 0}, labels={"tier": "x", "ssd": "yes"})
    assert where(go(nodes, strategy=strategy)) == "here"  # busy: a hard match that is free


def test_a_requeued_request_may_move_only_where_its_strategy_allows() -> None:
    nodes = [node("local", {"CPU": 1}, local=True), node("b", {"CPU": 1}, labels={"k": "v"})]
    hard = pb.SchedulingStrategy(kind=E.STRATEGY_NODE_LABEL, hard=[label("k", E.LABEL_IN, "v")])
    assert policy.allowed_nodes(hard, nodes) == frozenset({b"b"})
    assert policy.allowed_nodes(affinity("local", soft=False), nodes) == frozenset({b"local"})
    assert policy.allowed_nodes(DEFAULT, nodes) is None
