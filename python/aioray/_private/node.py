"""Starting and stopping the processes of a node: the GCS (head only) and the raylet."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioray._private.common import process, rpc, segments
from aioray._private.common.node_resources import node_resources, parse_labels
from aioray._private.common.process import Child

START_TIMEOUT_S = 60.0
DEFAULT_STORE_CAP = 4 << 30
DEFAULT_DASHBOARD_PORT = 8265  # Ray's
DASHBOARD_PORT_RETRIES = 50  # the default port taken (another cluster's): the next free one, as Ray

log = logging.getLogger("aioray.node")


def default_object_store_memory() -> int:
    """30% of the machine's memory (Ray's default), at most 4 GiB, and no more than /dev/shm holds."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    size = min(int(total * 0.3), DEFAULT_STORE_CAP)
    with contextlib.suppress(OSError):
        st = os.statvfs("/dev/shm")
        size = min(size, int(st.f_bavail * st.f_frsize * 0.9))
    return size


def session_dir() -> str:
    # Not "aioray": a folder of that name in /tmp would shadow the package for scripts run from /tmp.
    base = os.path.join(tempfile.gettempdir(), "aioray-session")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return base


SD_FILE_PREFIX = "prom_metrics_service_discovery-"


def service_discovery_file(folder: str, gcs_port: int) -> str:
    """Where the head whose GCS serves on `gcs_port` keeps its Prometheus service discovery file
    (one per cluster: several clusters may share the machine's session folder)."""
    return os.path.join(folder, f"{SD_FILE_PREFIX}{gcs_port}.json")


@dataclass
class NodeProcesses:
    """The processes this Python process started for one node: its raylet and, on the head, the GCS."""

    gcs_address: str
    raylet_address: str
    node_id: str
    token: str
    store_name: str
    raylet: Child
    gcs: Child | None = None
    metrics_export_port: int = 0
    service_discovery_file: str | None = None  # the head's Prometheus targets
    dashboard: Child | None = None
    dashboard_url: str | None = None
    # Starts the GCS again, with the same arguments and port (head only; see `restart_gcs`).
    _spawn_gcs: Callable[[], Child] | None = field(default=None, repr=False)
    _spawn_dashboard: Callable[[], Child] | None = field(default=None, repr=False)

    @property
    def children(self) -> list[Child]:
        """The raylet first (stopped first: it stops its workers), the dashboard, then the GCS."""
        rest = [c for c in (self.dashboard, self.gcs) if c is not None]
        return [self.raylet, *rest]

    @property
    def runs_dashboard(self) -> bool:
        return self._spawn_dashboard is not None

    @property
    def runs_gcs(self) -> bool:
        """Whether this node runs the cluster's GCS (then `restart_gcs` can start it again)."""
        return self._spawn_gcs is not None

    def stop(self) -> None:
        for child in self.children:
            child.stop()
        self.remove_segment()

    def remove_segment(self) -> bool:
        """Unlinks the store segment if the raylet left it (it died before it could); True if it did."""
        try:
            os.unlink(os.path.join(segments.SHM_DIR, self.store_name))
        except FileNotFoundError:
            return False
        return True

    def restart_gcs(self, timeout: float = START_TIMEOUT_S) -> Child:
        """Starts a new GCS process on the same host:port (the old one must have exited)."""
        if self._spawn_gcs is None:
            raise RuntimeError("this node runs no GCS")
        if self.gcs is not None:
            self.gcs.close_lifeline()
        self.gcs = None
        gcs = self._spawn_gcs()
        gcs.wait_ready(timeout)
        self.gcs = gcs
        return gcs

    def restart_dashboard(self, timeout: float = START_TIMEOUT_S) -> Child:
        """Starts a new dashboard process on the same host:port (the old one must have exited)."""
        if self._spawn_dashboard is None:
            raise RuntimeError("this node runs no dashboard")
        if self.dashboard is not None:
            self.dashboard.close_lifeline()
        self.dashboard = None
        dashboard = self._spawn_dashboard()
        _dashboard_ready(dashboard, timeout)
        self.dashboard = dashboard
        return dashboard

    def info(self) -> dict[str, Any]:
        return {
            "gcs_address": self.gcs_address,
            "raylet_address": self.raylet_address,
            "node_id": self.node_id,
            "store_name": self.store_name,
            "pids": [c.proc.pid for c in self.children],
            "metrics_export_port": self.metrics_export_port,
            "metrics_service_discovery_file": self.service_discovery_file,
            "dashboard_url": self.dashboard_url,
        }


def dashboard_argv(host: str, port: int, retries: int, gcs_address: str, session: str) -> list[str]:
    return [
        "-m",
        "aioray._private.dashboard",
        "--host",
        host,
        "--port",
        str(port),
        "--port-retries",
        str(retries),
        "--gcs-address",
        gcs_address,
        "--session-dir",
        session,
    ]


def _dashboard_ready(child: Child, timeout: float) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(child.wait_ready(timeout))
    if "error" in info:
        child.stop()
        raise RuntimeError(str(info["error"]))
    return info


def gcs_argv(host: str, port: int, storage: str | None = None, sd_file: str | None = None) -> list[str]:
    """The GCS's command line after the interpreter; `storage` None keeps the GCS's own default."""
    argv = ["-m", "aioray._private.gcs", "--host", host, "--port", str(port)]
    if storage is not None:
        argv += ["--storage", storage]
    if sd_file is not None:
        argv += ["--metrics-sd-file", sd_file]
    return argv


def start_node(
    *,
    head: bool,
    gcs_address: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    memory: float | None = None,
    labels: str | dict[str, str] | None = None,
    token: str | None = None,
    lifeline: bool = True,
    detach: bool = False,
    log_dir: str | None = None,
    log_files: bool | None = None,
    prestart_workers: bool = False,
    storage: str | None = None,
    metrics_export_port: int | None = None,
    include_dashboard: bool | None = False,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | None = None,
) -> NodeProcesses:
    """Starts a node's processes; on the head also the GCS. Returns once both serve.

    `detach` starts them in sessions of their own (a terminal's Ctrl-C does not reach them);
    `log_files` (default: `detach`) sends their output to files in `log_dir` (default: the
    session folder). `storage` is the GCS's ``--storage`` URL (None: the GCS's default).
    `metrics_export_port` is the port of the node's ``/metrics`` (None or 0: a free one); the head's
    GCS lists every node's in `service_discovery_file` (in `log_dir`) for Prometheus.
    Segments and spill folders that raylets killed earlier left behind are reclaimed first.

    A head with `include_dashboard` also runs the dashboard process on `dashboard_host`:
    `dashboard_port` None is Ray's 8265, or the next free port when it is taken; an explicit port
    must be free (0: any free one). The start fails if the dashboard cannot serve, unless neither
    `include_dashboard` (None: Ray's default) nor a port was asked for: then it only warns.
    """
    token = token if token is not None else secrets.token_hex(16)
    store_memory = object_store_memory or default_object_store_memory()
    if store_memory < 1 << 20:
        raise ValueError(f"object_store_memory={store_memory} is too small: give the store at least 1 MiB")
    amounts = node_resources(num_cpus, num_gpus, resources, memory, store_memory)
    node_labels = parse_labels(labels)
    logs = log_dir or session_dir()
    segments.reclaim_orphans(segments.session_tag(), spill_dirs=[logs])
    env = dict(os.environ)
    env[process.TOKEN_ENV] = token
    to_files = detach if log_files is None else log_files
    children: list[Child] = []

    def log_path(name: str) -> str | None:
        return os.path.join(logs, f"{name}.log") if to_files else None

    spawn_gcs: Callable[[], Child] | None = None
    sd_file = None
    dashboard: Child | None = None
    dashboard_url: str | None = None
    spawn_dashboard: Callable[[], Child] | None = None
    try:
        gcs = None
        if head:
            gcs_port = port or rpc.free_port(host)
            gcs_address = f"{host}:{gcs_port}"
            sd_file = service_discovery_file(logs, gcs_port)
            gcs_args = gcs_argv(host, gcs_port, storage, sd_file)

            def spawn() -> Child:
                return Child.spawn(
                    "GCS",
                    gcs_args,
                    env,
                    lifeline=lifeline,
                    detach=detach,
                    log_path=log_path(f"gcs-{gcs_port}"),
                )

            spawn_gcs = spawn
            gcs = spawn()
            children.append(gcs)
            if include_dashboard is not False:
                dashboard = _spawn_dashboard_child(
                    dashboard_host, dashboard_port, gcs_address, logs, env, lifeline, detach, log_path
                )
                children.append(dashboard)
        if gcs_address is None:
            raise ValueError("a worker node needs the head's address")
        argv = [
            "-m",
            "aioray._private.raylet",
            "--host",
            host,
            "--gcs-address",
            gcs_address,
            "--resources",
            json.dumps(amounts),
            "--object-store-memory",
            str(store_memory),
            "--labels",
            json.dumps(node_labels),
        ]
        argv += ["--spill-dir", logs, "--metrics-export-port", str(metrics_export_port or 0)]
        if head:
            argv.append("--head")
        if prestart_workers:
            argv.append("--prestart-workers")
        raylet = Child.spawn(
            "raylet", argv, env, lifeline=lifeline, detach=detach, log_path=log_path("raylet")
        )
        children.insert(0, raylet)  # stopped first
        if gcs is not None:
            gcs.wait_ready(START_TIMEOUT_S)
        info = json.loads(raylet.wait_ready(START_TIMEOUT_S))
        if dashboard is not None:
            assert gcs_address is not None
            try:
                served = _dashboard_ready(dashboard, START_TIMEOUT_S)
            except RuntimeError as e:
                children.remove(dashboard)
                dashboard = None
                if include_dashboard or dashboard_port is not None:  # asked for, or for that port
                    raise RuntimeError(f"the dashboard did not start: {e}") from None
                log.warning("the dashboard did not start: %s; the cluster runs without it", e)
            else:
                dashboard_url = served["url"]
                spawn_dashboard = functools.partial(
                    _spawn_dashboard_child,
                    dashboard_host,
                    int(served["port"]),
                    gcs_address,
                    logs,
                    env,
                    lifeline,
                    detach,
                    log_path,
                    retries=0,
                )
    except BaseException:
        for child in children:
            child.kill()
        for child in children:
            child.proc.wait()
        segments.reclaim_orphans(segments.session_tag(), spill_dirs=[logs])  # a killed raylet's segment
        raise
    return NodeProcesses(
        gcs_address,
        info["address"],
        info["node_id"],
        token,
        info["store_name"],
        raylet,
        gcs,
        _spawn_gcs=spawn_gcs,
        metrics_export_port=info["metrics_export_port"],
        service_discovery_file=sd_file,
        dashboard=dashboard,
        dashboard_url=dashboard_url,
        _spawn_dashboard=spawn_dashboard,
    )


def _spawn_dashboard_child(
    host: str,
    port: int | None,
    gcs_address: str,
    logs: str,
    env: dict[str, str],
    lifeline: bool,
    detach: bool,
    log_path: Callable[[str], str | None],
    retries: int | None = None,
) -> Child:
    if retries is None:
        retries = DASHBOARD_PORT_RETRIES if port is None else 0
    argv = dashboard_argv(host, DEFAULT_DASHBOARD_PORT if port is None else port, retries, gcs_address, logs)
    return Child.spawn(
        "dashboard",
        argv,
        env,
        lifeline=lifeline,
        detach=detach,
        log_path=log_path(f"dashboard-{gcs_address.rpartition(':')[2]}"),
    )
