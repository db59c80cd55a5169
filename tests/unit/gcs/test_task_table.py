"""The GCS task table: states from events in any order, bounded with eviction, queries."""

from __future__ import annotations

import asyncio

from aioray._private.common import serialization
from aioray._private.common import task_events as te
from aioray._private.gcs.task_table import TaskTable
from aioray._proto.aioray import v1 as pb

OWNER: te.Source = (b"A" * 16, b"o" * 16, 10, "driver")
RAYLET: te.Source = (b"B" * 16, b"", 11, "raylet")
WORKER: te.Source = (b"B" * 16, b"w" * 16, 12, "worker")


def info(name: str, has_deps: bool = False) -> tuple[object, ...]:
    return (name, f"mod.{name}", te.NORMAL_TASK, b"\x01\x00\x00\x00", b"", b"", {"CPU": 1.0}, b"", has_deps)


def test_state_follows_the_events_even_when_they_arrive_out_of_order() -> None:
    table = TaskTable()
    t = b"t" * 16
    # The worker's batch reaches the GCS before the owner's.
    table.add(WORKER, 0, [(t, 0, te.RUNNING, 3.0, None), (t, 0, te.RESULT_INLINED, 4.0, {"bytes": 5})])
    table.add(RAYLET, 0, [(t, 0, te.LEASE_GRANTED, 2.5, {"worker_id": b"w" * 16})])
    table.add(
        OWNER, 0, [(t, 0, te.SUBMITTED, 1.0, info("f", has_deps=True)), (t, 0, te.ARGS_RESOLVED, 2.0, None)]
    )
    (row,) = table.query({"detail": True})["result"]
    assert row["state"] == "RUNNING" and row["name"] == "f" and row["node_id"] == (b"B" * 16).hex()
    assert row["worker_pid"] == 12 and row["required_resources"] == {"CPU": 1.0}
    assert [e["type"] for e in row["events"]] == [
        "SUBMITTED",
        "ARGS_RESOLVED",
        "LEASE_GRANTED",
        "RUNNING",
        "RESULT_INLINED",
    ]
    assert row["events"][4]["bytes"] == 5 and row["events"][2]["worker_id"] == (b"w" * 16).hex()
    table.add(
        OWNER,
        0,
        [(t, 0, te.FAILED, 5.0, {"error_type": "TASK_EXECUTION_EXCEPTION", "error_message": "boom"})],
    )
    (row,) = table.query({"detail": True})["result"]
    assert (row["state"], row["error_type"], row["error_message"]) == (
        "FAILED",
        "TASK_EXECUTION_EXCEPTION",
        "boom",
    )
    assert row["creation_time_ms"] == 1000 and row["start_time_ms"] == 3000 and row["end_time_ms"] == 5000


def test_an_event_may_name_another_node() -> None:
    table = TaskTable()
    t = b"t" * 16
    table.add(OWNER, 0, [(t, 0, te.RESULT_FREED, 1.0, {"object_id": b"x", "node_id": b"C" * 16})])
    (row,) = table.query({"detail": True})["result"]
    assert row["events"][0]["node_id"] == (b"C" * 16).hex() and row["events"][0]["source"] == "driver"


def test_retries_are_attempts_of_their_own() -> None:
    table = TaskTable()
    t = b"t" * 16
    table.add(
        OWNER,
        0,
        [(t, 0, te.SUBMITTED, 1.0, info("f")), (t, 0, te.RETRIED, 2.0, {"error_type": "WORKER_DIED"})],
    )
    table.add(OWNER, 0, [(t, 1, te.SUBMITTED, 2.0, info("f")), (t, 1, te.FINISHED, 3.0, None)])
    rows = table.query({"filters": [("task_id", "=", t.hex())]})["result"]
    assert [(r["attempt_number"], r["state"], r["error_type"]) for r in rows] == [
        (0, "FAILED", "WORKER_DIED"),
        (1, "FINISHED", None),
    ]


def test_the_table_is_bounded_and_evicts_finished_attempts_first() -> None:
    table = TaskTable(max_tasks=3)
    ids = [bytes([i]) * 16 for i in range(5)]
    table.add(OWNER, 0, [(ids[0], 0, te.SUBMITTED, 1.0, info("running"))])
    for i in (1, 2):
        table.add(
            OWNER, 0, [(ids[i], 0, te.SUBMITTED, 1.0, info(f"done{i}")), (ids[i], 0, te.FINISHED, 2.0, None)]
        )
    table.add(OWNER, 2, [(ids[3], 0, te.SUBMITTED, 3.0, info("new"))])
    answer = table.query({})
    assert sorted(r["name"] for r in answer["result"]) == ["done2", "new", "running"]
    # The evicted attempt and the two events dropped by a buffer make the answer partial.
    assert (answer["total"], answer["num_after_truncation"]) == (3 + 1 + 2, 3)


def test_queries_filter_limit_and_answer_over_the_service() -> None:
    table = TaskTable()
    for i in range(5):
        t = bytes([i]) * 16
        table.add(OWNER, 0, [(t, 0, te.SUBMITTED, float(i), info("even" if i % 2 == 0 else "odd"))])
    blob = pb.Blob(data=serialization.dumps_plain({"filters": [("name", "=", "EVEN")], "limit": 2}))
    answer = serialization.loads_plain(asyncio.run(table.get_tasks(blob)).data)
    assert [r["name"] for r in answer["result"]] == ["even", "even"] and answer["num_filtered"] == 3
    assert set(answer["result"][0]) == set(te.TASK_COLUMNS)


def test_batches_are_indexed_when_asked_or_when_too_many_wait(monkeypatch) -> None:
    from aioray._private.gcs import task_table

    table = TaskTable()
    t = b"t" * 16
    payload = te.encode(OWNER, 0, [(t, 0, te.SUBMITTED, 1.0, info("f"))])
    asyncio.run(table.add_task_events(pb.Blob(data=payload)))
    assert table.attempts == {}, "kept as it arrived"
    assert [r["name"] for r in table.query({})["result"]] == ["f"]
    monkeypatch.setattr(task_table, "MAX_PENDING_BYTES", len(payload))
    table.add_payload(te.encode(OWNER, 0, [(t, 1, te.SUBMITTED, 2.0, info("f"))]))
    table.add_payload(te.encode(OWNER, 0, [(t, 2, te.SUBMITTED, 3.0, info("f"))]))
    assert len(table.attempts) == 3, "indexed once too many bytes waited"


def test_a_workers_single_result_record_stands_for_the_result_and_finished() -> None:
    table = TaskTable()
    t = b"t" * 16
    table.add(OWNER, 0, [(t, 0, te.SUBMITTED, 1.0, info("f"))])
    table.add(WORKER, 0, [(t, 0, te.RUNNING, 2.0, None), (t, 0, te.RESULT_STORED, 3.0, 4096)])
    (row,) = table.query({"detail": True})["result"]
    assert row["state"] == "FINISHED" and row["end_time_ms"] == 3000
    stored, finished = row["events"][-2:]
    assert (stored["type"], stored["bytes"], finished["type"]) == ("RESULT_STORED", 4096, "FINISHED")
    assert (
        stored["object_id"] == (t + (1).to_bytes(4, "little")).hex()
        and stored["node_id"] == (b"B" * 16).hex()
    )
