"""The raylet's worker pool: worker processes of this node, started on demand and reused.

A worker is a child process (``python -m aioray._private.core_worker``) that
registers back with its raylet; until then it counts as *starting*, so the
dispatcher does not start more for the same demand. Registered workers wait
in the idle queue for a lease. Each worker holds the read end of a lifeline
pipe: when the raylet dies, however it dies, its workers see the pipe close
and exit. When a worker exits, `on_exit` tells the node manager.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from aioray._private.common import process
from aioray._private.common.ids import random_id

log = logging.getLogger("aioray.raylet")

WORKER_START_TIMEOUT_S = 60.0
WORKER_MODULE = "aioray._private.core_worker"


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
        self.stopping = False

    def start(self, count: int) -> None:
        """Starts `count` workers in the background; counted as starting at once, so that the
        dispatches that run before they register do not start more for the same demand."""
        self.starting += count
        for _ in range(count):
            self._spawn(self._start_one())

    async def _start_one(self) -> None:
        worker_id = random_id(16)
        env = dict(os.environ)
        env.update(self._worker_env())
        env["AIORAY_WORKER_ID"] = worker_id.hex()
        life_r, life_w = os.pipe()
        env[process.LIFELINE_FD_ENV] = str(life_r)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                WORKER_MODULE,
                env=env,
                pass_fds=[life_r],
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            self.starting -= 1
            os.close(life_w)
            raise
        finally:
            os.close(life_r)
        worker = WorkerProc(worker_id, proc, lifeline=life_w)
        self.workers[worker_id] = worker
        self._spawn(self._watch(worker))
        try:
            await asyncio.wait_for(asyncio.shield(worker.registered), WORKER_START_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        except RuntimeError as e:  # it died before registering; _watch cleaned up
            if not self.stopping:
                log.warning("%s", e)
        finally:
            self.starting -= 1

    async def _watch(self, worker: WorkerProc) -> None:
        code = await worker.proc.wait()
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
        self.idle.append(worker)
        return worker

    def take_idle(self) -> WorkerProc:
        return self.idle.popleft()

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
