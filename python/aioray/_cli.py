"""The ``aioray`` command: start, stop and inspect clusters."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import signal
import sys
import time
from typing import Any

from aioray._private import node as node_mod
from aioray._private import worker_api
from aioray._private.common import process, rpc
from aioray._proto.aioray import v1 as pb


def _write_private(path: str, data: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def cmd_start(args: argparse.Namespace) -> int:
    if args.head == bool(args.address):
        print("aioray start: give exactly one of --head or --address=HOST:PORT", file=sys.stderr)
        return 2
    resources = json.loads(args.resources) if args.resources else None
    token = os.environ.get(process.TOKEN_ENV)
    if args.address and token is None:
        info = worker_api.read_cluster_file(args.address)
        token = info["token"] if info else None
        if token is None:
            print(f"aioray start: set {process.TOKEN_ENV} to the head's auth token", file=sys.stderr)
            return 2
    node = node_mod.start_node(
        head=args.head,
        gcs_address=args.address,
        host=args.node_ip_address,
        port=args.port,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        resources=resources,
        object_store_memory=args.object_store_memory,
        token=token,
        lifeline=args.block,
        detach=not args.block,
        prestart_workers=args.prestart_workers,
    )
    info = {**node.info(), "token": node.token}
    path = (
        worker_api.cluster_file()
        if args.head
        else os.path.join(node_mod.session_dir(), f"node-{node.node_id}.json")
    )
    _write_private(path, info)
    print(f"aioray node {node.node_id[:12]} started; GCS at {node.gcs_address}")
    if args.head:
        print(f"  connect a driver:   aioray.init(address='{node.gcs_address}')   (or address='auto')")
        print(f"  add a node:         aioray start --address={node.gcs_address}")
        print(f"  auth token (for other machines, set {process.TOKEN_ENV}): {node.token}")
    if not args.block:
        return 0
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop and all(c.proc.poll() is None for c in node.children):
            time.sleep(0.2)
    finally:
        node.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    files = glob.glob(os.path.join(node_mod.session_dir(), "node-*.json"))
    files.append(worker_api.cluster_file())
    stopped = 0
    for path in files:
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        for pid in info.get("pids", []):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
                stopped += 1
        deadline = time.monotonic() + 5
        for pid in info.get("pids", []):
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{info.get('store_name', 'aioray-missing')}")
        os.unlink(path)
    print(f"stopped {stopped} aioray process(es)")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cmd_status(args: argparse.Namespace) -> int:
    info = worker_api.read_cluster_file(args.address)
    address = args.address or (info or {}).get("gcs_address")
    if address is None:
        print(
            "aioray status: no running cluster found (start one with `aioray start --head`)", file=sys.stderr
        )
        return 1
    token = os.environ.get(process.TOKEN_ENV) or (info or {}).get("token", "")

    async def fetch() -> pb.ClusterView:
        channels = rpc.ChannelPool(token)
        try:
            return await channels.stub(address, pb.NodeInfoGcsServiceStub).get_cluster_view(
                pb.Empty(), timeout=5
            )
        finally:
            channels.close()

    try:
        view = asyncio.run(fetch())
    except Exception as e:
        print(
            f"aioray status: cannot reach the GCS at {address}: {rpc.translate_error(e, address)}",
            file=sys.stderr,
        )
        return 1
    print(f"cluster at {address}: {sum(n.alive for n in view.nodes)} live node(s)")
    for n in view.nodes:
        state = "alive" if n.alive else "DEAD"
        print(f"  node {n.node_id.hex()[:12]} {n.address} {state}{' (head)' if n.is_head else ''}")
        for name, total in sorted(n.total.amounts.items()):
            used = total - n.available.amounts.get(name, 0.0)
            print(f"    {name}: {used:g}/{total:g} used")
        print(
            f"    object store: {n.store_used / 2**20:.1f}/{n.store_capacity / 2**20:.1f} MiB used, "
            f"{n.store_objects} object(s); {n.num_workers} worker(s)"
        )
        print(
            f"    spilled: {n.spilled_bytes / 2**20:.1f} MiB on disk now, {n.spilled_total / 2**20:.1f} MiB "
            f"written in all, {n.restored_bytes / 2**20:.1f} MiB restored"
        )
    return 0


def cmd_microbenchmark(args: argparse.Namespace) -> int:
    from aioray._private import microbenchmark

    microbenchmark.run(args.filter, args.duration, args.runs, args.num_cpus)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aioray", description="aioray cluster management")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a head node (--head) or join one (--address)")
    start.add_argument("--head", action="store_true")
    start.add_argument("--address", help="HOST:PORT of the head's GCS, to join as a worker node")
    start.add_argument("--port", type=int, default=None, help="GCS port of a head (default: a free one)")
    start.add_argument("--node-ip-address", default="127.0.0.1")
    start.add_argument("--num-cpus", type=float, default=None)
    start.add_argument("--num-gpus", type=float, default=None)
    start.add_argument("--resources", default=None, help="JSON, e.g. '{\"accel\": 2}'")
    start.add_argument("--object-store-memory", type=int, default=None)
    start.add_argument(
        "--prestart-workers",
        action="store_true",
        help="start one worker per CPU now rather than on the first tasks (~0.15 s sooner, ~30 MiB each)",
    )
    start.add_argument("--block", action="store_true", help="stay in the foreground; Ctrl-C stops the node")
    start.set_defaults(func=cmd_start)
    stop = sub.add_parser("stop", help="stop the nodes started on this machine")
    stop.set_defaults(func=cmd_stop)
    status = sub.add_parser("status", help="nodes, resources and store usage")
    status.add_argument("--address", default=None)
    status.set_defaults(func=cmd_status)
    bench = sub.add_parser("microbenchmark", help="the cases of `ray microbenchmark`, on an embedded cluster")
    bench.add_argument("filter", nargs="?", default="", help="run only cases whose name contains this")
    bench.add_argument("--duration", type=float, default=2.0, help="seconds per timed run")
    bench.add_argument("--runs", type=int, default=3)
    bench.add_argument("--num-cpus", type=int, default=None)
    bench.set_defaults(func=cmd_microbenchmark)
    return parser


def _version() -> str:
    from aioray import __version__

    return f"aioray {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
