"""The seed walkthrough: task A submits B and C; C needs B's large result X and returns a small Y.

On a cluster with nodes offering the custom resources "b" and "c" (the README's walk starts them), B
runs on the first and C on the second, so C's node pulls X from B's; elsewhere everything runs where
there is room. Run it as a job (`aioray job submit -- python walkthrough.py`) or as a script.
"""

from __future__ import annotations

import aioray

MIB = 1 << 20


def on(resource: str) -> dict[str, float]:
    """Ask for a share of `resource` if some node offers it."""
    return {resource: 0.5} if resource in aioray.cluster_resources() else {}


@aioray.remote
def produce(mib: int) -> bytes:
    """B: the large X, written to its node's object store."""
    return bytes(mib * MIB)


@aioray.remote
def consume(x: bytes) -> int:
    """C: reads X (pulled to its node) and returns the small Y."""
    return len(x)


@aioray.remote
def walk(mib: int, b: dict[str, float], c: dict[str, float]) -> int:
    """A: submits B and C, passing B's result to C by reference."""
    x = produce.options(resources=b).remote(mib)
    return aioray.get(consume.options(resources=c).remote(x), timeout=120)


if __name__ == "__main__":
    aioray.init()
    print("Y =", aioray.get(walk.remote(8, on("b"), on("c")), timeout=180))
