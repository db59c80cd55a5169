"""The memory monitor: kills leased workers when the node runs out of memory (Ray's OOM killer).

Every ``AIORAY_MEMORY_MONITOR_REFRESH_MS`` (default 250; 0 disables the
monitor) the raylet reads the node's memory usage and its limit: the tightest
cgroup limit of the raylet's cgroup or its ancestors (v2 ``memory.max``, v1
``memory.limit_in_bytes``; a container's limit counts, not the host's), with
the usage of that cgroup minus its inactive page cache, else ``/proc/meminfo``
(MemTotal - MemAvailable of MemTotal). ``AIORAY_MEMORY_LIMIT_BYTES`` replaces
the limit (the usage is still measured): a deployment knob for a node that
shares its machine, and the way tests make a node run out of memory without
exhausting the machine.

When usage exceeds ``AIORAY_MEMORY_USAGE_THRESHOLD`` (default 0.95) of the
limit, the monitor kills one leased worker, waits for it to exit, reads the
usage again and only then picks another. For ``SETTLE_S`` after a victim
exited it kills again only once usage grew past what it read right after that
exit by ``SETTLE_MARGIN`` (1% of the limit, at least 64 MiB: a worker starting
takes ~30 MiB): some hosts return a dead process's pages to the free count
slowly (a VM whose balloon reports free pages gave back ~15 MiB/s here), and
the monitor would otherwise go on killing workers that hold nothing while the
memory it freed trickles back; growing usage still gets its kill. The victim follows Ray's
group-by-owner policy (`kill_order`): retriable work goes first, grouped by
owner, the biggest group first (then the group granted last), and within a
group the newest lease. Idle workers hold no task and the raylet itself is
never a candidate. The killed worker's death is recorded with its cause, so
the owner fails (or retries) its task with ``OutOfMemoryError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("aioray.raylet")

REFRESH_ENV = "AIORAY_MEMORY_MONITOR_REFRESH_MS"
THRESHOLD_ENV = "AIORAY_MEMORY_USAGE_THRESHOLD"
LIMIT_ENV = "AIORAY_MEMORY_LIMIT_BYTES"
DEFAULT_REFRESH_MS = 250
DEFAULT_THRESHOLD = 0.95
KILL_WAIT_S = 10.0  # how long a killed worker may take to exit before the monitor looks again
SETTLE_S = 30.0  # how long after a kill only growing usage gets another (see the module's doc)
SETTLE_MARGIN_FRACTION = 0.01  # of the limit: growth that counts as growing, while settling
SETTLE_MARGIN_MIN = 64 << 20
IDLE_WARNING_S = 10.0  # how often to say that memory is high but nothing can be killed

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")


# -- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MonitorConfig:
    refresh_s: float = DEFAULT_REFRESH_MS / 1000  # 0: the monitor is off
    threshold: float = DEFAULT_THRESHOLD  # a fraction of the limit
    limit_override: int | None = None  # AIORAY_MEMORY_LIMIT_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MonitorConfig:
        """The configuration from the environment; a malformed value is logged and ignored."""
        refresh_ms = _env_number(env, REFRESH_ENV, DEFAULT_REFRESH_MS, lambda v: v >= 0)
        threshold = _env_number(env, THRESHOLD_ENV, DEFAULT_THRESHOLD, lambda v: 0 <= v <= 1)
        limit = _env_number(env, LIMIT_ENV, 0, lambda v: v >= 0 and v == int(v))
        return cls(refresh_ms / 1000, threshold, int(limit) or None)

    @property
    def enabled(self) -> bool:
        return self.refresh_s > 0


def _env_number(env: Mapping[str, str], name: str, default: float, valid: Callable[[float], bool]) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isnan(value) or not valid(value):
        log.warning("ignoring %s=%r (not a valid value); using %s", name, raw, default)
        return default
    return value


# -- reading memory ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemorySnapshot:
    used: int  # bytes
    limit: int  # bytes
    source: str  # where the limit comes from

    @property
    def fraction(self) -> float:
        return self.used / self.limit if self.limit > 0 else 0.0


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    """A file holding one integer; None when missing, unparsable or "max" (no limit)."""
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _stat_value(path: Path, key: str) -> int | None:
    """The value of `key` in a "key value" file (memory.stat)."""
    text = _read_text(path)
    if text is None:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            with contextlib.suppress(ValueError):
                return int(value.strip())
    return None


def read_cgroup_v2(directory: Path) -> tuple[int | None, int | None]:
    """(used, limit) of a cgroup v2: memory.current minus inactive_file, memory.max (None: "max")."""
    limit = _read_int(directory / "memory.max")
    current = _read_int(directory / "memory.current")
    if current is None:
        return None, limit
    inactive = _stat_value(directory / "memory.stat", "inactive_file") or 0
    return max(0, current - inactive), limit


def read_cgroup_v1(directory: Path) -> tuple[int | None, int | None]:
    """(used, limit) of a cgroup v1 memory controller: usage_in_bytes minus total_inactive_file."""
    limit = _read_int(directory / "memory.limit_in_bytes")
    usage = _read_int(directory / "memory.usage_in_bytes")
    if usage is None:
        return None, limit
    stat = directory / "memory.stat"
    inactive = _stat_value(stat, "total_inactive_file")
    if inactive is None:
        inactive = _stat_value(stat, "inactive_file") or 0
    return max(0, usage - inactive), limit


def read_meminfo(path: Path = PROC / "meminfo") -> tuple[int | None, int | None]:
    """(used, total) of the machine: MemTotal - MemAvailable (MemFree + Buffers + Cached on old kernels)."""
    text = _read_text(path)
    if text is None:
        return None, None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            with contextlib.suppress(ValueError):
                values[name.strip()] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    total = values.get("MemTotal")
    if total is None:
        return None, None
    available = values.get("MemAvailable")
    if available is None:
        parts = [values.get(k) for k in ("MemFree", "Buffers", "Cached")]
        if any(p is None for p in parts):
            return None, total
        available = sum(p for p in parts if p is not None)
    return max(0, total - min(available, total)), total


def own_cgroup_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in the v1 memory controller's."""
    text = _read_text(proc_cgroup) or ""
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(mount: Path, path: str | None) -> list[Path]:
    """The cgroup directories from this process's own up to the mount's root (which may itself be
    the container's cgroup: with a cgroup namespace, or when the own path is not visible)."""
    dirs: list[Path] = []
    if path:
        rel = Path(path.lstrip("/"))
        while rel.parts:
            if (mount / rel).is_dir():
                dirs.append(mount / rel)
            rel = rel.parent
    dirs.append(mount)
    return dirs


def read_cgroup(cgroup_root: Path, proc_cgroup: Path) -> tuple[int, int, str] | None:
    """(used, limit, version) of the tightest memory limit on this process's cgroup or its
    ancestors, with that cgroup's usage; None if no cgroup limits this process."""
    v2_path, v1_path = own_cgroup_paths(proc_cgroup)
    if (cgroup_root / "cgroup.controllers").exists():
        hierarchies = [(cgroup_root, v2_path, read_cgroup_v2, "cgroup v2")]
    else:
        hierarchies = [
            (cgroup_root / "memory", v1_path, read_cgroup_v1, "cgroup v1"),
            (cgroup_root / "unified", v2_path, read_cgroup_v2, "cgroup v2"),
        ]
    best: tuple[int, int, str] | None = None
    for mount, path, reader, version in hierarchies:
        if not mount.is_dir():
            continue
        for directory in _ancestors(mount, path):
            used, limit = reader(directory)
            if used is not None and limit is not None and limit > 0 and (best is None or limit < best[1]):
                best = (used, limit, version)
    return best


def read_memory(
    cgroup_root: Path = CGROUP_ROOT, proc: Path = PROC, limit_override: int | None = None
) -> MemorySnapshot | None:
    """The node's memory use and limit as the monitor sees them (see the module's doc)."""
    used, total = read_meminfo(proc / "meminfo")
    source = "/proc/meminfo"
    cgroup = read_cgroup(cgroup_root, proc / "self" / "cgroup")
    # An unset cgroup limit reads as a huge number: only a limit below the machine's counts.
    if cgroup is not None and (total is None or cgroup[1] < total):
        used, total, source = cgroup
        source = f"{source} limit"
    if used is None:
        return None
    if limit_override is not None:
        return MemorySnapshot(used, limit_override, f"{LIMIT_ENV}, usage from {source}")
    if total is None:
        return None
    return MemorySnapshot(used, total, source)


def process_memory(pid: int, proc: Path = PROC) -> int | None:
    """A process's own memory: its private pages (smaps_rollup, as Ray), else its resident set."""
    text = _read_text(proc / str(pid) / "smaps_rollup")
    if text is not None:
        private = 0
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] in ("Private_Clean:", "Private_Dirty:", "Private_Hugetlb:"):
                with contextlib.suppress(ValueError):
                    private += int(fields[1]) * 1024
        if private:
            return private
    statm = _read_text(proc / str(pid) / "statm")
    if statm is not None:
        fields = statm.split()
        if len(fields) >= 2:
            with contextlib.suppress(ValueError):
                return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    return None


# -- the policy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A leased worker, as the policy sees it."""

    pid: int
    owner: str  # the address of the process that holds the lease
    granted_at: float  # when the lease was granted (monotonic)
    retriable: bool  # the owner said its work has retries left
    worker_id: bytes = b""
    lease_id: bytes = b""


def kill_order(candidates: Sequence[Candidate]) -> list[list[Candidate]]:
    """Ray's group-by-owner policy: the groups to kill from, first first, each newest lease first.

    Retriable leases are grouped by owner, the non-retriable ones form one group. Retriable groups
    come first; then the bigger group (an owner with many tasks at once can afford a retry), then
    the group whose earliest lease is newer (it made the least progress)."""
    groups: dict[tuple[bool, str], list[Candidate]] = {}
    for c in candidates:
        groups.setdefault((c.retriable, c.owner if c.retriable else ""), []).append(c)
    ordered = sorted(
        groups.values(),
        key=lambda g: (not g[0].retriable, -len(g), -min(c.granted_at for c in g)),
    )
    return [sorted(g, key=lambda c: (c.granted_at, c.pid), reverse=True) for g in ordered]


def select_victim(candidates: Sequence[Candidate]) -> Candidate | None:
    """The worker to kill first (see `kill_order`), or None when there is none."""
    order = kill_order(candidates)
    return order[0][0] if order else None


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def oom_message(
    node: str, snapshot: MemorySnapshot, threshold: float, victim: Candidate, victim_bytes: int | None
) -> str:
    """Why the worker was killed: what owners put in OutOfMemoryError."""
    rss = f", {victim_bytes / (1 << 20):.0f} MiB of its own" if victim_bytes is not None else ""
    return (
        f"the memory monitor of node {node} killed worker {victim.worker_id.hex()[:12]} "
        f"(pid {victim.pid}{rss}) because the node's memory usage {_gib(snapshot.used)} of its "
        f"{_gib(snapshot.limit)} limit ({snapshot.source}) is {snapshot.fraction:.3f}, above the "
        f"threshold {threshold:g} ({THRESHOLD_ENV}); it was the newest "
        f"{'retriable' if victim.retriable else 'non-retriable'} lease (owner {victim.owner or '?'}). "
        "Use less memory per task or run fewer at once (num_cpus/memory options); "
        f"{REFRESH_ENV}=0 disables the monitor"
    )


# -- the monitor ---------------------------------------------------------------------------------
Kill = Callable[[Candidate, str], Awaitable[object] | None]


class MemoryMonitor:
    """Reads the node's memory every `config.refresh_s` and kills one leased worker at a time while
    usage is above the threshold: `kill(victim, message)` records the cause and kills it, and
    returns an awaitable that ends when it exited (None if it was gone already)."""

    def __init__(
        self,
        node: Callable[[], str],
        candidates: Callable[[], list[Candidate]],
        kill: Kill,
        config: MonitorConfig,
        read: Callable[[], MemorySnapshot | None] | None = None,
        own_memory: Callable[[int], int | None] = process_memory,
    ) -> None:
        self._node = node
        self._candidates = candidates
        self._kill = kill
        self.config = config
        self._read = read or (lambda: read_memory(limit_override=config.limit_override))
        self._own_memory = own_memory
        self._task: asyncio.Task[None] | None = None
        self._last_idle_warning = -math.inf
        # When the last victim exited and the usage read then.
        self._settling: tuple[float, int] | None = None
        self.kills = 0

    def start(self) -> None:
        if not self.config.enabled or self._task is not None:
            return
        snapshot = self._read()
        if snapshot is None:
            log.warning("memory monitor: the node's memory usage cannot be read; the monitor is off")
            return
        log.info(
            "memory monitor: limit %d bytes (%s), threshold %g, every %.0f ms",
            snapshot.limit,
            snapshot.source,
            self.config.threshold,
            self.config.refresh_s * 1000,
        )
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the monitor, nor the raylet
                log.exception("memory monitor check failed")

    async def check(self) -> Candidate | None:
        """One look: if usage is above the threshold, kills a worker and waits (up to KILL_WAIT_S)
        for it to exit, so the next look sees the memory it freed. Returns the killed worker."""
        snapshot = self._read()
        if snapshot is None or snapshot.used <= snapshot.limit * self.config.threshold:
            return None
        if self._settling is not None:
            exited_at, used_then = self._settling
            margin = max(SETTLE_MARGIN_MIN, SETTLE_MARGIN_FRACTION * snapshot.limit)
            if time.monotonic() - exited_at < SETTLE_S and snapshot.used <= used_then + margin:
                return None  # the last kill's memory is still coming back
            self._settling = None
        victim = select_victim(self._candidates())
        if victim is None:
            now = time.monotonic()
            if now - self._last_idle_warning > IDLE_WARNING_S:
                self._last_idle_warning = now
                log.warning(
                    "memory monitor: usage %d of %d bytes is above the threshold %g, but no leased "
                    "worker can be killed",
                    snapshot.used,
                    snapshot.limit,
                    self.config.threshold,
                )
            return None
        message = oom_message(
            self._node(), snapshot, self.config.threshold, victim, self._own_memory(victim.pid)
        )
        log.warning("%s", message)
        exited = self._kill(victim, message)
        self.kills += 1
        if exited is not None:
            try:
                await asyncio.wait_for(exited, KILL_WAIT_S)
            except TimeoutError:
                return victim  # still there: what it holds is not coming back
        after = self._read()
        if after is not None:
            self._settling = (time.monotonic(), after.used)
        return victim


__all__ = [
    "Candidate",
    "MemoryMonitor",
    "MemorySnapshot",
    "MonitorConfig",
    "kill_order",
    "oom_message",
    "process_memory",
    "read_cgroup",
    "read_cgroup_v1",
    "read_cgroup_v2",
    "read_meminfo",
    "read_memory",
    "select_victim",
]
