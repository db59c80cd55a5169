"""Lease owners that died, and the drivers of this machine, watched until they do.

A lease's owner is the worker or driver that asked for it. A raylet sees only
its own workers exit, so it hears of every other owner's death from the GCS
(`WORKER_DEATH_CHANNEL`): the raylet of a worker reports it, and the raylet a
driver registered with watches the driver's process (`DriverWatch`), since a
SIGKILLed driver tells nobody. The node manager then kills the workers that
dead owner leased (they may be running its tasks, whose results nobody will
read) and drops its queued requests. Dead owners are remembered for a while
(`DeadOwners`): a request sent just before its owner died may arrive after
the news, and must not be granted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Callable

from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.raylet")

MAX_DEAD_OWNERS = 10_000
POLL_S = 1.0  # how often a driver is looked for where pidfds are not available


class DeadOwners:
    """The worker ids of owners known dead, newest last (by id: an address may be reused)."""

    def __init__(self, limit: int = MAX_DEAD_OWNERS) -> None:
        self._ids: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._limit = limit

    def add(self, worker_id: bytes) -> None:
        if not worker_id:
            return
        self._ids[worker_id] = None
        self._ids.move_to_end(worker_id)
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)

    def __contains__(self, worker_id: object) -> bool:
        return bool(worker_id) and worker_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def owned_by(owner_id: bytes, owner_address: str, death: pb.WorkerDeath) -> bool:
    """Whether a lease or request of this owner belongs to the dead process: by worker id where
    both sides know it, else by address (a finished job names only its driver's address)."""
    if owner_id and death.worker_id:
        return owner_id == death.worker_id
    return bool(death.address) and owner_address == death.address


class DriverWatch:
    """Calls `on_exit` with a WorkerDeath once each registered driver process has exited.

    Drivers attach to this node's store, so they run on this machine, in the raylet's pid
    namespace: a pidfd names the process itself, whatever pid is reused later."""

    def __init__(self, node_id: bytes, on_exit: Callable[[pb.WorkerDeath], None]) -> None:
        self._node_id = node_id
        self._on_exit = on_exit
        self._fds: dict[int, bytes] = {}  # pidfd -> the driver's worker id
        self._polls: set[asyncio.Task[None]] = set()
        self.drivers: dict[bytes, pb.RegisterWorkerRequest] = {}

    def watch(self, driver: pb.RegisterWorkerRequest) -> None:
        if driver.worker_id in self.drivers or driver.pid <= 0:
            return
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(driver.pid)
        except ProcessLookupError:
            # Gone before we looked, or not in our pid namespace: reporting it dead could end a
            # live job, so it is left to a clean exit (or its job manager) to finish the job.
            log.warning("driver pid %d is not visible from this raylet: not watched", driver.pid)
            return
        except (OSError, AttributeError):  # no pidfds (old kernel): look for it now and then
            self.drivers[driver.worker_id] = driver
            task = loop.create_task(self._poll(driver))
            self._polls.add(task)
            task.add_done_callback(self._polls.discard)
            return
        self.drivers[driver.worker_id] = driver
        self._fds[fd] = driver.worker_id
        loop.add_reader(fd, self._readable, fd)

    def _readable(self, fd: int) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        worker_id = self._fds.pop(fd, b"")
        self._exited(worker_id)

    async def _poll(self, driver: pb.RegisterWorkerRequest) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                os.kill(driver.pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                continue
        self._exited(driver.worker_id)

    def _exited(self, worker_id: bytes) -> None:
        driver = self.drivers.pop(worker_id, None)
        if driver is None:
            return
        log.info("driver %s (pid %d) exited", driver.worker_id.hex()[:12], driver.pid)
        self._on_exit(
            pb.WorkerDeath(node_id=self._node_id, worker_id=driver.worker_id, address=driver.address)
        )

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in list(self._fds):
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()
        for task in list(self._polls):
            task.cancel()
        self.drivers.clear()


__all__ = ["DeadOwners", "DriverWatch", "owned_by"]
