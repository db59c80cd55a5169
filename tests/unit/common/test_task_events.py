"""The per-process event buffer and its flusher, and the state API's filters."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aioray._private.common import state_query
from aioray._private.common import task_events as te
from aioray._private.common.resources import ResourceSet


def test_a_full_buffer_drops_and_counts() -> None:
    buf = te.TaskEventBuffer(capacity=3, enabled=True)
    for i in range(5):
        buf.record(bytes([i]), 0, te.RUNNING)
    batch, dropped = buf.take()
    assert [e[0] for e in batch] == [b"\x00", b"\x01", b"\x02"] and dropped == 2
    assert buf.take() == ([], 0)


def test_a_disabled_buffer_keeps_nothing() -> None:
    buf = te.TaskEventBuffer(capacity=10, enabled=False)
    buf.record(b"t", 0, te.RUNNING)
    assert len(buf) == 0 and buf.capacity == 0


def test_the_switch_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(te.ENABLED_ENV, "0")
    assert not te.TaskEventBuffer().enabled
    monkeypatch.setenv(te.ENABLED_ENV, "1")
    assert te.TaskEventBuffer().enabled


def test_taking_while_threads_append_loses_nothing() -> None:
    buf = te.TaskEventBuffer(capacity=10**7, enabled=True)
    per_thread, threads = 20_000, 4
    taken: list[te.Event] = []
    done = threading.Event()

    def append(k: int) -> None:
        for i in range(per_thread):
            buf.record(k.to_bytes(2, "little"), i, te.RUNNING)

    workers = [threading.Thread(target=append, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()

    def drain() -> None:
        while not done.is_set():
            taken.extend(buf.take(500)[0])

    drainer = threading.Thread(target=drain)
    drainer.start()
    for w in workers:
        w.join()
    done.set()
    drainer.join()
    taken.extend(buf.take(10**7)[0])
    assert len(taken) == per_thread * threads
    assert len({(e[0], e[1]) for e in taken}) == per_thread * threads


def test_a_shape_becomes_one_shared_dict() -> None:
    shape = ResourceSet({"CPU": 1})
    assert te.plain_resources(shape) == {"CPU": 1.0}
    assert te.plain_resources(shape) is te.plain_resources(shape)
    assert te.plain_resources(ResourceSet({"GPU": 2})) == {"GPU": 2.0}


def test_the_wire_format_round_trips() -> None:
    info = (
        "f",
        "mod.f",
        te.NORMAL_TASK,
        b"j",
        b"",
        b"p",
        te.plain_resources(ResourceSet({"CPU": 1})),
        b"",
        False,
    )
    source: te.Source = (b"n" * 16, b"w" * 16, 42, "worker")
    decoded_source, dropped, events = te.decode(
        te.encode(source, 3, [(b"t", 0, te.SUBMITTED, 1.5, info), (b"t", 0, te.RUNNING, 2.0, None)])
    )
    assert decoded_source == source and dropped == 3
    assert events[0][4] == ("f", "mod.f", te.NORMAL_TASK, b"j", b"", b"p", {"CPU": 1.0}, b"", False)
    assert events[1] == (b"t", 0, te.RUNNING, 2.0, None)


def test_the_flusher_sends_batches_and_reports_what_it_could_not_send() -> None:
    async def main() -> None:
        buf = te.TaskEventBuffer(capacity=100, enabled=True)
        sent: list[tuple[int, int]] = []
        fail = [True]

        async def send(payload: bytes) -> None:
            if fail[0]:
                raise ConnectionError("the GCS is away")
            _, dropped, events = te.decode(payload)
            sent.append((dropped, len(events)))

        flusher = te.EventFlusher(buf, lambda: (b"n", b"w", 1, "driver"), send, interval_s=3600)
        buf.record(b"a", 0, te.RUNNING)
        buf.record(b"b", 0, te.RUNNING)
        await flusher.flush()  # lost: counted for the next batch
        assert sent == [] and len(buf) == 0
        fail[0] = False
        buf.record(b"c", 0, te.RUNNING)
        await flusher.flush()
        assert sent == [(2, 1)]
        buf.record(b"d", 0, te.FINISHED)
        flusher.start()
        await flusher.close()  # the last events go out at close
        assert sent == [(2, 1), (0, 1)]

    asyncio.run(main())


def test_error_types_follow_rays_names() -> None:
    from aioray.exceptions import OutOfMemoryError, RayTaskError, TaskCancelledError, WorkerCrashedError

    assert te.error_type_of(TaskCancelledError("x")) == "TASK_CANCELLED"
    assert te.error_type_of(OutOfMemoryError("x")) == "OUT_OF_MEMORY"
    assert te.error_type_of(WorkerCrashedError("x")) == "WORKER_DIED"
    assert te.error_type_of(RayTaskError("f", "tb", ValueError("v"))) == "TASK_EXECUTION_EXCEPTION"


# -- filters ---------------------------------------------------------------------------------------


ROWS = [
    {"name": "Alpha", "attempt_number": 0, "is_head_node": True, "state": "RUNNING"},
    {"name": "beta", "attempt_number": 1, "is_head_node": False, "state": "FINISHED"},
]
COLUMNS = {"name", "attempt_number", "is_head_node", "state"}


def test_filters_compare_as_ray_does() -> None:
    def names(*filters: tuple[str, str, object]) -> list[str]:
        checked = state_query.check_filters(list(filters), COLUMNS, "rows")
        return [r["name"] for r in state_query.select(ROWS, checked, 10)[0]]

    assert names(("NAME", "=", "alpha")) == ["Alpha"]  # column and value case-insensitive
    assert names(("name", "!=", "ALPHA")) == ["beta"]
    assert names(("attempt_number", "=", "1")) == ["beta"]  # strings converted to the column's type
    assert names(("is_head_node", "=", "true")) == ["Alpha"]
    assert names(("state", "=", "RUNNING"), ("name", "=", "beta")) == []  # all must hold
    assert state_query.select(ROWS, [], 1) == ([ROWS[0]], 2)  # limit, and how many matched


def test_bad_filters_and_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="not supported"):
        state_query.check_filters([("pid", "=", 1)], COLUMNS, "rows")
    with pytest.raises(ValueError, match="predicate"):
        state_query.check_filters([("name", "~", "a")], COLUMNS, "rows")
    with pytest.raises(ValueError, match="limit"):
        state_query.check_limit(0)
