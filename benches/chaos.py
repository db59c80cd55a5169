"""A longer chaos run than the suite's: the map/reduce DAG of `tests/integration/chaos.py` on a
CLI-started 3-node cluster (2 CPUs each) with random SIGKILLs of workers and actors every
0.3-0.8 s and one whole node after 4 s, for as many minutes as you ask.

Run from the repository root: python benches/chaos.py --minutes 5 [--seed 1]
It prints the kills survived, the tasks re-run and the wall time; it exits non-zero on a wrong
result, an untyped error or a hang (each round has a timeout).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.integration import chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--maps", type=int, default=120)
    parser.add_argument("--reducers", type=int, default=30)
    parser.add_argument("--mib", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("AIORAY_SESSION_TAG", f"chaos{os.getpid()}")
    with tempfile.TemporaryDirectory() as log_dir:
        report = chaos.run(
            log_dir,
            seconds=args.minutes * 60,
            maps=args.maps,
            reducers=args.reducers,
            mib=args.mib,
            seed=args.seed,
        )
    print(report.summary())
    stop = subprocess.run(
        [sys.executable, "-m", "aioray", "stop"], capture_output=True, text=True, timeout=120
    )
    print(stop.stdout.strip())
    return stop.returncode


if __name__ == "__main__":
    sys.exit(main())
