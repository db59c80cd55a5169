"""Decisions per second of the scheduling policies, which are pure code: the raylet's
(`raylet/policy.py`, one `decide` call per lease request) on clusters of 1 to 1,000 nodes for each
strategy, and the GCS's placement of a placement group's bundles (`gcs/placement_policy.py`).

Run from the repository root: python benches/scheduling_policy.py [--seconds 1] [--runs 3]
Each line gives the median of `--runs` timed runs and the cost of one decision in microseconds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from aioray._private.common import proto_enums as E
from aioray._private.common.resources import ResourceSet
from aioray._private.gcs.placement_policy import Candidate, place
from aioray._private.raylet.policy import Node, SpreadCursor, decide, nodes_of
from aioray._proto.aioray import v1 as pb


def view_of(count: int, rng: random.Random) -> list[pb.NodeInfo]:
    view = []
    for i in range(count):
        free = rng.choice([0.0, 1.0, 4.0, 8.0])
        view.append(
            pb.NodeInfo(
                node_id=i.to_bytes(16, "big"),
                address=f"10.0.{i // 250}.{i % 250}:7000",
                total=pb.ResourceMap(amounts={"CPU": 8.0, "memory": 32e9}),
                available=pb.ResourceMap(amounts={"CPU": free, "memory": 32e9}),
                alive=True,
                labels={"zone": f"z{i % 4}"},
            )
        )
    return view


STRATEGIES: dict[str, pb.SchedulingStrategy] = {
    "DEFAULT (hybrid)": pb.SchedulingStrategy(),
    "SPREAD": pb.SchedulingStrategy(kind=E.STRATEGY_SPREAD),
    "NODE_AFFINITY": pb.SchedulingStrategy(kind=E.STRATEGY_NODE_AFFINITY, node_id=(7).to_bytes(16, "big")),
    "NODE_LABEL": pb.SchedulingStrategy(
        kind=E.STRATEGY_NODE_LABEL, hard=[pb.LabelConstraint(key="zone", op=E.LABEL_IN, values=["z1"])]
    ),
}


def rate(fn: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(100):
            fn()
        count += 100
        now = time.perf_counter()
        if now >= end:
            return count / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    shape = ResourceSet({"CPU": 1})
    print(f"{'nodes':>6} {'strategy':<18} {'decisions/s':>12} {'us/decision':>12}")
    for count in (1, 10, 100, 1000):
        live = [Node.of(n) for n in view_of(count, rng)]  # what the raylet's ClusterView keeps
        local = Node(
            live[0].node_id, "", ResourceSet({"CPU": 8}), ResourceSet({"CPU": 2}), {"zone": "z0"}, True
        )
        for name, strategy in STRATEGIES.items():
            # The raylet puts its own node first for every request: that is timed too.
            def one(
                live: list[Node] = live,
                local: Node = local,
                strategy: pb.SchedulingStrategy = strategy,
                cursor: SpreadCursor = SpreadCursor(),  # noqa: B008 (one per strategy, on purpose)
            ) -> object:
                return decide(shape, strategy, nodes_of(live, local), False, cursor)

            rates = [rate(one, args.seconds) for _ in range(args.runs)]
            median = statistics.median(rates)
            print(f"{count:>6} {name:<18} {median:>12,.0f} {1e6 / median:>12.1f}")
    placement_groups(args)


def placement_groups(args: argparse.Namespace) -> None:
    print(f"\n{'nodes':>6} {'group':<26} {'placements/s':>12} {'us/placement':>12}")
    for count in (10, 100, 1000):
        nodes = [
            Candidate(i.to_bytes(16, "big"), ResourceSet({"CPU": 8}), ResourceSet({"CPU": 8}), {})
            for i in range(count)
        ]
        for name, strategy, bundles in (
            ("PACK 4 x 1 CPU", E.PG_PACK, 4),
            ("SPREAD 4 x 1 CPU", E.PG_SPREAD, 4),
            ("STRICT_SPREAD 8 x 1 CPU", E.PG_STRICT_SPREAD, 8),
            ("STRICT_PACK 8 x 1 CPU", E.PG_STRICT_PACK, 8),
        ):
            shapes = [ResourceSet({"CPU": 1})] * bundles

            def one(
                shapes: list[ResourceSet] = shapes, strategy: int = strategy, nodes: list[Candidate] = nodes
            ) -> object:
                return place(shapes, strategy, nodes)

            median = statistics.median(rate(one, args.seconds) for _ in range(args.runs))
            print(f"{count:>6} {name:<26} {median:>12,.0f} {1e6 / median:>12.1f}")


if __name__ == "__main__":
    main()
