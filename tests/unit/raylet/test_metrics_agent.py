"""The node's metrics: its own, its core workers' reports, the GCS's on the head; ended reporters."""

from __future__ import annotations

from aioray._private.common import metrics
from aioray._private.raylet.metrics_agent import REPORTER_TTL_S, MetricsAgent
from aioray._proto.aioray import v1 as pb


def report(reporter: bytes, finished: int, running: int) -> pb.MetricsReport:
    reg = metrics.Registry()
    reg.counter("aioray_tasks_finished_total", "Finished", ("kind",)).labels("task").inc(finished)
    reg.gauge("aioray_tasks_running", "Running").set(running)
    return pb.MetricsReport(reporter_id=reporter, pid=1, snapshot=metrics.encode_snapshot(reg.snapshot()))


async def test_the_page_merges_the_node_its_workers_and_the_gcs() -> None:
    own = metrics.Registry()
    own.counter("aioray_leases_granted_total", "Granted").inc(5)
    gcs = metrics.Registry()
    gcs.gauge("aioray_cluster_nodes", "Nodes", ("state",)).labels("alive").set(2)

    async def gcs_snapshot() -> metrics.Snapshot | None:
        return gcs.snapshot()

    agent = MetricsAgent(own, gcs_snapshot)
    await agent.report_metrics(report(b"w1", 3, 1))
    await agent.report_metrics(report(b"w2", 4, 1))
    await agent.report_metrics(report(b"w1", 6, 0))  # a newer report replaces the older one
    text = await agent.render()
    assert "aioray_leases_granted_total 5\n" in text
    assert 'aioray_cluster_nodes{state="alive"} 2\n' in text
    assert 'aioray_tasks_finished_total{kind="task"} 10\n' in text
    assert "aioray_tasks_running 1\n" in text


async def test_an_ended_reporter_keeps_its_counts_and_loses_its_levels() -> None:
    now = [0.0]
    agent = MetricsAgent(metrics.Registry(), clock=lambda: now[0])
    await agent.report_metrics(report(b"w1", 3, 1))
    await agent.report_metrics(report(b"driver", 2, 1))
    agent.retire(b"w1")  # its process exited
    agent.retire(b"unknown")
    text = await agent.render()
    assert 'aioray_tasks_finished_total{kind="task"} 5\n' in text and "aioray_tasks_running 1\n" in text
    now[0] += REPORTER_TTL_S + 1  # the driver went silent
    text = await agent.render()
    assert 'aioray_tasks_finished_total{kind="task"} 5\n' in text and "aioray_tasks_running 0\n" not in text
    assert "aioray_tasks_running" not in text


async def test_a_gcs_that_does_not_answer_leaves_the_rest_of_the_page() -> None:
    async def gone() -> metrics.Snapshot | None:
        return None

    own = metrics.Registry()
    own.counter("aioray_leases_granted_total", "Granted").inc()
    agent = MetricsAgent(own, gone)
    await agent.report_metrics(pb.MetricsReport(reporter_id=b"x", pid=3, snapshot=b"not a snapshot"))
    assert await agent.render() == (
        "# HELP aioray_leases_granted_total Granted\n# TYPE aioray_leases_granted_total counter\n"
        "aioray_leases_granted_total 1\n"
    )


async def test_the_endpoint_serves_the_page() -> None:
    import asyncio

    own = metrics.Registry()
    own.gauge("aioray_workers", "Workers", ("state",)).labels("idle").set(2)
    agent = MetricsAgent(own)
    port = await agent.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        body = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert body.endswith(b'aioray_workers{state="idle"} 2\n')
    finally:
        agent.close()
