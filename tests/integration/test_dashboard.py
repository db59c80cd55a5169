"""The dashboard of a two-node cluster started with the CLI, read by a real headless Chromium.

The distribution's ``chromium`` (``make deps`` installs it) is driven by Playwright, which is told
where it is (no browser download). Every page must load without a console error, show the
cluster's actual nodes, actor, task events and worker log, and refuse everything beyond the
overview without the cluster token.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

import aioray
from aioray._private import worker_api
from aioray._private.common import process, rpc

from .multinode import Nodes, node_ids_by_resource

DEADLINE_S = 60.0
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


DASHBOARD_PORT = rpc.free_port()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Nodes]:
    nodes = Nodes()
    try:
        nodes.start_head({"head": 1}, num_cpus=2, extra=("--dashboard-port", str(DASHBOARD_PORT)))
        nodes.add_node("second", {"second": 1}, num_cpus=2)
        aioray.init(address=nodes.address, log_to_driver=False)
        nodes.wait_alive(2)
        yield nodes
    finally:
        aioray.shutdown()
        nodes.stop()


@pytest.fixture(scope="module")
def url(cluster: Nodes) -> str:
    # (Not from the session folder's cluster.json: another head started on the machine replaces it.)
    return f"http://127.0.0.1:{DASHBOARD_PORT}"


@pytest.fixture(scope="module")
def token() -> str:
    conn = worker_api.current()
    assert conn is not None
    return conn.core.token


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Tab:
    """A page in a fresh browser context (no cookies), recording console errors."""

    def __init__(self, browser: Browser, base: str) -> None:
        self.context = browser.new_context()
        self.page: Page = self.context.new_page()
        self.base = base
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            self.errors.append(f"console {msg.type}: {msg.text}")

    def open(self, path: str) -> None:
        self.page.goto(self.base + path)

    def wait_text(self, *texts: str, selector: str = "main") -> str:
        """Polls (up to DEADLINE_S) until the element's text holds every one of `texts`."""
        self.page.wait_for_function(
            "([sel, texts]) => { const el = document.querySelector(sel);"
            " return !!el && texts.every(t => el.innerText.includes(t)); }",
            arg=[selector, list(texts)],
            timeout=DEADLINE_S * 1000,
        )
        return str(self.page.inner_text(selector))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Browser, url: str) -> Iterator[Tab]:
    t = Tab(browser, url)
    try:
        yield t
        assert t.errors == []
    finally:
        t.close()


def fetch(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@aioray.remote(resources={"second": 0.1}, num_cpus=0)
class DashboardProbe:
    def where(self) -> tuple[str, int]:
        return aioray.get_runtime_context().get_node_id(), os.getpid()

    def say(self, text: str) -> None:
        print(text, flush=True)


@aioray.remote
def traced_square(x: int) -> int:
    return x * x


def test_the_overview_shows_every_node_without_the_token(tab: Tab, url: str) -> None:
    tab.open("/")
    ids = node_ids_by_resource()
    text = tab.wait_text(ids["head"], ids["second"])
    assert "(head)" in text and "ALIVE" in text and "Object store" in text and "Spilled" in text
    status, body = fetch(f"{url}/api/cluster_status")
    assert status == 200 and {n["node_id"] for n in body["nodes"]} == {ids["head"], ids["second"]}
    assert all(n["store_capacity"] > 0 for n in body["nodes"]) and body["authorized"] is False


def test_protected_pages_are_refused_without_the_token(tab: Tab, url: str, token: str) -> None:
    for page in ("#/actors", "#/tasks", "#/jobs", "#/logs", "#/timeline"):
        tab.open(f"/{page}")
        tab.wait_text("The cluster token is needed here")
    for path in ("/api/v0/actors", "/api/v0/tasks", "/api/v0/logs?node_id=00", "/api/v0/tasks/timeline"):
        status, body = fetch(url + path)
        assert status == 401 and "auth token" in body["error"], (path, body)
        assert fetch(url + path, token + "x")[0] == 401
    try:  # (not in the browser: Chromium logs every 401 page load as a console error)
        urllib.request.urlopen(f"{url}/login?token={token}x", timeout=30)
        raise AssertionError("a wrong token logged in")
    except urllib.error.HTTPError as e:
        assert e.code == 401 and "not the token of this cluster" in e.read().decode()
    assert fetch(f"{url}/api/v0/actors", token)[0] == 200


def test_logged_in_the_pages_show_the_actor_and_its_log(tab: Tab, token: str) -> None:
    probe = DashboardProbe.remote()  # type: ignore[attr-defined]
    node_id, pid = aioray.get(probe.where.remote(), timeout=DEADLINE_S)
    assert node_id == node_ids_by_resource()["second"]
    aioray.get(probe.say.remote("hello from the dashboard probe"), timeout=DEADLINE_S)
    actor_id = probe._actor_id.hex()
    tab.open(f"/login?token={token}")
    tab.wait_text("Cluster")
    tab.open("/#/actors")
    text = tab.wait_text("DashboardProbe", actor_id)
    row = next(line for line in text.splitlines() if actor_id in line)
    assert "ALIVE" in row and str(pid) in row
    tab.page.click(f"tr:has-text('{actor_id}') a:has-text('logs')")
    tab.wait_text(f"-{pid}.out")
    tab.page.click(f"a.log-file:has-text('-{pid}.out')")
    tab.wait_text("hello from the dashboard probe", selector="#log-content")
    tab.page.check("#follow")  # reads the file again, then what is appended, as it comes
    tab.wait_text("hello from the dashboard probe", selector="#log-content")
    aioray.get(probe.say.remote("and a line written while followed"), timeout=DEADLINE_S)
    tab.wait_text("and a line written while followed", selector="#log-content")
    aioray.kill(probe)


def test_the_tasks_page_shows_a_tasks_events(tab: Tab, token: str) -> None:
    ref = traced_square.remote(7)
    assert aioray.get(ref, timeout=DEADLINE_S) == 49
    task_id = ref.task_id().hex()
    tab.open(f"/login?token={token}")
    tab.wait_text("Cluster")
    deadline = time.monotonic() + DEADLINE_S
    while True:  # the events reach the GCS once per report interval
        tab.open("/#/tasks?state=FINISHED")
        try:
            tab.page.wait_for_selector(f"a.task-link:has-text('{task_id}')", timeout=5000)
            break
        except Exception:
            assert time.monotonic() < deadline, tab.page.inner_text("main")
    tab.page.click(f"a.task-link:has-text('{task_id}')")
    text = tab.wait_text("SUBMITTED", "LEASE_GRANTED", "RUNNING", "FINISHED")
    assert "traced_square" in text and "attempt 0" in text
    tab.open("/#/jobs")
    tab.wait_text(worker_api.require().core.job_id.hex(), "DRIVER", "RUNNING")
    tab.open("/#/timeline")
    tab.wait_text("Download the Chrome trace")
    tab.page.wait_for_selector("#timeline-chart .bar", timeout=DEADLINE_S * 1000)


def test_bad_input_gets_clear_errors(url: str, token: str) -> None:
    status, body = fetch(f"{url}/api/v0/tasks/{'ab' * 24}", token)
    assert status == 404 and "no task" in body["error"]
    assert fetch(f"{url}/api/v0/tasks/not-hex", token)[0] == 400
    assert fetch(f"{url}/api/v0/actors/{'cd' * 16}", token)[0] == 404
    status, body = fetch(f"{url}/api/v0/tasks?limit=zero", token)
    assert status == 400 and "limit" in body["error"]
    status, body = fetch(f"{url}/api/v0/tasks?colour=red", token)
    assert status == 400 and "unknown filter" in body["error"]
    status, body = fetch(f"{url}/api/v0/logs?node_id={'ef' * 16}", token)
    assert status == 404 and "no live node" in body["error"]
    head = node_ids_by_resource()["head"]
    status, body = fetch(f"{url}/api/v0/logs/file?node_id={head}&filename=nope.out", token)
    assert status == 404 and "no log file" in body["error"]
    assert fetch(f"{url}/api/v0/logs/file?node_id={head}&filename=../etc/passwd", token)[0] == 400
    assert fetch(f"{url}/no/such/page")[0] == 404
    status, body = fetch(f"{url}/api/cluster_status")  # still serving
    assert status == 200


def test_the_timeline_downloads_as_a_chrome_trace(url: str, token: str) -> None:
    assert aioray.get(traced_square.remote(3), timeout=DEADLINE_S) == 9
    req = urllib.request.Request(
        f"{url}/api/v0/tasks/timeline?download=1", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + DEADLINE_S
    while True:
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert re.match(
                r'attachment; filename="aioray-timeline-.*\.json"', resp.headers["Content-Disposition"]
            )
            events = json.loads(resp.read())
        if any(e["ph"] == "X" and "traced_square" in e["name"] for e in events):
            break
        assert time.monotonic() < deadline, events


def cmdline(pid: int) -> bytes:
    """The process's command line, NUL-separated (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def dashboard_pid(cluster: Nodes) -> int:
    pids = [p for p, kind in process.find_daemons().items() if kind == "dashboard"]
    ours = [p for p in pids if f"--gcs-address\0{cluster.address}".encode() in cmdline(p)]
    assert len(ours) == 1, pids
    return ours[0]


def test_the_supervisor_restarts_a_dead_dashboard_and_it_survives_a_gcs_restart(
    cluster: Nodes, url: str
) -> None:
    old = dashboard_pid(cluster)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            if fetch(f"{url}/api/cluster_status")[0] == 200 and dashboard_pid(cluster) != old:
                break
        except (OSError, AssertionError):
            pass
        assert time.monotonic() < deadline, "the dashboard did not come back"
        time.sleep(0.1)
    gcs = [
        p
        for p, kind in process.find_daemons().items()
        if kind == "gcs" and f"--port\0{cluster.port}\0".encode() in cmdline(p)
    ]
    assert len(gcs) == 1
    os.kill(gcs[0], signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while True:  # 503 while the GCS is away, then the nodes again
        status, body = fetch(f"{url}/api/cluster_status")
        if status == 200 and body["alive_nodes"] == 2:
            break
        assert status in (200, 503), body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
