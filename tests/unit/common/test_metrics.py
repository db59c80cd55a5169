"""The metrics registry, snapshots and their merge, the Prometheus text format, and the /metrics server."""

from __future__ import annotations

import asyncio

import pytest

from aioray._private.common import metrics
from aioray._private.common.metrics_http import MetricsServer


def test_counters_gauges_and_histograms_render_in_the_prometheus_text_format() -> None:
    reg = metrics.Registry()
    done = reg.counter("aioray_things_total", "Things done", ("kind",))
    done.labels("a").inc()
    done.labels("a").inc(2)
    done.labels('we"ird\\one\n').inc()
    reg.gauge("aioray_level", "A level").set(2.5)
    hist = reg.histogram("aioray_latency_seconds", "Latency", ("method",), buckets=(0.1, 1.0))
    child = hist.labels("/x")
    for value in (0.05, 0.1, 0.5, 3.0):
        child.observe(value)
    text = metrics.render(reg.snapshot())
    assert text == (
        "# HELP aioray_latency_seconds Latency\n"
        "# TYPE aioray_latency_seconds histogram\n"
        'aioray_latency_seconds_bucket{method="/x",le="0.1"} 2\n'
        'aioray_latency_seconds_bucket{method="/x",le="1"} 3\n'
        'aioray_latency_seconds_bucket{method="/x",le="+Inf"} 4\n'
        'aioray_latency_seconds_sum{method="/x"} 3.65\n'
        'aioray_latency_seconds_count{method="/x"} 4\n'
        "# HELP aioray_level A level\n"
        "# TYPE aioray_level gauge\n"
        "aioray_level 2.5\n"
        "# HELP aioray_things_total Things done\n"
        "# TYPE aioray_things_total counter\n"
        'aioray_things_total{kind="a"} 3\n'
        'aioray_things_total{kind="we\\"ird\\\\one\\n"} 1\n'
    )


def test_collected_families_are_asked_at_each_snapshot() -> None:
    reg = metrics.Registry()
    queue = [1, 2]
    reg.gauge("aioray_queued", "Queued", collect=lambda: len(queue))
    reg.counter("aioray_by_state_total", "By state", ("state",), collect=lambda: {("x",): 7.0})
    assert "aioray_queued 2\n" in metrics.render(reg.snapshot())
    queue.append(3)
    text = metrics.render(reg.snapshot())
    assert "aioray_queued 3\n" in text and 'aioray_by_state_total{state="x"} 7\n' in text
    # Registered again (a new connection of the process): the new callback replaces the old one.
    reg.gauge("aioray_queued", "Queued", collect=lambda: 0)
    assert "aioray_queued 0\n" in metrics.render(reg.snapshot())


def test_a_name_is_one_kind_with_one_set_of_labels() -> None:
    reg = metrics.Registry()
    reg.counter("aioray_x_total", "x", ("a",))
    with pytest.raises(ValueError, match="registered already"):
        reg.gauge("aioray_x_total", "x", ("a",))
    with pytest.raises(ValueError, match="registered already"):
        reg.counter("aioray_x_total", "x", ("b",))
    with pytest.raises(ValueError, match="has labels"):
        reg.counter("aioray_x_total", "x", ("a",)).labels("1", "2")
    with pytest.raises(ValueError, match="not a Prometheus metric name"):
        reg.counter("aioray-x", "x")


def test_snapshots_travel_and_merge_by_summing() -> None:
    def process(finished: int, running: int, latencies: list[float]) -> metrics.Snapshot:
        reg = metrics.Registry()
        reg.counter("aioray_done_total", "Done", ("kind",)).labels("task").inc(finished)
        reg.gauge("aioray_running", "Running").set(running)
        hist = reg.histogram("aioray_lat_seconds", "Lat", buckets=(1.0,))
        for v in latencies:
            hist.labels().observe(v)
        return metrics.decode_snapshot(metrics.encode_snapshot(reg.snapshot()))

    a, b = process(3, 1, [0.5]), process(4, 2, [0.5, 2.0])
    text = metrics.render(metrics.merge([a, b]))
    assert 'aioray_done_total{kind="task"} 7\n' in text
    assert "aioray_running 3\n" in text
    assert (
        'aioray_lat_seconds_bucket{le="1"} 2\n' in text and 'aioray_lat_seconds_bucket{le="+Inf"} 3\n' in text
    )
    assert "aioray_lat_seconds_count 3\n" in text
    # What outlives a process: its counts, not its levels.
    kept = metrics.render(metrics.merge([metrics.without_gauges(a)]))
    assert "aioray_done_total" in kept and "aioray_running" not in kept


def test_a_family_seen_with_other_labels_is_left_out_of_a_merge() -> None:
    one, other = metrics.Registry(), metrics.Registry()
    one.counter("aioray_n_total", "n", ("a",)).labels("1").inc()
    other.counter("aioray_n_total", "n", ("b",)).labels("2").inc()
    assert 'aioray_n_total{a="1"} 1\n' in metrics.render(metrics.merge([one.snapshot(), other.snapshot()]))
    assert "b=" not in metrics.render(metrics.merge([one.snapshot(), other.snapshot()]))


async def _request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return data


async def test_the_server_answers_get_metrics_and_nothing_else() -> None:
    pages = 0

    async def render() -> str:
        nonlocal pages
        pages += 1
        return "aioray_up 1\n"

    server = MetricsServer(render)
    port = await server.start("127.0.0.1", 0)
    try:
        got = await _request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
        assert body == b"aioray_up 1\n"
        got = await _request(port, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")
        assert got.endswith(b"aioray_up 1\n")
        assert (await _request(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _request(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        head_only = await _request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head_only.startswith(b"HTTP/1.1 200") and head_only.endswith(b"\r\n\r\n")
        assert pages == 3
    finally:
        server.close()


async def test_a_page_that_cannot_be_made_is_an_error_response() -> None:
    async def render() -> str:
        raise RuntimeError("store gone")

    server = MetricsServer(render)
    port = await server.start("127.0.0.1", 0)
    try:
        got = await _request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 500") and b"store gone" in got
    finally:
        server.close()
