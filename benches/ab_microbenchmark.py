"""`aioray microbenchmark` of two installs side by side: before/after figures from one run on one machine.

Each round runs the whole microbenchmark once per install, alternating A and
B so that machine noise falls on both alike; the table gives each case's
median over the rounds (every round already averages `--runs` timed runs)
and the ratio B/A. Typical use, comparing a commit with the working tree:

    git worktree add /tmp/base <commit> && python3 -m venv /tmp/base/.venv
    /tmp/base/.venv/bin/pip install /tmp/base
    python benches/ab_microbenchmark.py /tmp/base/.venv/bin/python .venv/bin/python --rounds 3

or one install with two settings, e.g. task events off (A) and on (B):

    python benches/ab_microbenchmark.py .venv/bin/python .venv/bin/python --filter "tasks async" \
        --a-args="--task-events off" --b-args="--task-events on" --rounds 5
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

# "NAME per second MEAN +- STD" for rates, "NAME MEAN +- STD UNIT" for anything else.
LINE = re.compile(r"^(?P<case>.+?) (?P<mean>[\d,]+\.\d+) \+- [\d,]+\.\d+(?: (?P<unit>\S+))?$")


def run_once(python: str, args: argparse.Namespace, extra: str = "") -> dict[str, tuple[float, str]]:
    cmd = [python, "-m", "aioray", "microbenchmark", args.filter, "--runs", str(args.runs)]
    cmd += ["--duration", str(args.duration), *extra.split()]
    # Run from a neutral directory, so each interpreter imports its own installed aioray.
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd="/", env=dict(os.environ))
    cases = {}
    for line in out.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            cases[m["case"]] = (float(m["mean"].replace(",", "")), m["unit"] or "/s")
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("python_a", help="interpreter of install A (e.g. the commit before a change)")
    parser.add_argument("python_b", help="interpreter of install B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case in each microbenchmark")
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--filter", default="")
    parser.add_argument("--a-args", default="", help="more microbenchmark arguments for A")
    parser.add_argument("--b-args", default="", help="more microbenchmark arguments for B")
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
    units: dict[str, str] = {}
    for r in range(args.rounds):
        for label, python, extra in (("A", args.python_a, args.a_args), ("B", args.python_b, args.b_args)):
            print(f"round {r + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
            for case, (mean, unit) in run_once(python, args, extra).items():
                results[label].setdefault(case, []).append(mean)
                units[case] = unit
    print(f"| case | A (median of {args.rounds}) | B (median of {args.rounds}) | B/A |")
    print("|---|---:|---:|---:|")
    for case, unit in units.items():
        a, b = results["A"].get(case), results["B"].get(case)
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        # For times (s), lower is better: the ratio is kept as B/A of the figures as printed.
        print(f"| {case} ({unit}) | {ma:,.2f} | {mb:,.2f} | {mb / ma:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
