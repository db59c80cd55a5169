"""The round trip of one synchronous GCS call from a driver's thread, through the core loop and back.

python benches/gcs_rtt.py                             # unary calls as frames (the default)
AIORAY_RPC_TRANSPORT=grpc python benches/gcs_rtt.py   # the same calls over gRPC
"""

from __future__ import annotations

import statistics
import time

import aioray
from aioray._private.core_worker.object_ref import global_worker
from aioray._proto.aioray import v1 as pb

CALLS = 500


def main() -> None:
    aioray.init(num_cpus=1, include_dashboard=False)
    core = global_worker()
    request = pb.Empty()

    async def one() -> None:
        await core.gcs(pb.PlacementGroupGcsServiceStub).list_placement_groups(request, timeout=10)

    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(CALLS):
            core.run_sync(one(), timeout=10)
        rounds.append((time.perf_counter() - start) / CALLS * 1e6)
    print(f"sync GCS call: median {statistics.median(rounds):.0f} us over 5 rounds of {CALLS}")
    aioray.shutdown()


if __name__ == "__main__":
    main()
