"""The dashboard of an embedded cluster (`aioray.init()`, `aioray.Cluster()`): its URL, its port,
and that it goes with the cluster."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request

import pytest

import aioray
from aioray._private.common import process, rpc, segments

from .multinode import Nodes


def status_of(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/api/cluster_status", timeout=30) as resp:
        data: dict[str, object] = json.loads(resp.read())
        return data


def cmdline(pid: int) -> bytes:
    """The process's command line, NUL-separated (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def dashboards() -> set[int]:
    """This test session's dashboard processes (other sessions may run on the machine)."""
    return {p for p, kind in process.find_daemons(segments.session_tag()).items() if kind == "dashboard"}


def test_init_starts_the_dashboard_on_the_port_asked_for_and_prints_its_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = dashboards()
    port = rpc.free_port()
    context = aioray.init(num_cpus=1, object_store_memory=64 << 20, dashboard_port=port)
    try:
        assert context.dashboard_url == f"http://127.0.0.1:{port}" == context["webui_url"]
        assert f"View the dashboard at {context.dashboard_url}" in capsys.readouterr().err
        assert status_of(context.dashboard_url)["alive_nodes"] == 1
        assert len(dashboards() - before) == 1
    finally:
        aioray.shutdown()
    assert dashboards() <= before


def test_an_explicit_port_in_use_is_an_error_and_the_default_moves_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"dashboard did not start: .*port {port} in use"):
            aioray.init(num_cpus=1, object_store_memory=64 << 20, dashboard_port=port, include_dashboard=True)
        assert not aioray.is_initialized()
    with socket.socket() as default:
        try:  # 8265 may be another cluster's already: either way this one moves on
            default.bind(("127.0.0.1", 8265))
            default.listen()
        except OSError:
            pass
        context = aioray.init(num_cpus=1, object_store_memory=64 << 20)
        try:
            assert context.dashboard_url is not None
            assert context.dashboard_url != "http://127.0.0.1:8265"
            assert status_of(context.dashboard_url)["alive_nodes"] == 1
        finally:
            aioray.shutdown()


def test_include_dashboard_false_starts_none() -> None:
    before = dashboards()
    context = aioray.init(num_cpus=1, object_store_memory=64 << 20, include_dashboard=False)
    try:
        assert context.dashboard_url is None and dashboards() <= before
    finally:
        aioray.shutdown()
    with pytest.raises(ValueError, match="dashboard_port must be a port number"):
        aioray.init(num_cpus=1, dashboard_port=-1)


def test_the_cli_leaves_it_out_when_told() -> None:
    nodes = Nodes()
    try:
        nodes.start_head({"head": 1}, extra=("--include-dashboard=false",))
        assert not [p for p in dashboards() if f"{nodes.address}".encode() in cmdline(p)]
        joining = subprocess.run(
            [sys.executable, "-m", "aioray", "start", "--address", nodes.address, "--dashboard-port", "9"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert joining.returncode == 2 and "are for a head node" in joining.stderr
    finally:
        nodes.stop()


async def test_the_async_cluster_has_a_dashboard_too() -> None:
    port = rpc.free_port()
    async with aioray.Cluster(num_cpus=1, object_store_memory=64 << 20, dashboard_port=port) as cluster:
        assert cluster.dashboard_url == f"http://127.0.0.1:{port}"
