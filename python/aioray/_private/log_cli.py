"""``aioray logs``: a node's log files (its workers' stdout and stderr, its daemons'), listed or read.

The files stay on their node; the command asks that node's raylet for them
(``LogAgent``: `raylet/log_monitor.py`), so it reads the logs of any node of
the cluster from any machine that reaches it. Without a file name it lists
them; with one (a name, a unique prefix of one, or a glob pattern to list the
matches) it prints the last ``--tail`` lines and, with ``--follow``, what is
appended until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import os
import sys
import time

from aioray._private import worker_api
from aioray._private.common import process, rpc
from aioray._proto.aioray import v1 as pb

LIST_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
DEFAULT_TAIL = 1000  # Ray's
_UNREACHABLE: tuple[type[BaseException], ...] = (*rpc.CONNECTION_ERRORS, TimeoutError)


class LogsError(Exception):
    pass


def _pick_node(view: pb.ClusterView, node_id: str | None) -> pb.NodeInfo:
    alive = [n for n in view.nodes if n.alive]
    if node_id:
        found = [n for n in alive if n.node_id.hex().startswith(node_id.lower())]
        if len(found) != 1:
            what = "no live node" if not found else f"{len(found)} live nodes"
            raise LogsError(f"{what} with an id starting with {node_id!r} (`aioray status` lists them)")
        return found[0]
    heads = [n for n in alive if n.is_head] or alive
    if not heads:
        raise LogsError("the cluster has no live node")
    return heads[0]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


async def _run(args: argparse.Namespace, address: str, token: str) -> int:
    channels = rpc.ChannelPool(token)
    try:
        gcs = channels.stub(address, pb.NodeInfoGcsServiceStub)
        node = _pick_node(await gcs.get_cluster_view(pb.Empty(), timeout=LIST_TIMEOUT_S), args.node_id)
        agent = channels.stub(node.address, pb.LogAgentStub)
        listing = await agent.list_logs(pb.Empty(), timeout=LIST_TIMEOUT_S)
        names = [f.name for f in listing.files]
        where = f"node {node.node_id.hex()[:12]} ({node.address}{', head' if node.is_head else ''})"
        if args.file is None or any(c in args.file for c in "*?["):
            pattern = args.file or "*"
            shown = [f for f in listing.files if fnmatch.fnmatchcase(f.name, pattern)]
            print(f"{where}: {len(shown)} log file(s) in {listing.dir}")
            for f in shown:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f.mtime))
                print(f"  {f.name:<60} {_size(f.size):>10}  {stamp}")
            return 0
        name = args.file
        if name not in names:
            matches = [n for n in names if n.startswith(name)]
            if len(matches) != 1:
                what = "no log file" if not matches else f"{len(matches)} log files"
                raise LogsError(f"{where} has {what} named {name!r}...; `aioray logs` lists them")
            name = matches[0]
        request = pb.ReadLogRequest(name=name, tail_lines=args.tail, follow=args.follow)
        out = sys.stdout.buffer
        async for chunk in agent.read_log(request, timeout=None if args.follow else READ_TIMEOUT_S):
            out.write(chunk.data)
            out.flush()
        return 0
    finally:
        channels.close()


def cmd_logs(args: argparse.Namespace) -> int:
    info = worker_api.read_cluster_file(args.address)
    address = args.address or (info or {}).get("gcs_address")
    if address is None:
        print("aioray logs: no running cluster found (give --address)", file=sys.stderr)
        return 1
    token = os.environ.get(process.TOKEN_ENV) or (info or {}).get("token", "")
    try:
        return asyncio.run(_run(args, address, token))
    except KeyboardInterrupt:  # the end of --follow
        return 0
    except LogsError as e:
        print(f"aioray logs: {e}", file=sys.stderr)
        return 1
    except rpc.GRPCError as e:
        print(f"aioray logs: {e.message or e.status.name}", file=sys.stderr)
        return 1
    except _UNREACHABLE as e:
        print(f"aioray logs: cannot reach the cluster at {address}: {e!r}", file=sys.stderr)
        return 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = sub.add_parser(
        "logs",
        help="list a node's log files, or print one",
        description="Lists the log files of a node (default: the head): each worker's stdout (.out) and "
        "stderr (.err), and the node's daemon logs. With FILE (a name, a unique prefix of one, or a glob "
        "pattern to list matches) prints its last --tail lines; --follow prints what is appended too.",
    )
    logs.add_argument("file", nargs="?", default=None, metavar="FILE")
    logs.add_argument("--address", default=None, help="the GCS's HOST:PORT (default: this machine's head)")
    logs.add_argument(
        "--node-id", default=None, help="the node (an id or a unique prefix; default: the head)"
    )
    logs.add_argument(
        "--follow", "-f", action="store_true", help="keep printing what is appended (Ctrl-C ends)"
    )
    logs.add_argument(
        "--tail",
        type=int,
        default=DEFAULT_TAIL,
        help="print the last N lines (-1: all; default: %(default)s)",
    )
    logs.set_defaults(func=cmd_logs)


__all__ = ["add_parser", "cmd_logs"]
