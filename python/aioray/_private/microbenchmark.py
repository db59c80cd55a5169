"""``aioray microbenchmark``: the cases of ``ray microbenchmark``, measured the same way.

Each case runs once to warm up, then several timed runs of about `duration`
seconds; the line reports the mean and standard deviation of the rate.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aioray
from aioray._private.common.task_events import ENABLED_ENV

CaseFn = Callable[[], float]  # runs a batch, returns how many operations (or GB) it did


def _timeit(name: str, fn: CaseFn, duration: float, runs: int, unit: str = "/s") -> tuple[float, float]:
    fn()  # warm-up
    rates = []
    for _ in range(runs):
        count = 0.0
        start = time.perf_counter()
        while True:
            count += fn()
            elapsed = time.perf_counter() - start
            if elapsed >= duration:
                break
        rates.append(count / elapsed)
    mean = statistics.fmean(rates)
    std = statistics.pstdev(rates)
    print(
        f"{name} per second {mean:,.2f} +- {std:,.2f}"
        if unit == "/s"
        else f"{name} {mean:,.3f} +- {std:,.3f} {unit}"
    )
    sys.stdout.flush()
    return mean, std


@aioray.remote
def small_value() -> bytes:
    return b"ok"


@aioray.remote
def put_many(n: int) -> int:
    for _ in range(n):
        aioray.put(0)
    return n


@aioray.remote
def put_big(n_bytes: int) -> int:
    import numpy as np

    aioray.put(np.zeros(n_bytes, dtype=np.uint8))
    return n_bytes


@aioray.remote
def submit_many(n: int) -> int:
    aioray.get([small_value.remote() for _ in range(n)])
    return n


@aioray.remote
def small_items(n: int) -> Any:
    for _ in range(n):
        yield b"ok"


@aioray.remote
def create_object_containing_refs(n: int) -> list[Any]:
    return [aioray.put(i) for i in range(n)]


# Wrapped by a call, not decorated: a type checker ignores what a class decorator returns.
class _Actor:
    def small_value(self) -> bytes:
        return b"ok"

    def small_value_arg(self, x: Any) -> bytes:
        return b"ok"

    def small_value_batch(self, n: int) -> int:
        aioray.get([small_value.remote() for _ in range(n)])
        return n


Actor = aioray.remote(_Actor)


class _AsyncActor:
    async def small_value(self) -> bytes:
        return b"ok"

    async def small_value_with_arg(self, x: Any) -> bytes:
        return b"ok"


AsyncActor = aioray.remote(_AsyncActor)


class _Client:
    def __init__(self, servers: list[Any] | Any) -> None:  # a handle, or a list of them
        self.servers = servers if isinstance(servers, list) else [servers]

    def small_value_batch(self, n: int) -> int:
        aioray.get([s.small_value.remote() for s in self.servers for _ in range(n)])
        return n * len(self.servers)

    def small_value_batch_arg(self, n: int) -> int:
        x = aioray.put(0)
        aioray.get([s.small_value_arg.remote(x) for s in self.servers for _ in range(n)])
        return n * len(self.servers)


Client = aioray.remote(_Client)


def _cluster_memory_mib() -> tuple[float, float, int]:
    """(RSS, PSS, process count) of this process and every aioray process below it (workers too).

    RSS counts the pages processes share (interpreter, libraries) once per process; PSS splits
    them among the sharers, so it sums to the memory the cluster really holds.
    """
    me = os.getpid()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    rss = pss = count = 0
    stack = [me]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            count += 1
        except OSError:
            pass
    return rss / 1024, pss / 1024, count


@aioray.remote
def _pause(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _gigabytes(wanted: Callable[[str], bool], duration: float, runs: int) -> None:
    import numpy as np

    # A random array: zeros would hide the cost of touching memory.
    arr = np.random.default_rng(0).integers(0, 255, 800 << 20, dtype=np.uint8)
    gb = arr.nbytes / 1e9

    def put_once() -> int:
        aioray.put(arr)
        return 1

    if wanted("single client put gigabytes"):
        mean, _ = _timeit("single client put calls of 800 MiB", put_once, duration, runs)
        print(f"single client put gigabytes {mean * gb:.2f} GB/s")
    if wanted("single client get gigabytes"):
        big = aioray.put(arr)

        def get_once() -> int:
            aioray.get(big)
            return 1

        mean, _ = _timeit("single client get calls of 800 MiB (zero-copy)", get_once, duration, runs)
        print(f"single client get gigabytes {mean * gb:.2f} GB/s")


def run(
    filter_: str = "",
    duration: float = 2.0,
    runs: int = 3,
    num_cpus: int | None = None,
    task_events: bool | None = None,
) -> None:
    """`task_events` turns task events on or off in every process of the cluster (None: as the
    environment says, on by default)."""

    def wanted(name: str) -> bool:
        return filter_ in name

    if task_events is not None:  # the cluster's processes inherit it
        os.environ[ENABLED_ENV] = "1" if task_events else "0"

    print(
        f"aioray {aioray.__version__} microbenchmark on {os.cpu_count()} CPU(s); {runs} runs of ~{duration}s each; "
        f"task events {'off' if os.environ.get(ENABLED_ENV, '1') == '0' else 'on'}"
    )
    if wanted("init"):
        # Fresh interpreters, so nothing is cached: what a user's first init costs.
        times = []
        for _ in range(runs):
            out = subprocess.run(
                [sys.executable, "-c", "import time,aioray;t=time.perf_counter();aioray.init();print(time.perf_counter()-t);aioray.shutdown()"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            times.append(float(out.stdout.split()[0]))
        print(f"init seconds {statistics.fmean(times):.3f} +- {statistics.pstdev(times):.3f}")

    start = time.perf_counter()
    aioray.init(num_cpus=num_cpus)
    init_s = time.perf_counter() - start
    if wanted("idle"):
        time.sleep(1.0)  # let every process settle
        rss, pss, count = _cluster_memory_mib()
        print(f"idle cluster RSS MiB {rss:.1f} (PSS {pss:.1f}; {count} processes, workers start on the first "
              f"tasks; init took {init_s:.2f}s)")  # fmt: skip
        cpus = int(aioray.cluster_resources().get("CPU", 1))
        workers = len(set(aioray.get([_pause.remote(0.3) for _ in range(cpus)])))
        time.sleep(0.5)
        rss, pss, count = _cluster_memory_mib()
        print(f"warm cluster RSS MiB {rss:.1f} (PSS {pss:.1f}; {count} processes, {workers} workers)")
    value = aioray.put(0)
    if wanted("single client get calls"):
        _timeit("single client get calls (Plasma Store)", lambda: (aioray.get(value), 1)[1], duration, runs)
    if wanted("single client put calls"):
        _timeit("single client put calls (Plasma Store)", lambda: (aioray.put(0), 1)[1], duration, runs)
    if wanted("multi client put calls"):
        _timeit("multi client put calls (Plasma Store)", lambda: sum(aioray.get([put_many.remote(1000) for _ in range(10)])), duration, runs)  # fmt: skip
    if wanted("single client put gigabytes") or wanted("single client get gigabytes"):
        _gigabytes(wanted, duration, runs)
    if wanted("multi client put gigabytes"):
        _timeit("multi client put gigabytes", lambda: sum(aioray.get([put_big.remote(100 << 20) for _ in range(8)])) / 1e9, duration, runs, unit="GB/s")  # fmt: skip
    if wanted("single client tasks and get batch"):
        _timeit("single client tasks and get batch", lambda: len(aioray.get([small_value.remote() for _ in range(1000)])), duration, runs)  # fmt: skip
    if wanted("get object containing 10k refs"):
        ref = create_object_containing_refs.remote(10_000)
        aioray.get(ref)
        _timeit(
            "single client get object containing 10k refs", lambda: (aioray.get(ref), 1)[1], duration, runs
        )
        del ref
    if wanted("wait on 1k refs"):

        def wait_1k() -> int:
            refs = [small_value.remote() for _ in range(1000)]
            while refs:
                _, refs = aioray.wait(refs, num_returns=1)
            return 1

        _timeit("single client wait 1k refs", wait_1k, duration, runs)
    if wanted("tasks sync"):
        _timeit("single client tasks sync", lambda: (aioray.get(small_value.remote()), 1)[1], duration, runs)
    if wanted("tasks async"):
        _timeit("single client tasks async", lambda: len(aioray.get([small_value.remote() for _ in range(1000)])), duration, runs)  # fmt: skip
    if wanted("multi client tasks async"):
        _timeit("multi client tasks async", lambda: sum(aioray.get([submit_many.remote(1000) for _ in range(4)])), duration, runs)  # fmt: skip
    if wanted("1:1 actor calls"):
        a: aioray.ActorHandle = Actor.remote()  # then an AsyncActor's
        _timeit("1:1 actor calls sync", lambda: (aioray.get(a.small_value.remote()), 1)[1], duration, runs)
        _timeit("1:1 actor calls async", lambda: len(aioray.get([a.small_value.remote() for _ in range(1000)])), duration, runs)  # fmt: skip
        c = Actor.options(max_concurrency=16).remote()
        _timeit("1:1 actor calls concurrent", lambda: len(aioray.get([c.small_value.remote() for _ in range(1000)])), duration, runs)  # fmt: skip
    n_cpu = int(aioray.cluster_resources().get("CPU", 1))
    if wanted("1:n actor calls"):
        servers = [Actor.remote() for _ in range(n_cpu)]
        client = Client.remote(servers)
        _timeit(
            "1:n actor calls async", lambda: aioray.get(client.small_value_batch.remote(1000)), duration, runs
        )
    if wanted("n:n actor calls"):
        servers = [Actor.remote() for _ in range(n_cpu)]
        clients = [Client.remote(s) for s in servers]
        _timeit("n:n actor calls async", lambda: sum(aioray.get([c.small_value_batch.remote(1000) for c in clients])), duration, runs)  # fmt: skip
        _timeit("n:n actor calls with arg async", lambda: sum(aioray.get([c.small_value_batch_arg.remote(1000) for c in clients])), duration, runs)  # fmt: skip
    if wanted("async-actor calls"):
        a = AsyncActor.remote()
        _timeit(
            "1:1 async-actor calls sync", lambda: (aioray.get(a.small_value.remote()), 1)[1], duration, runs
        )
        _timeit("1:1 async-actor calls async", lambda: len(aioray.get([a.small_value.remote() for _ in range(1000)])), duration, runs)  # fmt: skip
        _timeit("1:1 async-actor calls with args async", lambda: len(aioray.get([a.small_value_with_arg.remote(i) for i in range(1000)])), duration, runs)  # fmt: skip
    if wanted("await"):

        async def gather_1k() -> int:
            return len(await asyncio.gather(*(small_value.remote() for _ in range(1000))))

        async def asyncio_wait_1k() -> int:
            # typeshed types asyncio.wait for asyncio.Future subclasses only; refs pass at run time.
            done, _ = await asyncio.wait([small_value.remote() for _ in range(1000)])  # type: ignore[type-var]
            return len(done)

        loop = asyncio.new_event_loop()
        _timeit("driver coroutine awaits 1k task refs (asyncio.gather)", lambda: loop.run_until_complete(gather_1k()), duration, runs)  # fmt: skip
        _timeit("driver coroutine asyncio.wait on 1k task refs", lambda: loop.run_until_complete(asyncio_wait_1k()), duration, runs)  # fmt: skip
        loop.close()
    if wanted("generator"):

        def stream_1k() -> int:
            return sum(1 for _ in small_items.remote(1000))

        _timeit("single client generator items (1k small items, one consumer)", stream_1k, duration, runs)
    aioray.shutdown()
