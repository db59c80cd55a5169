"""The state commands of the ``aioray`` CLI: ``list``, ``get``, ``summary``, ``memory`` and ``timeline``."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aioray.util import state

LISTS: dict[str, Callable[..., list[Any]]] = {
    "tasks": state.list_tasks,
    "actors": state.list_actors,
    "objects": state.list_objects,
    "nodes": state.list_nodes,
    "jobs": state.list_jobs,
    "placement-groups": state.list_placement_groups,
    "workers": state.list_workers,
}
GETS: dict[str, Callable[..., Any]] = {
    "task": state.get_task,
    "actor": state.get_actor,
    "node": state.get_node,
}
SUMMARIES: dict[str, Callable[..., dict[str, Any]]] = {
    "tasks": state.summarize_tasks,
    "actors": state.summarize_actors,
    "objects": state.summarize_objects,
}


def parse_filter(text: str) -> tuple[str, str, str]:
    """``key=value`` or ``key!=value`` (Ray's ``--filter``)."""
    for predicate in ("!=", "="):
        key, sep, value = text.partition(predicate)
        if sep and key:
            return key.strip(), predicate, value.strip()
    raise argparse.ArgumentTypeError(f"a filter is KEY=VALUE or KEY!=VALUE, got {text!r}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(none)"
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c.upper()), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def _reported(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A failed query is one line on stderr and exit code 1, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return cmd(args)
        except (ConnectionError, ValueError, OSError, state.RayStateApiException) as e:
            print(f"aioray {args.command}: {e}", file=sys.stderr)
            return 1

    return run


@_reported
def cmd_list(args: argparse.Namespace) -> int:
    rows = LISTS[args.resource](
        address=args.address,
        filters=args.filter or None,
        limit=args.limit,
        timeout=args.timeout,
        detail=args.detail,
        raise_on_missing_output=False,
    )
    fmt = args.format or ("json" if args.detail else "table")
    print(_dump([dict(r) for r in rows]) if fmt == "json" else table(rows))
    return 0


@_reported
def cmd_get(args: argparse.Namespace) -> int:
    found = GETS[args.resource](args.id, address=args.address, timeout=args.timeout)
    if found is None:
        print(f"aioray get: no {args.resource} {args.id}", file=sys.stderr)
        return 1
    print(_dump([dict(f) for f in found] if isinstance(found, list) else dict(found)))
    return 0


@_reported
def cmd_summary(args: argparse.Namespace) -> int:
    summary = SUMMARIES[args.resource](
        address=args.address, timeout=args.timeout, raise_on_missing_output=False
    )
    cluster = summary["cluster"]
    if args.format == "json":
        print(_dump(cluster))
        return 0
    totals = {k: v for k, v in cluster.items() if k not in ("summary", "summary_by")}
    print(", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in totals.items()))
    rows = []
    for key, entry in cluster["summary"].items():
        counts = entry.get("state_counts") or entry.get("ref_type_counts") or {}
        row = {
            "name": key,
            **{k: v for k, v in entry.items() if not isinstance(v, dict) and k != "func_or_class_name"},
        }
        row["counts"] = ", ".join(f"{state}: {n}" for state, n in sorted(counts.items()))
        rows.append(row)
    print(table(rows))
    return 0


def _size(n: int) -> str:
    if n < 0:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@_reported
def cmd_memory(args: argparse.Namespace) -> int:
    """Objects grouped by the process holding them: size, where the copy is, pinned or spilled,
    and why the process keeps it (Ray's ``ray memory``)."""
    objects = state.list_objects(
        address=args.address,
        limit=args.limit,
        timeout=args.timeout,
        detail=True,
        raise_on_missing_output=False,
    )
    by_process: dict[tuple[str, int, str], list[Any]] = {}
    for o in objects:
        by_process.setdefault((o["ip"], o["pid"], o["type"]), []).append(o)
    total = sum(o["object_size"] for o in objects if o["object_size"] > 0 and o["is_owner"])
    print(f"{len(objects)} reference(s) in {len(by_process)} process(es); {_size(total)} owned in all")
    for (ip, pid, kind), rows in sorted(by_process.items()):
        owned = sum(o["object_size"] for o in rows if o["object_size"] > 0 and o["is_owner"])
        print(f"\n--- {kind.lower()} pid={pid} ip={ip}: {len(rows)} reference(s), {_size(owned)} owned ---")
        shown = [
            {
                "object_id": o["object_id"],
                "size": _size(o["object_size"]),
                "owner": "self" if o["is_owner"] else o["owner_address"],
                "where": (o["node_id"] or "")[:12] or ("inline" if o["storage"] == "INLINE" else ""),
                "storage": o["storage"],
                "reference_type": o["reference_type"],
                "task_status": o["task_status"],
                "refs": f"local={o['local_refs']} submitted={o['submitted_refs']} "
                f"contained={o['contained_in']} borrowers={o['borrowers']}",
            }
            for o in sorted(rows, key=lambda o: -o["object_size"])
        ]
        print(table(shown))
    return 0


@_reported
def cmd_timeline(args: argparse.Namespace) -> int:
    from aioray._private.timeline import timeline

    path = args.output or f"/tmp/aioray-timeline-{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}.json"
    timeline(path, address=args.address or "auto")
    print(f"wrote the timeline to {path}: open it in https://ui.perfetto.dev or chrome://tracing")
    return 0


def add_commands(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=None, help="the GCS address (default: this machine's cluster)")
        p.add_argument("--timeout", type=float, default=30, help="seconds (default: %(default)s)")

    lister = sub.add_parser(
        "list", help="list tasks, actors, objects, nodes, jobs, placement groups or workers"
    )
    lister.add_argument("resource", choices=sorted(LISTS))
    lister.add_argument(
        "--filter", action="append", type=parse_filter, help="KEY=VALUE or KEY!=VALUE (repeat: all must hold)"
    )
    lister.add_argument("--limit", type=int, default=100)
    lister.add_argument("--detail", action="store_true", help="every column (a task's events)")
    lister.add_argument("--format", choices=("table", "json"), default=None)
    common(lister)
    lister.set_defaults(func=cmd_list)
    getter = sub.add_parser("get", help="one task (its attempts and events), actor or node, by id")
    getter.add_argument("resource", choices=sorted(GETS))
    getter.add_argument("id")
    common(getter)
    getter.set_defaults(func=cmd_get)
    summary = sub.add_parser("summary", help="tasks by name and state, actors by class, objects")
    summary.add_argument("resource", choices=sorted(SUMMARIES))
    summary.add_argument("--format", choices=("table", "json"), default="table")
    common(summary)
    summary.set_defaults(func=cmd_summary)
    memory = sub.add_parser(
        "memory", help="objects by the process holding them: size, where, pinned/spilled, why"
    )
    memory.add_argument("--limit", type=int, default=10_000)
    common(memory)
    memory.set_defaults(func=cmd_memory)
    timeline = sub.add_parser(
        "timeline", help="write the tasks' timeline as a Chrome trace (Perfetto opens it)"
    )
    timeline.add_argument(
        "--output", default=None, help="the JSON file (default: /tmp/aioray-timeline-DATE.json)"
    )
    timeline.add_argument("--address", default=None)
    timeline.set_defaults(func=cmd_timeline)


__all__ = ["add_commands", "parse_filter", "table"]
