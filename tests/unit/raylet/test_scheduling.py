"""The raylet's queue: dispatch and re-planning, on hand-made cluster views."""

from __future__ import annotations

from aioray._private.common.resources import ResourceSet
from aioray._private.raylet.scheduling import plan_dispatch, replan
from aioray._proto.aioray import v1 as pb

LOCAL = b"local"


def node(
    node_id: bytes, total: dict[str, float], available: dict[str, float] | None = None, alive: bool = True
) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=node_id,
        address=f"{node_id.decode()}:1",
        total=pb.ResourceMap(amounts=total),
        available=pb.ResourceMap(amounts=total if available is None else available),
        alive=alive,
    )


def cpus(n: float) -> ResourceSet:
    return ResourceSet({"CPU": n})


# -- plan_dispatch -----------------------------------------------------------------------------


def test_grants_in_order_up_to_the_idle_workers() -> None:
    plan = plan_dispatch([cpus(1)] * 4, cpus(8), idle_workers=2)
    assert plan.grant == [0, 1]
    assert plan.waiting == [2, 3]
    assert plan.workers_needed == 2


def test_a_request_over_budget_waits_but_later_smaller_ones_still_go() -> None:
    plan = plan_dispatch([cpus(1), cpus(4), cpus(1)], cpus(2), idle_workers=4)
    assert plan.grant == [0, 2]
    assert plan.waiting == [1]
    assert plan.workers_needed == 0


def test_workers_needed_counts_fitting_requests_without_idle_workers() -> None:
    plan = plan_dispatch([cpus(1), cpus(8), cpus(1), cpus(1)], cpus(3), idle_workers=1)
    assert plan.grant == [0]
    assert plan.waiting == [1, 2, 3]
    assert plan.workers_needed == 2  # 2 and 3 fit the budget; 1 never did


def test_one_free_cpu_asks_for_one_worker_however_many_are_queued() -> None:
    plan = plan_dispatch([cpus(1)] * 50, cpus(1), idle_workers=0)
    assert plan.grant == []
    assert plan.waiting == list(range(50))
    assert plan.workers_needed == 1


def test_fractional_requests_share_the_budget_exactly() -> None:
    plan = plan_dispatch([cpus(0.1)] * 11, cpus(1), idle_workers=20)
    assert plan.grant == list(range(10))
    assert plan.waiting == [10]


# -- replan ------------------------------------------------------------------------------------


def test_replan_keeps_what_the_local_budget_covers_and_moves_the_rest() -> None:
    view = [node(LOCAL, {"CPU": 1}), node(b"other", {"CPU": 1})]
    moves = replan([cpus(1)] * 4, cpus(1), view, LOCAL)
    # The first request fits here; the other node has room for one more; two stay queued here.
    assert {i: n.node_id for i, n in moves.items()} == {1: b"other"}


def test_replan_spreads_over_several_free_nodes_without_overcommitting_any() -> None:
    view = [node(b"a", {"CPU": 2}), node(b"b", {"CPU": 4}, {"CPU": 1}), node(b"busy", {"CPU": 8}, {"CPU": 0})]
    moves = replan([cpus(1)] * 5, cpus(0), view, LOCAL)
    assert sorted(n.node_id for n in moves.values()) == [b"a", b"a", b"b"]
    assert set(moves) == {0, 1, 2}  # in queue order: the oldest requests move first


def test_replan_moves_nothing_while_everything_fits_here() -> None:
    view = [node(b"other", {"CPU": 8})]
    assert replan([cpus(1), cpus(2)], cpus(4), view, LOCAL) == {}


def test_replan_ignores_dead_nodes_and_shapes_no_node_has_free() -> None:
    view = [node(b"dead", {"CPU": 4, "GPU": 1}, alive=False), node(b"cpu", {"CPU": 4})]
    moves = replan([ResourceSet({"GPU": 1}), cpus(1)], cpus(0), view, LOCAL)
    assert {i: n.node_id for i, n in moves.items()} == {1: b"cpu"}


def test_replan_lets_a_small_request_pass_a_big_one_that_fits_nowhere_now() -> None:
    view = [node(b"other", {"CPU": 2}, {"CPU": 1})]
    moves = replan([cpus(2), cpus(1)], cpus(1), view, LOCAL)
    # The 2-CPU request waits (here nothing takes it now); the 1-CPU one fits the local budget.
    assert moves == {}


def test_replan_leaves_requests_that_may_not_move_but_they_keep_their_place_in_the_budget() -> None:
    view = [node(b"other", {"CPU": 4})]
    # Request 0 fits here and stays; 1 may not move yet (it was just spilled here); 2 may.
    moves = replan([cpus(1), cpus(1), cpus(1)], cpus(1), view, LOCAL, movable=[True, False, True])
    assert {i: n.node_id for i, n in moves.items()} == {2: b"other"}


def test_replan_moves_a_request_only_to_the_nodes_its_strategy_allows() -> None:
    view = [node(b"a", {"CPU": 4}), node(b"b", {"CPU": 4})]
    moves = replan([cpus(1), cpus(1)], cpus(0), view, LOCAL, allowed=[frozenset({b"b"}), frozenset()])
    assert {i: n.node_id for i, n in moves.items()} == {0: b"b"}
