"""Figures the closing notes quote that `aioray microbenchmark` does not cover:
spill and restore throughput, object transfer between two nodes against a loopback socket, and
the time to declare a dead node. Run: python benches/cluster_figures.py
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

import aioray
from aioray._private import worker_api
from aioray._private.common import rpc

MiB = 1 << 20


def spill_and_restore() -> None:
    aioray.init(num_cpus=1, object_store_memory=256 * MiB)
    try:
        arrays = [np.random.default_rng(i).integers(0, 255, 32 * MiB, dtype=np.uint8) for i in range(24)]
        start = time.perf_counter()
        refs = [aioray.put(a) for a in arrays]  # 768 MiB into 256 MiB: two thirds go to disk
        put_s = time.perf_counter() - start
        time.sleep(0.3)
        spilled = aioray.stats()["spilled_bytes_total"]
        start = time.perf_counter()
        for r in refs:
            aioray.get(r)
        get_s = time.perf_counter() - start
        time.sleep(0.3)
        restored = aioray.stats()["restored_bytes"]
        print(f"spill: {spilled / MiB:.0f} MiB spilled while putting 768 MiB in {put_s:.2f}s "
              f"({spilled / 1e6 / put_s:.0f} MB/s of spilling, puts included)")  # fmt: skip
        print(f"restore: {restored / MiB:.0f} MiB restored while reading 768 MiB in {get_s:.2f}s "
              f"({restored / 1e6 / get_s:.0f} MB/s)")  # fmt: skip
    finally:
        aioray.shutdown()


def loopback_limit(total: int = 2 << 30) -> float:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def sink() -> None:
        conn, _ = server.accept()
        buf = bytearray(4 * MiB)
        while conn.recv_into(buf):
            pass
        conn.close()

    t = threading.Thread(target=sink)
    t.start()
    client = socket.create_connection(("127.0.0.1", port))
    chunk = b"x" * (4 * MiB)
    start = time.perf_counter()
    sent = 0
    while sent < total:
        client.sendall(chunk)
        sent += len(chunk)
    client.close()
    t.join()
    server.close()
    return total / (time.perf_counter() - start) / 1e9


def transfer_and_detection() -> None:
    port = rpc.free_port()
    address = f"127.0.0.1:{port}"
    cli = [
        sys.executable,
        "-m",
        "aioray",
        "start",
        "--block",
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(1200 * MiB),
    ]
    head = subprocess.Popen([*cli, "--head", "--port", str(port), "--resources", json.dumps({"a": 1})])
    while worker_api.read_cluster_file(address) is None:
        time.sleep(0.05)
    other = subprocess.Popen([*cli, "--address", address, "--resources", json.dumps({"b": 1})])
    aioray.init(address=address)
    try:
        while sum(n["Alive"] for n in aioray.nodes()) < 2:
            time.sleep(0.1)

        @aioray.remote(resources={"b": 1})
        def make(n: int):
            return np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)

        for size in (100 * MiB, 500 * MiB):
            ref = make.remote(size)
            aioray.wait([ref], fetch_local=False, timeout=120)
            start = time.perf_counter()
            aioray.get(ref)
            s = time.perf_counter() - start
            print(f"transfer node b -> head: {size / MiB:.0f} MiB in {s:.3f}s = {size / 1e9 / s:.2f} GB/s")
            del ref
        print(f"loopback TCP, one stream (the limit): {loopback_limit():.2f} GB/s")
        start = time.perf_counter()
        other.send_signal(signal.SIGKILL)
        other.wait()
        while all(n["Alive"] for n in aioray.nodes()):
            time.sleep(0.05)
        print(f"dead node detected after {time.perf_counter() - start:.2f}s")
    finally:
        aioray.shutdown()
        for p in (other, head):
            if p.poll() is None:
                p.terminate()
                p.wait()


if __name__ == "__main__":
    spill_and_restore()
    transfer_and_detection()
