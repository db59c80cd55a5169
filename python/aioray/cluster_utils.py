"""Several aioray nodes on one machine, for tests: Ray's ``ray.cluster_utils.Cluster``.

Each node is a real ``aioray start ... --block`` process (its supervisor, raylet and, on the head,
GCS), so a test can add nodes with their own resources, connect a driver, and kill a node as a
machine would die::

    from aioray.cluster_utils import Cluster

    with Cluster(initialize_head=True, head_node_args={"num_cpus": 1}) as cluster:
        node = cluster.add_node(num_cpus=1, resources={"accel": 1})
        cluster.wait_for_nodes()
        cluster.connect()
        ...
        cluster.remove_node(node, allow_graceful=False)   # SIGKILL: supervisor, raylet, workers

Nodes on one machine do not clash: store segments carry each raylet's pid and node id, and each
node gets a session folder of its own (``TMPDIR`` of its processes, under the cluster's temporary
folder), so its session file, logs, spill files and GCS storage neither collide with each other nor
touch those of a cluster started with ``aioray start`` (``aioray.init(address="auto")`` does not see
this cluster: connect with `Cluster.connect` or ``aioray.init(address=cluster.address)``, with the
cluster's token in ``AIORAY_AUTH_TOKEN``). The processes inherit ``AIORAY_SESSION_TAG``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from typing import Any

from aioray._private import api, worker_api
from aioray._private.common import process, rpc, segments
from aioray._proto.aioray import v1 as pb

MiB = 1 << 20
# Ray's Cluster gives a node 1 CPU and a 150 MiB store unless told otherwise.
DEFAULT_NODE_ARGS: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 150 * MiB}
NODE_START_TIMEOUT_S = 130.0  # a supervisor may take two node start-ups (the CLI's own limit)
GRACEFUL_STOP_TIMEOUT_S = 40.0  # the CLI gives its supervisor 30 s to stop the daemons
_NODE_ARGS = {"num_cpus", "num_gpus", "resources", "object_store_memory", "prestart_workers", "env", "labels"}


class ClusterNode:
    """A node of a `Cluster`: the ``aioray start --block`` process that runs it, and what it reported."""

    def __init__(
        self,
        name: str,
        is_head: bool,
        proc: subprocess.Popen[bytes],
        folder: str,
        resources: dict[str, float],
    ) -> None:
        self.name = name
        self.is_head = is_head
        self.proc = proc
        self.folder = folder
        self.log_path = os.path.join(folder, "node.log")
        self.resources = resources  # what was asked for: num_cpus/num_gpus as CPU/GPU, plus custom ones
        self.info: dict[str, Any] = {}  # the node's session file: node_id, raylet_address, store_name, pids

    @property
    def session_dir(self) -> str:
        return os.path.join(self.folder, "aioray-session")

    def load_info(self) -> bool:
        """Reads what the node's supervisor reported in its session file once it started; False if
        it has not yet (or it stopped and removed it before we read it)."""
        if self.info:
            return True
        name = "cluster.json" if self.is_head else "node-*.json"
        for path in glob.glob(os.path.join(self.session_dir, name)):
            with contextlib.suppress(OSError, ValueError):
                with open(path) as f:
                    info: dict[str, Any] = json.load(f)
                if "node_id" in info:
                    self.info = info
                    return True
        return False

    def _field(self, key: str) -> str:
        if not self.load_info():
            raise RuntimeError(f"node {self.name} has not started yet: Cluster.wait_for_nodes() first")
        return str(self.info[key])

    @property
    def node_id(self) -> str:
        """The node's id (hex), as in ``aioray.nodes()[i]["NodeID"]``."""
        return self._field("node_id")

    @property
    def unique_id(self) -> str:
        """Ray's name for `node_id`."""
        return self.node_id

    @property
    def address(self) -> str:
        """The raylet's HOST:PORT."""
        return self._field("raylet_address")

    @property
    def node_manager_port(self) -> int:
        return rpc.split_address(self.address)[1]

    @property
    def store_name(self) -> str:
        return self._field("store_name")

    @property
    def pid(self) -> int:
        """The pid of the ``aioray start --block`` process; the node's daemons run under it."""
        return self.proc.pid

    def all_processes(self) -> list[int]:
        """Pids of the node's live processes: the CLI process, its supervisor, raylet, GCS, workers."""
        if self.proc.poll() is not None:
            return process.descendants(self.proc.pid)
        return [self.proc.pid, *process.descendants(self.proc.pid)]

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the node's output (the CLI's, its supervisor's and its daemons')."""
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
        return ""

    def __repr__(self) -> str:
        node = self.info.get("node_id", "?")[:12]
        return f"ClusterNode({self.name!r}, node_id={node}, head={self.is_head}, pid={self.proc.pid})"


class Cluster:
    """A cluster of nodes on this machine, each a separate ``aioray start --block`` process.

    `initialize_head` adds the head node at once (with `head_node_args`); `connect` then connects
    this process as a driver. The first node added is the head. Use `shutdown` (or ``with``) to stop
    every node; it also runs at exit while `shutdown_at_exit`.
    """

    def __init__(
        self,
        initialize_head: bool = False,
        connect: bool = False,
        head_node_args: dict[str, Any] | None = None,
        shutdown_at_exit: bool = True,
    ) -> None:
        if connect and not initialize_head:
            raise ValueError("connect=True needs initialize_head=True: there is nothing to connect to")
        self.head_node: ClusterNode | None = None
        self.worker_nodes: list[ClusterNode] = []
        self.connected = False
        self.token = secrets.token_hex(16)
        self._port = rpc.free_port()
        self._dir = tempfile.mkdtemp(prefix="aioray-cluster-")
        self._count = 0
        if shutdown_at_exit:
            ref = weakref.ref(self)

            def at_exit() -> None:
                cluster = ref()
                if cluster is not None:
                    cluster.shutdown()

            self._at_exit: Any = at_exit
            atexit.register(at_exit)
        else:
            self._at_exit = None
        try:
            if initialize_head:
                self.add_node(**(head_node_args or {}))
                if connect:
                    self.connect()
        except BaseException:
            self.shutdown()
            raise

    # -- addresses ------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The head's GCS address, HOST:PORT: what ``aioray.init(address=...)`` takes."""
        return f"127.0.0.1:{self._port}"

    @property
    def gcs_address(self) -> str:
        return self.address

    def list_all_nodes(self) -> list[ClusterNode]:
        """The head (if any) and then the other nodes, in the order they were added."""
        return ([self.head_node] if self.head_node is not None else []) + list(self.worker_nodes)

    # -- nodes ----------------------------------------------------------------------------------

    def add_node(self, wait: bool = True, **node_args: Any) -> ClusterNode:
        """Starts a node and returns it once it serves (the head first: the first node added).

        `node_args`: ``num_cpus`` (default 1), ``num_gpus``, ``resources`` (a dict of custom ones),
        ``object_store_memory`` (default 150 MiB), ``prestart_workers``, ``labels`` (a dict), ``env`` (extra environment
        variables for the node's processes). Ray's other arguments are accepted with a warning and
        have no effect. With ``wait=False`` it returns once the process started; `wait_for_nodes`
        then waits for the node to join.
        """
        unknown = sorted(set(node_args) - _NODE_ARGS)
        if unknown:
            warnings.warn(
                f"Cluster.add_node() ignores {', '.join(unknown)}: not supported by aioray", stacklevel=2
            )
        args = {**DEFAULT_NODE_ARGS, **{k: v for k, v in node_args.items() if k in _NODE_ARGS}}
        head = self.head_node is None
        name = "head" if head else f"node{self._count}"
        self._count += 1
        folder = os.path.join(self._dir, f"{self._count - 1:02d}-{name}")  # unique: a head may come back
        os.makedirs(folder, mode=0o700)
        argv = ["--head", "--port", str(self._port)] if head else ["--address", self.address]
        resources = dict(args.get("resources") or {})
        argv += ["--resources", json.dumps(resources)]
        asked = dict(resources)
        if args.get("num_cpus") is not None:
            argv += ["--num-cpus", str(args["num_cpus"])]
            asked["CPU"] = float(args["num_cpus"])
        if args.get("num_gpus"):
            argv += ["--num-gpus", str(args["num_gpus"])]
            asked["GPU"] = float(args["num_gpus"])
        if args.get("object_store_memory") is not None:
            argv += ["--object-store-memory", str(int(args["object_store_memory"]))]
        if args.get("prestart_workers"):
            argv.append("--prestart-workers")
        if args.get("labels"):
            argv += ["--labels", json.dumps(args["labels"])]
        env = {**os.environ, **(args.get("env") or {})}
        env["TMPDIR"] = folder  # the node's session folder: <folder>/aioray-session
        env[process.TOKEN_ENV] = self.token
        with open(os.path.join(folder, "node.log"), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aioray", "start", *argv, "--block"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        node = ClusterNode(name, head, proc, folder, asked)
        if head:
            self.head_node = node
        else:
            self.worker_nodes.append(node)
        if wait:
            try:
                self._wait_started(node, NODE_START_TIMEOUT_S)
            except BaseException:
                self._stop(node, graceful=False)
                self._forget(node)
                raise
        return node

    def _wait_started(self, node: ClusterNode, timeout: float) -> None:
        """Waits for the node's supervisor to write its session file: then its daemons serve."""
        deadline = time.monotonic() + timeout
        while True:
            if node.load_info():
                return
            if node.proc.poll() is not None:
                raise RuntimeError(
                    f"aioray node {node.name} exited with code {node.proc.returncode} before it started; "
                    f"its output:\n{node.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"aioray node {node.name} did not start within {timeout:.0f}s; its output:\n{node.log_tail()}"
                )
            time.sleep(0.05)

    def remove_node(self, node: ClusterNode, allow_graceful: bool = True) -> None:
        """Stops a node: with `allow_graceful` SIGTERM and wait (its supervisor stops the raylet,
        workers and GCS cleanly), else SIGKILL the whole process tree at once, as when a machine
        loses power. Either way every process of the node is gone when this returns, and its store
        segment and spill files are removed (a SIGKILLed raylet cannot remove them itself)."""
        if node is not self.head_node and node not in self.worker_nodes:
            raise ValueError(f"{node!r} is not a node of this cluster")
        try:
            self._stop(node, graceful=allow_graceful)
        finally:
            self._forget(node)

    def _forget(self, node: ClusterNode) -> None:
        if node is self.head_node:
            self.head_node = None
        elif node in self.worker_nodes:
            self.worker_nodes.remove(node)

    def _stop(self, node: ClusterNode, graceful: bool) -> None:
        node.load_info()  # before a graceful stop removes the session file: its segment's name
        tree = node.all_processes()
        if graceful and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(GRACEFUL_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                graceful = False
                tree = node.all_processes()
        if not graceful:
            for pid in tree:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        node.proc.wait()
        # The daemons are not our children: wait for them to go, and kill any that lingers.
        others = [p for p in tree if p != node.proc.pid]
        deadline = time.monotonic() + (10.0 if graceful else 5.0)
        while not all(process.is_gone(p) for p in others):
            if time.monotonic() > deadline:
                for pid in others:
                    if process.daemon_kind(pid) is not None:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
            time.sleep(0.02)
        if node.load_info():
            segments.remove_node_files(node.store_name, node.node_id, [node.session_dir])

    def wait_for_nodes(self, timeout: float = 30) -> None:
        """Waits until the GCS counts as many live nodes as this cluster has (and each node's id and
        address are known); TimeoutError if not within `timeout` seconds."""
        nodes = self.list_all_nodes()
        deadline = time.monotonic() + timeout
        alive = -1
        while True:
            with contextlib.suppress(ConnectionError, OSError, TimeoutError, rpc.GRPCError):
                alive = sum(1 for n in self._cluster_view().nodes if n.alive)
                # Also each node's report (its session file, written just after it joined).
                if alive == len(nodes) and all(n.load_info() for n in nodes):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout}s waiting for {len(nodes)} live node(s); the GCS has {alive}"
                )
            time.sleep(0.1)

    def _cluster_view(self) -> pb.ClusterView:
        """The GCS's node table, asked over a connection of our own (connected or not, and even from
        inside a running event loop)."""

        async def fetch() -> pb.ClusterView:
            channels = rpc.ChannelPool(self.token)
            try:
                stub = channels.stub(self.address, pb.NodeInfoGcsServiceStub)
                return await stub.get_cluster_view(pb.Empty(), timeout=5)
            finally:
                channels.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, fetch()).result()

    # -- the driver -----------------------------------------------------------------------------

    def connect(self, namespace: str | None = None) -> api.InitContext:
        """Connects this process as a driver: ``aioray.init(address=self.address)``."""
        if self.head_node is None:
            raise RuntimeError("the cluster has no head node: add_node() first")
        if worker_api.current() is not None:
            raise RuntimeError("aioray is already initialised: call aioray.shutdown() first")
        conn = worker_api.init(self.address, namespace=namespace, _token=self.token)
        self.connected = True
        return api.InitContext(conn)

    def shutdown(self) -> None:
        """Disconnects the driver (if `connect` connected it), then stops every node, the head last,
        and removes the cluster's temporary folder. Safe to call twice."""
        if self.connected:
            conn = worker_api.current()
            if conn is not None and conn.gcs_address == self.address:
                worker_api.shutdown()
            self.connected = False
        try:
            for node in [*reversed(self.worker_nodes), *([self.head_node] if self.head_node else [])]:
                self.remove_node(node)
        finally:
            if self._at_exit is not None:
                atexit.unregister(self._at_exit)
                self._at_exit = None
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


__all__ = ["Cluster", "ClusterNode"]
