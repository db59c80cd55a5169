"""The ``aioray`` command: start, stop and inspect clusters."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import itertools
import json
import os
import secrets
import signal
import sys
import time
from typing import Any

from aioray._private import job_cli, log_cli, state_cli, worker_api
from aioray._private import node as node_mod
from aioray._private.common import process, rpc, segments
from aioray._private.common.node_resources import parse_labels
from aioray._proto.aioray import v1 as pb

SUPERVISOR_START_TIMEOUT_S = 2 * node_mod.START_TIMEOUT_S + 10
STOP_GRACE_S = 10.0
FORCE_GRACE_S = 1.0


def cmd_start(args: argparse.Namespace) -> int:
    """Starts a node under a supervisor (`aioray._private.supervisor`), in the background or, with
    --block, as a child of this process, which then waits for Ctrl-C or SIGTERM."""
    if args.head == bool(args.address):
        print("aioray start: give exactly one of --head or --address=HOST:PORT", file=sys.stderr)
        return 2
    if args.storage and not args.head:
        print("aioray start: --storage is for a head node (it configures the GCS)", file=sys.stderr)
        return 2
    if not args.head and (args.dashboard_port is not None or args.dashboard_host != "127.0.0.1"):
        print("aioray start: --dashboard-host/--dashboard-port are for a head node", file=sys.stderr)
        return 2
    resources = json.loads(args.resources) if args.resources else None
    try:
        labels = parse_labels(args.labels)
    except ValueError as e:
        print(f"aioray start: --labels: {e}", file=sys.stderr)
        return 2
    token = os.environ.get(process.TOKEN_ENV)
    if args.address and token is None:
        info = worker_api.read_cluster_file(args.address)
        token = info["token"] if info else None
        if token is None:
            print(f"aioray start: set {process.TOKEN_ENV} to the head's auth token", file=sys.stderr)
            return 2
    token = token if token is not None else secrets.token_hex(16)
    sessions = node_mod.session_dir()
    port = args.port
    storage = None
    if args.head:
        port = port or rpc.free_port(args.node_ip_address)  # known up front: restarts reuse it
        storage = args.storage or f"sqlite://{os.path.join(sessions, f'gcs-{port}.sqlite3')}"
    config = {
        "head": args.head,
        "gcs_address": args.address,
        "host": args.node_ip_address,
        "port": port,
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
        "resources": resources,
        "object_store_memory": args.object_store_memory,
        "memory": args.memory,
        "labels": labels,
        "prestart_workers": args.prestart_workers,
        "storage": storage,
        "discard_storage_on_stop": args.head and args.storage is None,
        "log_files": not args.block,  # with --block the daemons' output goes to the terminal
        "metrics_export_port": args.metrics_export_port,
        "include_dashboard": args.include_dashboard if args.head else False,
        "dashboard_host": args.dashboard_host,
        "dashboard_port": args.dashboard_port,
    }
    session_file = worker_api.cluster_file() if args.head else os.path.join(sessions, "node-{node_id}.json")
    env = dict(os.environ)
    env[process.TOKEN_ENV] = token
    log_path = None if args.block else os.path.join(sessions, "supervisor.log")
    supervisor = process.Child.spawn(
        "supervisor",
        ["-m", "aioray._private.supervisor", "--config", json.dumps(config), "--session-file", session_file],
        env,
        lifeline=args.block,  # --block: the node goes when this process does, even on SIGKILL
        detach=not args.block,
        log_path=log_path,
    )
    try:
        node = json.loads(supervisor.wait_ready(SUPERVISOR_START_TIMEOUT_S))
    except (RuntimeError, ValueError) as e:
        where = f" (log: {log_path})" if log_path else ""
        print(f"aioray start: {e}{where}", file=sys.stderr)
        supervisor.stop()
        return 1
    if "error" in node:
        where = "" if args.block else f" (logs in {sessions})"
        print(f"aioray start: {node['error']}{where}", file=sys.stderr)
        supervisor.stop()
        return 1
    print(f"aioray node {node['node_id'][:12]} started; GCS at {node['gcs_address']}")
    host = args.node_ip_address
    print(f"  metrics:            http://{host}:{node['metrics_export_port']}/metrics")
    if args.head:
        print(f"  connect a driver:   aioray.init(address='{node['gcs_address']}')   (or address='auto')")
        print(f"  add a node:         aioray start --address={node['gcs_address']}")
        print(f"  auth token (for other machines, set {process.TOKEN_ENV}): {token}")
        print(f"  Prometheus targets (file_sd_configs): {node['metrics_service_discovery_file']}")
        if node.get("dashboard_url"):
            print(f"  dashboard:          {node['dashboard_url']}   (log in: {node['dashboard_url']}/login)")
    if not args.block:
        return 0
    sys.stdout.flush()
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop and supervisor.proc.poll() is None:
            time.sleep(0.2)
    finally:
        supervisor.stop(timeout=3 * STOP_GRACE_S)  # it stops the daemons, then itself
    code = supervisor.proc.returncode
    if not stop and code:
        print(f"aioray start: node {node['node_id'][:12]} stopped (see the log above)", file=sys.stderr)
        return 1
    return 0


def _stop_daemons(tag: str | None, grace: float) -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
    """SIGTERMs this user's aioray daemons (supervisors first, so none restarts a GCS being stopped),
    waits up to `grace` seconds, then SIGKILLs what remains. Returns (all seen, SIGKILLed, survivors)."""
    seen: dict[int, str] = {}
    termed: set[int] = set()

    def send(pids: dict[int, str], sig: signal.Signals) -> None:
        for pid in sorted(pids, key=lambda p: pids[p] != "supervisor"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    deadline = time.monotonic() + grace
    seen.update(process.find_daemons(tag))
    supervisors = {p: k for p, k in seen.items() if k == "supervisor"}
    send(supervisors, signal.SIGTERM)  # each stops its node's daemons
    termed.update(supervisors)
    # Half the grace period for the supervisors to stop their nodes; the rest get at least the other half.
    supervisors_deadline = time.monotonic() + min(grace / 2, 3.0)
    while time.monotonic() < supervisors_deadline and not all(process.is_gone(p) for p in supervisors):
        time.sleep(0.05)
    while True:  # the rest, and whatever starts meanwhile
        current = process.find_daemons(tag)
        send({p: k for p, k in current.items() if p not in termed}, signal.SIGTERM)
        seen.update(current)
        termed.update(current)
        if not current or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    killed: dict[int, str] = {}
    for _ in range(50):
        current = process.find_daemons(tag)
        if not current:
            break
        send(current, signal.SIGKILL)
        seen.update(current)
        killed.update(current)
        time.sleep(0.05)
    return seen, killed, process.find_daemons(tag)


def _describe(pids: dict[int, str]) -> str:
    by_kind: dict[str, list[int]] = {}
    for pid, kind in pids.items():
        by_kind.setdefault(kind, []).append(pid)
    parts = []
    for kind in ("supervisor", "gcs", "dashboard", "raylet", "worker"):
        if kind in by_kind:
            ids = sorted(by_kind[kind])
            label = "pid" if len(ids) == 1 else "pids"
            parts.append(f"{len(ids)} {kind} ({label} {', '.join(map(str, ids))})")
    return ", ".join(parts)


def _live_gcs_ports() -> set[int]:
    """The ports the live GCSs of this user on this machine serve on (from their command lines)."""
    ports = set()
    for pid, kind in process.find_daemons().items():
        if kind != "gcs":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for flag, value in itertools.pairwise(argv):
            if flag == b"--port" and value.isdigit():
                ports.add(int(value))
    return ports


def _remove_stale_service_discovery_files() -> list[str]:
    """Prometheus service discovery files of heads whose GCS is gone (killed, not stopped), removed."""
    pattern = os.path.join(node_mod.session_dir(), f"{node_mod.SD_FILE_PREFIX}*.json")
    paths = sorted(glob.glob(pattern))
    if not paths:
        return []
    live = _live_gcs_ports()
    removed = []
    for path in paths:
        port = os.path.basename(path)[len(node_mod.SD_FILE_PREFIX) : -len(".json")]
        if port.isdigit() and int(port) in live:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(os.path.basename(path))
    return removed


def _remove_stale_session_files() -> list[str]:
    """Session files whose processes are all gone (or that cannot be read), removed; their names."""
    sessions = node_mod.session_dir()
    paths = sorted(glob.glob(os.path.join(sessions, "node-*.json")))
    paths.append(worker_api.cluster_file())
    removed = []
    for path in paths:
        try:
            with open(path) as f:
                info = json.load(f)
            pids = [int(p) for p in info.get("pids", [])]
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError, AttributeError):
            pids = []  # unreadable: stale
        if any(process.daemon_kind(p) is not None for p in pids):
            continue  # a node that is still up (one of another session tag)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(os.path.basename(path))
    return removed + _remove_stale_service_discovery_files()


def cmd_stop(args: argparse.Namespace) -> int:
    tag = args.tag if args.tag is not None else segments.session_tag()
    grace = FORCE_GRACE_S if args.force else args.grace
    seen, killed, survivors = _stop_daemons(tag, grace)
    reclaimed = segments.reclaim_orphans(tag, spill_dirs=[node_mod.session_dir()])
    removed = _remove_stale_session_files()
    scope = f" of session tag {tag!r}" if tag else ""
    if seen:
        print(f"stopped {len(seen)} aioray process(es){scope}: {_describe(seen)}")
    else:
        print(f"no aioray processes{scope} were running")
    if killed:
        print(f"  sent SIGKILL after {grace:g} s to {_describe(killed)}")
    if reclaimed:
        print(f"  removed {len(reclaimed)} orphaned store segment(s): {', '.join(reclaimed)}")
    if removed:
        print(f"  removed {len(removed)} stale session file(s): {', '.join(removed)}")
    if survivors:
        print(f"aioray stop: still running after SIGKILL: {_describe(survivors)}", file=sys.stderr)
        return 1
    return 0


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
    if info is not None and info.get("gcs_address") == address and info.get("dashboard_url"):
        print(f"  dashboard: {info['dashboard_url']}")
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
        if n.alive and n.metrics_export_port:
            print(f"    metrics: http://{rpc.split_address(n.address)[0]}:{n.metrics_export_port}/metrics")
    return 0


def cmd_microbenchmark(args: argparse.Namespace) -> int:
    from aioray._private import microbenchmark

    events = None if args.task_events is None else args.task_events == "on"
    microbenchmark.run(args.filter, args.duration, args.runs, args.num_cpus, events)
    return 0


def _bool_flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


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
        "--memory",
        type=int,
        default=None,
        help="bytes tasks may reserve with memory= (default: free memory less the store)",
    )
    start.add_argument(
        "--labels", default=None, help="node labels for label scheduling: 'key1=value1,key2=value2' or JSON"
    )
    start.add_argument(
        "--prestart-workers",
        action="store_true",
        help="start one worker per CPU now rather than on the first tasks (~0.15 s sooner, ~30 MiB each)",
    )
    start.add_argument(
        "--storage",
        default=None,
        help="where the GCS keeps its tables: sqlite:///PATH or redis://HOST:PORT "
        "(default: sqlite in the session folder, one file per GCS port)",
    )
    start.add_argument(
        "--metrics-export-port",
        type=int,
        default=None,
        help="port of the node's Prometheus /metrics, on --node-ip-address (default: a free one)",
    )
    start.add_argument(
        "--include-dashboard",
        type=_bool_flag,
        default=None,
        metavar="true|false",
        help="run the dashboard on a head (default: yes, going on without it if it cannot start)",
    )
    start.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="the dashboard's address (default: loopback only; 0.0.0.0 for every interface)",
    )
    start.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        help=f"the dashboard's port (default: {node_mod.DEFAULT_DASHBOARD_PORT}, or the next free one; "
        "an explicit port must be free)",
    )
    start.add_argument("--block", action="store_true", help="stay in the foreground; Ctrl-C stops the node")
    start.set_defaults(func=cmd_start)
    stop = sub.add_parser(
        "stop",
        help="stop every aioray daemon of this user on this machine",
        description="Stops every aioray daemon of this user on this machine (supervisors, GCSs, raylets, "
        "workers; drivers are left alone): SIGTERM, then SIGKILL after a grace period. Then removes "
        "the store segments and session files they left. Exits 0 once nothing is left running.",
    )
    stop.add_argument(
        "--force", action="store_true", help=f"SIGKILL what is still running after {FORCE_GRACE_S:g} s"
    )
    stop.add_argument(
        "--grace",
        type=float,
        default=STOP_GRACE_S,
        help="seconds to wait after SIGTERM before SIGKILL (default: %(default)s)",
    )
    stop.add_argument(
        "--tag",
        default=None,
        help="only the daemons started with AIORAY_SESSION_TAG=TAG and their segments "
        "(default: $AIORAY_SESSION_TAG if set, else all)",
    )
    stop.set_defaults(func=cmd_stop)
    status = sub.add_parser("status", help="nodes, resources and store usage")
    status.add_argument("--address", default=None)
    status.set_defaults(func=cmd_status)
    log_cli.add_parser(sub)
    job_cli.add_parser(sub)
    bench = sub.add_parser("microbenchmark", help="the cases of `ray microbenchmark`, on an embedded cluster")
    bench.add_argument("filter", nargs="?", default="", help="run only cases whose name contains this")
    bench.add_argument("--duration", type=float, default=2.0, help="seconds per timed run")
    bench.add_argument("--runs", type=int, default=3)
    bench.add_argument("--num-cpus", type=int, default=None)
    bench.add_argument(
        "--task-events",
        choices=("on", "off"),
        default=None,
        help="record task events in every process (default: as AIORAY_TASK_EVENTS says, on)",
    )
    bench.set_defaults(func=cmd_microbenchmark)
    state_cli.add_commands(sub)
    return parser


def _version() -> str:
    from aioray import __version__

    return f"aioray {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
