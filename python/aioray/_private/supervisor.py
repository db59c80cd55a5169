"""The supervisor of a node started with ``aioray start``: ``python -m aioray._private.supervisor``.

It starts the node's daemons (`node.start_node`: the GCS on a head, the
raylet), writes the node's session file, reports the node on its ready pipe
and then watches them:

- the GCS exiting (crash, SIGKILL, OOM) is restarted on the same host:port with
  the same arguments (``--storage`` included), after a backoff, at most
  `MAX_GCS_RESTARTS` times a minute; past that the node shuts down;
- the raylet exiting ends the node (as in Ray, a raylet is not restarted): its
  store segment is unlinked at once (a SIGKILLed raylet cannot do it), then
  the GCS is stopped and the supervisor exits;
- SIGTERM, SIGINT or SIGHUP, or its own lifeline closing (the foreground
  ``aioray start --block`` that started it died) stop the daemons cleanly and
  remove the session file; a stop asked for by a signal also removes the GCS's
  default SQLite storage (the cluster was ended on purpose), while after a crash
  it stays for the next head on that port to recover from.

The daemons hold lifelines to the supervisor, so a SIGKILLed supervisor takes
them down; a segment left behind then is reclaimed by the next `aioray
start`/`aioray stop`/`aioray.init()` (see `common.segments`). The node's auth
token comes in the environment (AIORAY_AUTH_TOKEN), never on the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import sys
import time
from collections import deque
from typing import Any

from aioray._private import node as node_mod
from aioray._private.common import process, segments
from aioray._private.common.process import Child

MAX_GCS_RESTARTS = 5
RESTART_WINDOW_S = 60.0
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 4.0
GCS_RESTART_TIMEOUT_S = 30.0

log = logging.getLogger("aioray.supervisor")


def write_session_file(path: str, data: dict[str, Any]) -> None:
    """Writes `data` as JSON to `path` atomically (readers never see half a file), private to this user."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Supervisor:
    def __init__(self, config: dict[str, Any], session_file: str | None, token: str) -> None:
        self.config = config
        self.session_file_template = session_file
        self.session_file: str | None = None
        self.token = token
        self.node: node_mod.NodeProcesses | None = None
        self.stop_reason: str | None = None
        self.asked_to_stop = False  # by a signal (`aioray stop`, Ctrl-C), not by a crash
        self.restarts: deque[float] = deque()
        self.dashboard_restarts: deque[float] = deque()
        self.dashboard_next_start = 0.0
        self.dashboard_gave_up = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lifeline = process.take_lifeline_fd()

    # -- signals and waiting -----------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.asked_to_stop = True
        if self.stop_reason is None:
            self.stop_reason = f"received {signal.Signals(signum).name}"

    def _lifeline_closed(self) -> bool:
        if self._lifeline is None:
            return False
        r, _, _ = select.select([self._lifeline], [], [], 0)
        if not r:
            return False
        try:
            data = os.read(self._lifeline, 4096)
        except OSError:
            data = b""
        if data:
            return False
        os.close(self._lifeline)
        self._lifeline = None
        return True

    def _wait(self, timeout: float) -> None:
        """Sleeps up to `timeout`, waking at once on a signal, the lifeline or a child's exit."""
        fds = [self._wake_r] + ([self._lifeline] if self._lifeline is not None else [])
        pidfds = []
        poll_s = timeout
        for child in self.node.children if self.node is not None else []:
            try:
                pidfds.append(os.pidfd_open(child.proc.pid))
            except (OSError, AttributeError):  # an old kernel, or the child was reaped already
                poll_s = min(poll_s, 0.1)
        try:
            select.select(fds + pidfds, [], [], poll_s)
        finally:
            for fd in pidfds:
                os.close(fd)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _stopping(self) -> bool:
        if self.stop_reason is None and self._lifeline_closed():
            self.stop_reason = "the process that started it exited"
        return self.stop_reason is not None

    # -- the node ----------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        cfg = self.config
        self.node = node_mod.start_node(
            head=bool(cfg.get("head")),
            gcs_address=cfg.get("gcs_address"),
            host=cfg.get("host", "127.0.0.1"),
            port=cfg.get("port"),
            num_cpus=cfg.get("num_cpus"),
            num_gpus=cfg.get("num_gpus"),
            resources=cfg.get("resources"),
            object_store_memory=cfg.get("object_store_memory"),
            memory=cfg.get("memory"),
            labels=cfg.get("labels"),
            token=self.token,
            lifeline=True,
            detach=True,  # out of the terminal's process group: Ctrl-C reaches the supervisor only
            log_files=bool(cfg.get("log_files", True)),
            prestart_workers=bool(cfg.get("prestart_workers")),
            storage=cfg.get("storage"),
            metrics_export_port=cfg.get("metrics_export_port"),
            include_dashboard=cfg.get("include_dashboard", False),
            dashboard_host=cfg.get("dashboard_host") or "127.0.0.1",
            dashboard_port=cfg.get("dashboard_port"),
        )
        if self.session_file_template is not None:
            self.session_file = self.session_file_template.replace("{node_id}", self.node.node_id)
        self.write_session_file()
        return {**self.info(), "session_file": self.session_file}

    def info(self) -> dict[str, Any]:
        assert self.node is not None
        info = self.node.info()
        info["pids"] = [os.getpid(), *info["pids"]]
        info["supervisor_pid"] = os.getpid()
        info["token"] = self.token
        return info

    def write_session_file(self) -> None:
        if self.session_file is not None:
            write_session_file(self.session_file, self.info())

    def remove_session_file(self) -> None:
        """Removes the session file if it is still this supervisor's (another head may have replaced it)."""
        if self.session_file is None:
            return
        try:
            with open(self.session_file) as f:
                owner = json.load(f).get("supervisor_pid")
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            owner = os.getpid()  # unreadable: nobody's
        if owner == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.session_file)

    def run(self) -> int:
        """Watches the daemons until the node stops; the exit code: 0 when asked to stop, else 1."""
        node = self.node
        assert node is not None
        while True:
            if self._stopping():
                log.info("stopping node %s: %s", node.node_id[:12], self.stop_reason)
                return 0
            code = node.raylet.proc.poll()
            if code is not None:
                self.on_raylet_exit(code)
                return 1
            if node.runs_gcs:
                gcs = node.gcs
                gcs_code = -1 if gcs is None else gcs.proc.poll()
                if gcs_code is not None:
                    if not self.restart_gcs(gcs, gcs_code):
                        return 1
                    continue
            self.check_dashboard()
            self._wait(1.0)

    def on_raylet_exit(self, code: int) -> None:
        node = self.node
        assert node is not None
        removed = segments.remove_node_files(node.store_name, node.node_id, [node_mod.session_dir()])
        log.warning(
            "the raylet of node %s (pid %d) exited with code %s%s; stopping the node",
            node.node_id[:12],
            node.raylet.proc.pid,
            code,
            f" and left its store segment {node.store_name}, now removed" if removed else "",
        )

    def restart_gcs(self, old: Child | None, code: int) -> bool:
        """Starts the GCS again after a backoff; False once the restart limit is reached."""
        node = self.node
        assert node is not None
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        if old is not None:
            log.warning("the GCS at %s (pid %d) exited with code %s", node.gcs_address, old.proc.pid, code)
            old.close_lifeline()
            node.gcs = None
        if len(self.restarts) >= MAX_GCS_RESTARTS:
            log.error(
                "the GCS at %s died again after %d restarts within %.0f s; stopping the node",
                node.gcs_address,
                len(self.restarts),
                RESTART_WINDOW_S,
            )
            return False
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** len(self.restarts))
        deadline = now + delay
        while (left := deadline - time.monotonic()) > 0:
            self._wait(left)
            if self._stopping() or node.raylet.proc.poll() is not None:
                return True  # the loop stops the node
        self.restarts.append(time.monotonic())
        attempt = len(self.restarts)
        log.warning(
            "restarting the GCS at %s (restart %d, at most %d a minute)",
            node.gcs_address,
            attempt,
            MAX_GCS_RESTARTS,
        )
        try:
            gcs = node.restart_gcs(GCS_RESTART_TIMEOUT_S)
        except (OSError, RuntimeError) as e:
            log.error("the GCS at %s did not restart: %s", node.gcs_address, e)
            return True  # counted: the next round waits longer, or gives up
        log.warning("the GCS at %s is back (pid %d)", node.gcs_address, gcs.proc.pid)
        self.write_session_file()
        return True

    def check_dashboard(self) -> None:
        """Restarts the dashboard once it exited, after a backoff; past `MAX_GCS_RESTARTS` a minute
        it stays down (the cluster works without it)."""
        node = self.node
        assert node is not None
        if not node.runs_dashboard or self.dashboard_gave_up:
            return
        old = node.dashboard
        if old is not None and old.proc.poll() is None:
            return
        now = time.monotonic()
        if old is not None:
            log.warning("the dashboard (pid %d) exited with code %s", old.proc.pid, old.proc.returncode)
            old.close_lifeline()
            node.dashboard = None
            while self.dashboard_restarts and now - self.dashboard_restarts[0] > RESTART_WINDOW_S:
                self.dashboard_restarts.popleft()
            if len(self.dashboard_restarts) >= MAX_GCS_RESTARTS:
                log.error("the dashboard died again after %d restarts; leaving it down", MAX_GCS_RESTARTS)
                self.dashboard_gave_up = True
                return
            self.dashboard_next_start = now + min(
                BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** len(self.dashboard_restarts)
            )
        if now < self.dashboard_next_start:
            return
        self.dashboard_restarts.append(now)
        try:
            dashboard = node.restart_dashboard(GCS_RESTART_TIMEOUT_S)
        except (OSError, RuntimeError) as e:
            log.error("the dashboard did not restart: %s", e)
            self.dashboard_next_start = time.monotonic() + BACKOFF_MAX_S
            self.dashboard_gave_up = len(self.dashboard_restarts) >= MAX_GCS_RESTARTS
            return
        log.warning("the dashboard is back at %s (pid %d)", node.dashboard_url, dashboard.proc.pid)
        self.write_session_file()

    def shutdown(self) -> None:
        """Stops the daemons (the raylet first), removes the segment if left and the session file."""
        # First: `aioray stop --force` may SIGKILL this process while the daemons stop. (The GCS
        # keeps the unlinked file open until it exits.)
        if self.asked_to_stop and self.config.get("discard_storage_on_stop"):
            self.discard_storage()
        if self.node is not None:
            self.node.stop()
        self.remove_session_file()

    def discard_storage(self) -> None:
        """A head stopped on purpose ends its cluster: the next `aioray start --head` on this port
        starts afresh. (After a crash the file stays, and a head started again recovers from it.)"""
        url = self.config.get("storage") or ""
        if not url.startswith("sqlite://"):
            return
        path = url[len("sqlite://") :]
        for leftover in (path, f"{path}-wal", f"{path}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aioray-supervisor")
    parser.add_argument("--config", required=True, help="JSON: the keyword arguments of start_node")
    parser.add_argument(
        "--session-file", default=None, help="where to record the node ('{node_id}' is replaced)"
    )
    args = parser.parse_args(argv)
    process.setup_logging(f"supervisor[{os.getpid()}]")
    sup = Supervisor(json.loads(args.config), args.session_file, os.environ.get(process.TOKEN_ENV, ""))
    sup.install_signal_handlers()
    try:
        try:
            ready = sup.start()
        except Exception as e:
            log.error("the node did not start: %s", e)
            with contextlib.suppress(OSError):
                process.announce_ready(json.dumps({"error": str(e)}))
            return 1
        try:
            process.announce_ready(json.dumps(ready))
        except OSError:  # `aioray start` was interrupted before the node was up: no node then
            log.warning("the process that started node %s is gone; stopping it", ready["node_id"][:12])
            return 1
        return sup.run()
    finally:
        sup.shutdown()


if __name__ == "__main__":
    sys.exit(main())
