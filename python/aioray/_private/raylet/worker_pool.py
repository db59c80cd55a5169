"""The raylet's worker pool: worker processes of this node, started on demand and reused.

A worker is a child process (``python -m aioray._private.core_worker``) that
registers back with its raylet; until then it counts as *starting*, so the
dispatcher does not start more for the same demand. Registered workers wait
in the idle queue for a lease. Each worker holds the read end of a lifeline
pipe: when the raylet dies, however it dies, its workers see the pipe close
and exit. When a worker exits, `on_exit` tells the node manager.

Workers are pooled per runtime environment: a worker started for an environment
(`WorkerEnv`: its interpreter, working directory, variables) only ever runs
leases of that environment (`take_idle(env_hash)`). Past `soft_limit` workers,
starting one for an environment kills idle workers of other environments, so
idle workers of environments no longer used do not pile up. Workers of an
environment that keep exiting before they register are reported through
`on_env_failed`, so that their leases fail instead of waiting for ever.

Each worker's stdout and stderr are files of the node's log folder, which
`logs` (the log monitor) creates, names after the worker's pid and reads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioray._private.common import process
from aioray._private.common.ids import random_id
from aioray._private.raylet.runtime_env_agent import WorkerEnv

log = logging.getLogger("aioray.raylet")

WORKER_START_TIMEOUT_S = 60.0
WORKER_MODULE = "aioray._private.core_worker"
ENV_START_FAILURES = 3  # workers of one environment that exit before registering, in a row, before it fails
# A worker takes a few hundred ms of CPU to start and register. Started all at once (100 actors created in
# one go), they starved the raylet and the GCS of a 2-core machine until the GCS declared the node dead.
# As Ray (`maximum_startup_concurrency`, the node's CPUs): at most this many start at a time, the rest wait.
STARTUP_CONCURRENCY_ENV = "AIORAY_WORKER_STARTUP_CONCURRENCY"


def startup_concurrency() -> int:
    value = os.environ.get(STARTUP_CONCURRENCY_ENV)
    return max(1, int(value)) if value else max(2, os.cpu_count() or 1)


class WorkerLogs(Protocol):
    """Where workers' output goes (`log_monitor.LogMonitor`)."""

    def open_files(self, worker_id: bytes) -> tuple[int, int]: ...
    def started(self, worker_id: bytes, pid: int) -> None: ...
    def not_started(self, worker_id: bytes) -> None: ...
    def exited(self, worker_id: bytes) -> None: ...


@dataclass(eq=False)
class WorkerProc:
    worker_id: bytes
    proc: asyncio.subprocess.Process
    address: str = ""
    registered: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    lease_id: bytes | None = None
    lifeline: int = -1  # write end of the worker's lifeline pipe
    killed: bool = False  # we killed it on purpose: its exit is no news
    env_hash: str = ""  # its runtime environment ("": the node's own)
    started: float = field(default_factory=time.time)
    starting: bool = True  # counted in the pool's `starting` (until it registers or its start fails)


class WorkerPool:
    def __init__(
        self,
        worker_env: Callable[[], Mapping[str, str]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        on_exit: Callable[[WorkerProc, int | None], None],
    ) -> None:
        """`worker_env()` is what a new worker needs to find its node (added to this process's environment)."""
        self._worker_env = worker_env
        self._spawn = spawn
        self._on_exit = on_exit
        self.workers: dict[bytes, WorkerProc] = {}
        self.idle: collections.deque[WorkerProc] = collections.deque()
        self.starting = 0
        self.starting_by_env: collections.Counter[str] = collections.Counter()
        self.start_failures: collections.Counter[str] = collections.Counter()
        self.soft_limit: int | None = None  # workers beyond which idle ones of other environments go
        self.on_env_failed: Callable[[str, str], None] | None = None
        self.on_start_failed: Callable[[], None] | None = None  # a worker of an environment failed to start
        self.logs: WorkerLogs | None = None  # None: workers inherit the raylet's stdout and stderr
        self.stopping = False
        self._startup = asyncio.Semaphore(startup_concurrency())  # held from spawn until registered

    def start(self, count: int, runtime_env: WorkerEnv | None = None) -> None:
        """Starts `count` workers (of `runtime_env`, if given) in the background; counted as starting
        at once, so that the dispatches that run before they register do not start more for the
        same demand."""
        if count <= 0:
            return
        env_hash = runtime_env.hash if runtime_env is not None else ""
        self._trim_idle(count, env_hash)
        self.starting += count
        self.starting_by_env[env_hash] += count
        for _ in range(count):
            self._spawn(self._start_one(runtime_env))

    def starting_for(self, env_hash: str) -> int:
        return self.starting_by_env[env_hash]

    def _trim_idle(self, count: int, env_hash: str) -> None:
        if self.soft_limit is None:
            return
        registered = sum(1 for w in self.workers.values() if w.registered.done())
        excess = registered + self.starting + count - self.soft_limit
        for worker in [w for w in self.idle if w.env_hash != env_hash][: max(0, excess)]:
            self.idle.remove(worker)
            self.kill(worker)

    async def _start_one(self, runtime_env: WorkerEnv | None = None) -> None:
        env_hash = runtime_env.hash if runtime_env is not None else ""
        try:
            await self._startup.acquire()
        except asyncio.CancelledError:
            self._done_starting(env_hash)
            raise
        try:
            if self.stopping:
                self._done_starting(env_hash)
                return
            await self._start_now(runtime_env, env_hash)
        finally:
            self._startup.release()

    async def _start_now(self, runtime_env: WorkerEnv | None, env_hash: str) -> None:
        worker_id = random_id(16)
        env = dict(os.environ)
        if runtime_env is not None:
            env = runtime_env.environ(env)
        env.update(self._worker_env())
        env["AIORAY_WORKER_ID"] = worker_id.hex()
        life_r, life_w = os.pipe()
        env[process.LIFELINE_FD_ENV] = str(life_r)
        out_fd = err_fd = None
        if self.logs is not None:
            try:
                out_fd, err_fd = self.logs.open_files(worker_id)
            except OSError as e:  # a full or read-only disk: the output goes to the raylet's instead
                log.warning("cannot create the log files of a worker: %s", e)
        try:
            proc = await asyncio.create_subprocess_exec(
                runtime_env.python if runtime_env is not None else sys.executable,
                "-m",
                WORKER_MODULE,
                env=env,
                pass_fds=[life_r],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_fd,
                stderr=err_fd,
                cwd=runtime_env.cwd if runtime_env is not None else None,
            )
        except BaseException as e:
            self._done_starting(env_hash)
            os.close(life_w)
            if self.logs is not None and out_fd is not None:
                self.logs.not_started(worker_id)
            if env_hash and isinstance(e, OSError) and self.on_env_failed is not None:
                # The interpreter itself cannot be run: trying again would not help.
                self.on_env_failed(env_hash, f"workers for this runtime environment cannot start: {e}")
                return
            raise
        finally:
            os.close(life_r)
            for fd in (out_fd, err_fd):
                if fd is not None:
                    os.close(fd)
        if self.logs is not None and out_fd is not None:
            self.logs.started(worker_id, proc.pid)
        worker = WorkerProc(worker_id, proc, lifeline=life_w, env_hash=env_hash)
        self.workers[worker_id] = worker
        self._spawn(self._watch(worker))
        failure = None
        try:
            await asyncio.wait_for(asyncio.shield(worker.registered), WORKER_START_TIMEOUT_S)
            self.start_failures.pop(env_hash, None)
        except (TimeoutError, asyncio.CancelledError) as e:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            if isinstance(e, TimeoutError):
                failure = f"a worker did not register within {WORKER_START_TIMEOUT_S:.0f} s"
        except RuntimeError as e:  # it died before registering; _watch cleaned up
            if not self.stopping:
                log.warning("%s", e)
                failure = str(e)
        finally:
            self._worker_done_starting(worker)
        if failure is not None and env_hash and not self.stopping:
            self._start_failed(env_hash, failure)

    def _worker_done_starting(self, worker: WorkerProc) -> None:
        if worker.starting:
            worker.starting = False
            self._done_starting(worker.env_hash)

    def _done_starting(self, env_hash: str) -> None:
        self.starting -= 1
        self.starting_by_env[env_hash] -= 1
        if self.starting_by_env[env_hash] <= 0:
            del self.starting_by_env[env_hash]

    def _start_failed(self, env_hash: str, reason: str) -> None:
        """Counted once the start is over, so that the retry below starts a worker again."""
        self.start_failures[env_hash] += 1
        if self.start_failures[env_hash] < ENV_START_FAILURES:
            if self.on_start_failed is not None:
                self.on_start_failed()
        elif self.on_env_failed is not None:
            del self.start_failures[env_hash]
            self.on_env_failed(
                env_hash,
                f"{ENV_START_FAILURES} workers for this runtime environment exited before they could "
                f"register (the last: {reason}); their output is in the node's worker logs (`aioray logs`)",
            )

    async def _watch(self, worker: WorkerProc) -> None:
        code = await worker.proc.wait()
        if self.logs is not None:
            self.logs.exited(worker.worker_id)
        with contextlib.suppress(OSError):
            os.close(worker.lifeline)
        self.workers.pop(worker.worker_id, None)
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)
        if not worker.registered.done():
            worker.registered.set_exception(
                RuntimeError(f"worker exited with code {code} before registering")
            )
            worker.registered.exception()  # retrieved: a start failure is logged, not raised
        self._on_exit(worker, code)

    def register(self, worker_id: bytes, address: str) -> WorkerProc | None:
        """A started worker reports its address; it joins the idle queue. None if unknown."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.registered.done():
            return None
        worker.address = address
        worker.registered.set_result(None)
        # Not starting from now on, before the dispatch that follows a registration looks: counted
        # as starting there, it would stand for demand it no longer meets once taken, and the
        # dispatch would start no worker for that demand (nothing would dispatch again).
        self._worker_done_starting(worker)
        self.idle.append(worker)
        return worker

    def has_idle(self, env_hash: str = "") -> bool:
        return any(w.env_hash == env_hash for w in self.idle)

    def take_idle(self, env_hash: str = "") -> WorkerProc | None:
        """The longest idle worker of the runtime environment `env_hash`, if one is idle."""
        for worker in self.idle:
            if worker.env_hash == env_hash:
                self.idle.remove(worker)
                return worker
        return None

    def give_back(self, worker: WorkerProc, failed: bool) -> None:
        """A lease ended: the worker is idle again, or killed if it failed or exited."""
        if failed or worker.proc.returncode is not None:
            self.kill(worker)
        elif worker.worker_id in self.workers:
            self.idle.append(worker)

    def kill(self, worker: WorkerProc) -> None:
        """Kills a worker (SIGKILL) on purpose: its exit is not reported as a crash."""
        worker.killed = True
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()

    async def stop(self) -> None:
        """Terminates every worker, killing those that do not exit within 3 s."""
        self.stopping = True
        procs = [w.proc for w in self.workers.values()]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 3)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        await asyncio.gather(*(p.wait() for p in procs), return_exceptions=True)
