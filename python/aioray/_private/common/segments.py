"""Store segments in /dev/shm: their names, and reclaiming the segments of raylets that died.

A raylet names its segment ``aioray-[TAG-]PID-NODEID16``: TAG is the optional
AIORAY_SESSION_TAG, PID the raylet's own pid and NODEID16 the first 16 hex
digits of its node id. A raylet removes its segment when it stops; one that is
SIGKILLed cannot, so `reclaim_orphans` (run by `aioray start`, `aioray stop` and
every `start_node`, hence `aioray.init()`) unlinks each segment of this user
whose raylet is gone: its pid is no longer a live raylet (no process, a zombie,
or a pid reused by another program). The spill folder of such a raylet
(``spill-NODEID16`` in the session folder) and its workers' log folder
(``logs/NODEID16``) go with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable
from typing import NamedTuple

from aioray._private.common import process

SHM_DIR = "/dev/shm"
PREFIX = "aioray-"
_NAME = re.compile(r"aioray-(?:(?P<tag>.+)-)?(?P<pid>[0-9]+)-(?P<node>[0-9a-f]{16})")


class Segment(NamedTuple):
    tag: str  # "" when untagged
    pid: int  # the raylet that created it
    node_id: str  # 16 hex digits


def session_tag() -> str | None:
    """This process's session tag (AIORAY_SESSION_TAG), None if unset or empty."""
    return os.environ.get(process.TAG_ENV) or None


def segment_name(tag: str | None, pid: int, node_id: str | bytes) -> str:
    """The segment name of the raylet `pid` of node `node_id` (hex or bytes), tagged if `tag`."""
    node_hex = node_id.hex() if isinstance(node_id, bytes) else node_id
    if len(node_hex) < 16 or any(c not in "0123456789abcdef" for c in node_hex[:16]):
        raise ValueError(f"a node id of at least 16 lowercase hex digits, not {node_id!r}")
    if tag and "/" in tag:
        raise ValueError(f"a session tag cannot hold '/': {tag!r}")
    return f"{PREFIX}{tag + '-' if tag else ''}{pid}-{node_hex[:16]}"


def parse(name: str) -> Segment | None:
    """The parts of a segment name made by `segment_name`; None for any other name."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    return Segment(m["tag"] or "", int(m["pid"]), m["node"])


def raylet_alive(pid: int) -> bool:
    return process.daemon_kind(pid) == "raylet"


def reclaim_orphans(tag: str | None = None, spill_dirs: Iterable[str] = ()) -> list[str]:
    """Unlinks this user's segments whose raylet is gone; returns their names.

    With `tag`, only segments of that session tag. For each reclaimed segment,
    ``<d>/spill-NODEID16`` and ``<d>/logs/NODEID16`` are removed from every folder `d` of `spill_dirs`.
    """
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    uid = os.getuid()
    reclaimed = []
    for name in sorted(names):
        seg = parse(name)
        if seg is None or (tag is not None and seg.tag != tag):
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            if os.stat(path).st_uid != uid:
                continue
        except FileNotFoundError:
            continue
        if raylet_alive(seg.pid):
            continue
        if remove_node_files(name, seg.node_id, spill_dirs):
            reclaimed.append(name)
    return reclaimed


def remove_node_files(name: str, node_id: str, spill_dirs: Iterable[str]) -> bool:
    """Unlinks the segment `name` of a dead raylet and removes ``<d>/spill-NODEID16`` and
    ``<d>/logs/NODEID16`` for each folder `d` of `spill_dirs`; True if the segment was there (its
    raylet or a concurrent reclaim may have been first)."""
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except (FileNotFoundError, PermissionError):
        return False
    for d in spill_dirs:
        for folder in (os.path.join(d, f"spill-{node_id[:16]}"), os.path.join(d, "logs", node_id[:16])):
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
    return True


__all__ = [
    "PREFIX",
    "SHM_DIR",
    "Segment",
    "parse",
    "reclaim_orphans",
    "remove_node_files",
    "segment_name",
    "session_tag",
]
