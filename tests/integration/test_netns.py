"""Two nodes in separate network namespaces, each with its own address, joined over a veth pair."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from aioray._private import worker_api

HEAD_IP, NODE_IP = "10.231.7.1", "10.231.7.2"


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _can_make_namespaces() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"aioray-probe-{uuid.uuid4().hex[:6]}"
    try:
        _run("ip", "netns", "add", probe)
    except subprocess.CalledProcessError as e:
        return f"this machine cannot create network namespaces: {e.stderr.decode().strip()}"
    _run("ip", "netns", "del", probe)
    return None


@pytest.fixture
def namespaces():
    reason = _can_make_namespaces()
    if reason is not None:  # the test machines can; elsewhere say what is missing rather than pass quietly
        pytest.fail(f"{reason}: run the tests as root on a host with iproute2 (apt-get install iproute2)")
    tag = uuid.uuid4().hex[:6]
    a, b = f"aioray-a-{tag}", f"aioray-b-{tag}"
    _run("ip", "netns", "add", a)
    _run("ip", "netns", "add", b)
    try:
        _run("ip", "link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        _run("ip", "link", "set", f"va{tag}", "netns", a)
        _run("ip", "link", "set", f"vb{tag}", "netns", b)
        for ns, dev, ip in ((a, f"va{tag}", HEAD_IP), (b, f"vb{tag}", NODE_IP)):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        subprocess.run(["ip", "netns", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", b], capture_output=True)


DRIVER = """
import sys, time, numpy as np, aioray
aioray.init(address=sys.argv[1])
deadline = time.monotonic() + 60
while sum(n["Alive"] for n in aioray.nodes()) < 2:
    assert time.monotonic() < deadline, "the second node never joined"
    time.sleep(0.1)

@aioray.remote(resources={"b": 1})
def far():
    ctx = aioray.get_runtime_context()
    return ctx.get_node_id(), np.full(50 << 20, 5, dtype=np.uint8)

node, arr = aioray.get(far.remote(), timeout=120)
nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in aioray.nodes()}
print(nodes[node], int(arr[0]), arr.nbytes)
aioray.shutdown()
"""


def test_nodes_in_separate_network_namespaces(namespaces) -> None:
    ns_a, ns_b = namespaces
    port = 42000 + os.getpid() % 1000
    address = f"{HEAD_IP}:{port}"
    exe = [
        sys.executable,
        "-m",
        "aioray",
        "start",
        "--block",
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(200 << 20),
    ]
    head = subprocess.Popen(
        ["ip", "netns", "exec", ns_a, *exe, "--head", "--port", str(port), "--node-ip-address", HEAD_IP,
         "--resources", '{"a": 1}'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    procs = [head]
    try:
        deadline = time.monotonic() + 30
        while worker_api.read_cluster_file(address) is None:
            assert time.monotonic() < deadline and head.poll() is None, "the head did not start"
            time.sleep(0.05)
        node = subprocess.Popen(
            ["ip", "netns", "exec", ns_b, *exe, "--address", address, "--node-ip-address", NODE_IP,
             "--resources", '{"b": 1}'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(node)
        out = subprocess.run(
            ["ip", "netns", "exec", ns_a, sys.executable, "-c", DRIVER, address],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        where, first, nbytes = out.stdout.split()
        assert where == NODE_IP, "the task ran on the node of the other namespace"
        assert (int(first), int(nbytes)) == (5, 50 << 20), "the 50 MiB result crossed the veth link intact"
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
