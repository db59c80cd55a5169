"""Segment names that say which raylet made them, the reclaim of dead raylets' segments, and /proc scans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aioray._private.common import process, segments

from ...conftest import SESSION_TAG

NODE = "0123456789abcdef"


def test_names_round_trip() -> None:
    assert segments.segment_name("t42", 1234, NODE + "ffff") == "aioray-t42-1234-0123456789abcdef"
    assert segments.segment_name(None, 7, bytes.fromhex(NODE)) == "aioray-7-0123456789abcdef"
    assert segments.segment_name("", 7, NODE) == "aioray-7-0123456789abcdef"
    assert segments.parse("aioray-t42-1234-0123456789abcdef") == ("t42", 1234, NODE)
    assert segments.parse("aioray-7-0123456789abcdef") == ("", 7, NODE)
    # A tag may hold dashes and digits: the pid is the number just before the node id.
    name = segments.segment_name("t1-c-99", 55, NODE)
    assert segments.parse(name) == segments.Segment("t1-c-99", 55, NODE)


@pytest.mark.parametrize(
    "name",
    [
        "aioray-t42-0123456789abcdef",  # the old names, without a pid: whose they are is unknown
        "aioray-0123456789abcdef",
        "aioray-test-0123456789ab",  # test fixtures' segments
        "aioray-12-0123456789ABCDEF",
        "aioray-12-0123456789abcdef.tmp",
        "other-12-0123456789abcdef",
        "aioray--0123456789abcdef",
    ],
)
def test_other_names_do_not_parse(name: str) -> None:
    assert segments.parse(name) is None


def test_bad_node_ids_and_tags_are_refused() -> None:
    with pytest.raises(ValueError):
        segments.segment_name("t", 1, "xyz")
    with pytest.raises(ValueError):
        segments.segment_name("a/b", 1, NODE)


def _fake_raylet(tag: str) -> subprocess.Popen[bytes]:
    """A process whose command line names the raylet module (as `-m aioray._private.raylet`)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-m", "aioray._private.raylet"],
        env={**os.environ, process.TAG_ENV: tag},
    )
    # Until it has exec'd, the forked child still shows pytest's command line.
    deadline = time.monotonic() + 10
    while b"aioray._private.raylet" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the fake raylet did not start"
        time.sleep(0.005)
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def tag() -> Iterator[str]:
    """A tag of this test alone, and its segments removed afterwards whatever happens."""
    tag = f"{SESSION_TAG}-u{uuid.uuid4().hex[:8]}"
    yield tag
    for name in os.listdir(segments.SHM_DIR):
        if name.startswith(f"aioray-{tag}-"):
            os.unlink(os.path.join(segments.SHM_DIR, name))


def _make(tag: str, pid: int, node: str) -> str:
    name = segments.segment_name(tag, pid, node)
    Path(segments.SHM_DIR, name).write_bytes(b"x")
    return name


def _exists(name: str) -> bool:
    return os.path.exists(os.path.join(segments.SHM_DIR, name))


def test_reclaim_removes_the_segments_of_gone_raylets_only(tag: str, tmp_path: Path) -> None:
    live = _fake_raylet(tag)
    zombie = _fake_raylet(tag)
    try:
        zombie.send_signal(signal.SIGKILL)
        while process.process_state(zombie.pid) not in ("Z", "X", None):
            time.sleep(0.01)  # not reaped: a zombie, dead all the same
        kept = _make(tag, live.pid, "a" * 16)
        dead = _make(tag, _dead_pid(), "b" * 16)
        reused = _make(tag, os.getpid(), "c" * 16)  # a live pid, but no raylet's
        undead = _make(tag, zombie.pid, "d" * 16)
        old_style = f"aioray-{tag}-{'e' * 16}"
        Path(segments.SHM_DIR, old_style).write_bytes(b"x")
        (tmp_path / f"spill-{'b' * 16}").mkdir()
        (tmp_path / f"spill-{'b' * 16}" / "spill-0").write_bytes(b"y")
        (tmp_path / f"spill-{'a' * 16}").mkdir()

        reclaimed = segments.reclaim_orphans(tag, spill_dirs=[str(tmp_path)])

        assert sorted(reclaimed) == sorted([dead, reused, undead])
        assert _exists(kept) and _exists(old_style)
        assert not any(_exists(n) for n in (dead, reused, undead))
        assert not (tmp_path / f"spill-{'b' * 16}").exists()
        assert (tmp_path / f"spill-{'a' * 16}").exists()
        assert segments.reclaim_orphans(tag) == []
    finally:
        live.kill()
        live.wait()
        zombie.wait()


def test_reclaim_keeps_to_its_tag(tag: str) -> None:
    other = f"{tag}-other"
    mine = _make(tag, _dead_pid(), "a" * 16)
    theirs = _make(other, _dead_pid(), "b" * 16)
    assert segments.reclaim_orphans(other) == [theirs]
    assert _exists(mine)
    assert segments.reclaim_orphans(tag) == [mine]


def test_find_daemons_sees_tagged_daemons_and_not_zombies(tag: str) -> None:
    proc = _fake_raylet(tag)
    try:
        assert process.daemon_kind(proc.pid) == "raylet"
        assert process.find_daemons(tag) == {proc.pid: "raylet"}
        assert proc.pid not in process.find_daemons(f"{tag}-other")
        assert process.daemon_kind(os.getpid()) is None  # pytest is no daemon
        proc.send_signal(signal.SIGKILL)
        while process.process_state(proc.pid) not in ("Z", "X", None):
            time.sleep(0.01)
        assert process.is_gone(proc.pid)
        assert process.daemon_kind(proc.pid) is None
        assert process.find_daemons(tag) == {}
    finally:
        proc.kill()
        proc.wait()
    assert process.process_state(proc.pid) is None or process.is_gone(proc.pid)
