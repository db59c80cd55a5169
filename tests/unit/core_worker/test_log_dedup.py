"""Deduplication of worker output on the driver (Ray's rules), on a fake clock."""

from __future__ import annotations

from aioray._private.core_worker.log_dedup import LogDeduplicator, canonical
from aioray._proto.aioray import v1 as pb


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def batch(pid: int, *lines: str, node: bytes = b"n1") -> pb.LogBatch:
    return pb.LogBatch(node_id=node, ip="10.0.0.1", pid=pid, task_name="f", lines=list(lines))


def printed(batches: list[pb.LogBatch]) -> list[tuple[int, str]]:
    return [(b.pid, line) for b in batches for line in b.lines]


def test_words_with_numbers_do_not_tell_lines_apart() -> None:
    assert canonical("step 12 took 0x1f ms") == "step took ms"
    assert canonical("loss=0.5 at epoch 3") == "at epoch"


def test_a_line_from_a_second_process_is_held_back_and_counted() -> None:
    clock = Clock()
    dedup = LogDeduplicator(window_s=5, clock=clock)
    assert printed(dedup.deduplicate(batch(1, "warning: slow", "hello 1"))) == [
        (1, "warning: slow"),
        (1, "hello 1"),
    ]
    # The same process may repeat itself: printed each time.
    assert printed(dedup.deduplicate(batch(1, "warning: slow"))) == [(1, "warning: slow")]
    # Others are held back, whatever their numbers.
    assert printed(dedup.deduplicate(batch(2, "warning: slow", "hello 2"))) == []
    assert printed(dedup.deduplicate(batch(3, "warning: slow"))) == []
    # Once a second process said it, the first one's copies are held back too.
    assert printed(dedup.deduplicate(batch(1, "warning: slow"))) == []
    clock.now += 5
    out = dedup.deduplicate(batch(4, "something else"))
    assert printed(out) == [
        (4, "something else"),
        (1, "warning: slow [repeated 3x across cluster] (aioray deduplicates logs by default; "
            "set AIORAY_DEDUP_LOGS=0 to turn it off)"),
        (2, "hello 2"),  # held once: printed plainly, as the process that wrote it
    ]  # fmt: skip


def test_counting_goes_on_in_rounds_and_the_note_comes_once() -> None:
    clock = Clock()
    dedup = LogDeduplicator(window_s=5, clock=clock)
    for pid in (1, 2, 3):
        dedup.deduplicate(batch(pid, "tick"))
    clock.now += 5
    assert printed(dedup.expire())[0][1].startswith("tick [repeated 2x across cluster] (aioray")
    for pid in (1, 2, 3):
        assert dedup.deduplicate(batch(pid, "tick")) == []
    clock.now += 5
    assert printed(dedup.expire()) == [(3, "tick [repeated 3x across cluster]")]
    clock.now += 5
    assert dedup.expire() == []  # nothing held this round: the pattern is forgotten
    assert printed(dedup.deduplicate(batch(9, "tick"))) == [(9, "tick")]


def test_flush_prints_everything_held() -> None:
    dedup = LogDeduplicator(window_s=60, clock=Clock())
    for pid in (1, 2, 3):
        dedup.deduplicate(batch(pid, "same", node=bytes([pid])))
    dedup.deduplicate(batch(5, "other"))
    dedup.deduplicate(batch(6, "other"))
    assert dedup.has_held()
    lines = printed(dedup.flush())
    assert lines[0][1].startswith("same [repeated 2x across cluster]")
    assert lines[1] == (6, "other")
    assert not dedup.has_held() and dedup.flush() == []


def test_processes_of_two_nodes_with_one_pid_are_two_sources() -> None:
    dedup = LogDeduplicator(window_s=5, clock=Clock())
    assert printed(dedup.deduplicate(batch(7, "x", node=b"a"))) == [(7, "x")]
    assert dedup.deduplicate(batch(7, "x", node=b"b")) == []


def test_allowed_lines_pass_skipped_lines_go_and_numbers_only_lines_are_printed() -> None:
    dedup = LogDeduplicator(window_s=5, allow="ALWAYS", skip="^noise", clock=Clock())
    for pid in (1, 2):
        out = printed(dedup.deduplicate(batch(pid, "ALWAYS here", "noise here", "12 34", "")))
        assert out == [(pid, "ALWAYS here"), (pid, "12 34"), (pid, "")]


def test_settings_from_the_environment() -> None:
    assert LogDeduplicator.from_env({"AIORAY_DEDUP_LOGS": "0"}) is None
    dedup = LogDeduplicator.from_env({"AIORAY_DEDUP_LOGS_AGG_WINDOW_S": "2.5"})
    assert dedup is not None and dedup.window_s == 2.5
