"""Metrics of one process: counters, gauges and histograms, and the Prometheus text format.

Every aioray process (driver, worker, raylet, GCS) counts into its own
`REGISTRY`. Core workers send snapshots of theirs to their node's raylet,
which merges them with its own (and, on the head, the GCS's) and serves the
node's ``/metrics`` endpoint (`raylet/metrics_agent.py`, `metrics_http.py`).

Counting is meant for hot paths: a family's child for a set of label values is
looked up once (``FINISHED = TASKS.labels("task")``) and then ``inc()`` is one
attribute add. What is cheaper to count when asked than to keep counting
(queue lengths, store use) is a gauge with a ``collect`` callback, called only
when a snapshot is taken. Snapshots are plain tuples (see `Snapshot`): they
travel pickled and merge by summing.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aioray._private.common import serialization
from aioray._proto.aioray import v1 as pb

LabelValues = tuple[str, ...]
# A histogram sample: (per-bucket counts (not cumulative; the last is +Inf), sum, count).
HistogramValue = tuple[tuple[int, ...], float, int]
# One family: (name, kind, help, label names, bucket bounds (histograms) or (), samples), where a
# sample is (label values, value): a float for counters and gauges, a HistogramValue for histograms.
Family = tuple[str, str, str, tuple[str, ...], tuple[float, ...], list[tuple[LabelValues, Any]]]
Snapshot = list[Family]

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
# Seconds: from a local RPC (~100 us) to a long call.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class GaugeChild(CounterChild):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = value

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class HistogramChild:
    __slots__ = ("_bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value
        self.count += 1


Collect = Callable[[], float | Mapping[LabelValues, float]]


class _Family:
    kind = ""

    def __init__(
        self, name: str, help_text: str, labelnames: Iterable[str] = (), collect: Collect | None = None
    ) -> None:
        if not name.replace("_", "a").replace(":", "a").isalnum() or name[0].isdigit():
            raise ValueError(f"not a Prometheus metric name: {name!r}")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._children: dict[LabelValues, Any] = {}
        # Asked for the samples at each snapshot instead of the children (what a process keeps
        # counting anyway, or is cheaper to count when asked: queue lengths, store use).
        self.collect = collect

    def _new_child(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: str) -> Any:
        """The child for these label values (in `labelnames` order); keep it for hot paths."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} has labels {self.labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new_child()
        return child

    def bounds(self) -> tuple[float, ...]:
        return ()

    def samples(self) -> list[tuple[LabelValues, Any]]:
        if self.collect is not None:
            got = self.collect()
            if isinstance(got, Mapping):
                return list(got.items())
            return [((), float(got))]
        return [(values, child.value) for values, child in self._children.items()]


class Counter(_Family):
    kind = COUNTER

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def labels(self, *values: str) -> CounterChild:
        child: CounterChild = super().labels(*values)
        return child

    def inc(self, amount: float = 1) -> None:
        """For a family without labels."""
        self.labels().inc(amount)


class Gauge(_Family):
    kind = GAUGE

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def labels(self, *values: str) -> GaugeChild:
        child: GaugeChild = super().labels(*values)
        return child

    def set(self, value: float) -> None:
        self.labels().set(value)


class Histogram(_Family):
    kind = HISTOGRAM

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Iterable[str] = (),
        buckets: Iterable[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self._bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def labels(self, *values: str) -> HistogramChild:
        child: HistogramChild = super().labels(*values)
        return child

    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def samples(self) -> list[tuple[LabelValues, Any]]:
        return [(v, (tuple(c.counts), c.sum, c.count)) for v, c in self._children.items()]


class Registry:
    """The metric families of one process, by name."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _get(self, cls: type[_Family], name: str, labelnames: Iterable[str]) -> _Family | None:
        known = self._families.get(name)
        if known is not None and (type(known) is not cls or known.labelnames != tuple(labelnames)):
            raise ValueError(f"metric {name} is registered already as another {known.kind} or labels")
        return known

    def counter(
        self, name: str, help_text: str, labelnames: Iterable[str] = (), collect: Collect | None = None
    ) -> Counter:
        """A counter; with `collect`, its value is asked for at each snapshot (registering the name
        again replaces the callback: a new connection of the process takes it over)."""
        family = self._get(Counter, name, labelnames) or Counter(name, help_text, labelnames)
        assert isinstance(family, Counter)
        if collect is not None:
            family.collect = collect
        self._families[name] = family
        return family

    def gauge(
        self, name: str, help_text: str, labelnames: Iterable[str] = (), collect: Collect | None = None
    ) -> Gauge:
        """A gauge; `collect` as for `counter`."""
        family = self._get(Gauge, name, labelnames) or Gauge(name, help_text, labelnames)
        assert isinstance(family, Gauge)
        if collect is not None:
            family.collect = collect
        self._families[name] = family
        return family

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Iterable[str] = (),
        buckets: Iterable[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        family = self._get(Histogram, name, labelnames) or Histogram(name, help_text, labelnames, buckets)
        self._families[name] = family
        assert isinstance(family, Histogram)
        return family

    def unregister(self, name: str) -> None:
        self._families.pop(name, None)

    def snapshot(self) -> Snapshot:
        out: Snapshot = []
        for f in self._families.values():
            try:
                samples = f.samples()
            except Exception:  # a collector whose object is closing: no samples this time
                samples = []
            out.append((f.name, f.kind, f.help, f.labelnames, f.bounds(), samples))
        return out


REGISTRY = Registry()

# Fed by the task-event buffers (their owner increments it when a full buffer drops events).
TASK_EVENTS_DROPPED = REGISTRY.counter(
    "aioray_task_events_dropped_total", "Task events dropped because their buffer was full"
)


# -- snapshots -----------------------------------------------------------------------------------
def encode_snapshot(snapshot: Snapshot) -> bytes:
    return serialization.dumps_plain(snapshot)


def decode_snapshot(data: bytes) -> Snapshot:
    snapshot: Snapshot = serialization.loads_plain(data)
    return snapshot


def without_gauges(snapshot: Snapshot) -> Snapshot:
    """What of a process's metrics outlives it: its counts, not its current levels."""
    return [f for f in snapshot if f[1] != GAUGE]


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Sums the samples of families of the same name and label values (the first help text wins;
    a family seen with another kind or labels is left out rather than mixed in)."""
    families: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...], dict[LabelValues, Any]]] = {}
    for snapshot in snapshots:
        for name, kind, help_text, labelnames, bounds, samples in snapshot:
            known = families.get(name)
            if known is None:
                known = families[name] = (kind, help_text, tuple(labelnames), tuple(bounds), {})
            elif known[0] != kind or known[2] != tuple(labelnames) or known[3] != tuple(bounds):
                continue
            acc = known[4]
            for values, value in samples:
                values = tuple(values)
                before = acc.get(values)
                if before is None:
                    acc[values] = value
                elif kind == HISTOGRAM:
                    acc[values] = (
                        tuple(a + b for a, b in zip(before[0], value[0], strict=True)),
                        before[1] + value[1],
                        before[2] + value[2],
                    )
                else:
                    acc[values] = before + value
    return [(n, k, h, ln, b, list(acc.items())) for n, (k, h, ln, b, acc) in families.items()]


class MetricsSource(pb.MetricsSourceBase):
    """Serves this process's metrics (the GCS's, which its head's raylet adds to the node's page)."""

    def __init__(self, registry: Registry = REGISTRY) -> None:
        self._registry = registry

    async def get_metrics(self, empty: pb.Empty) -> pb.Blob:
        return pb.Blob(data=encode_snapshot(self._registry.snapshot()))


# -- the Prometheus text format (version 0.0.4) ----------------------------------------------------
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1 << 53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(names: Iterable[str], values: Iterable[str], extra: Mapping[str, str] | None = None) -> str:
    pairs = [*zip(names, values, strict=True), *(extra or {}).items()]
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in pairs) + "}"


def render(snapshot: Snapshot) -> str:
    """The snapshot in the Prometheus text exposition format, families sorted by name."""
    lines: list[str] = []
    for name, kind, help_text, labelnames, bounds, samples in sorted(snapshot, key=lambda f: f[0]):
        lines.append(f"# HELP {name} {_escape_help(help_text)}")
        lines.append(f"# TYPE {name} {kind}")
        for values, value in sorted(samples, key=lambda s: tuple(s[0])):
            if kind != HISTOGRAM:
                lines.append(f"{name}{_labels(labelnames, values)} {_number(value)}")
                continue
            counts, total, count = value
            running = 0
            for bound, n in zip((*bounds, math.inf), counts, strict=True):
                running += n
                le = {"le": _number(bound)}
                lines.append(f"{name}_bucket{_labels(labelnames, values, le)} {running}")
            lines.append(f"{name}_sum{_labels(labelnames, values)} {_number(total)}")
            lines.append(f"{name}_count{_labels(labelnames, values)} {count}")
    return "\n".join(lines) + "\n" if lines else ""


__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "TASK_EVENTS_DROPPED",
    "Counter",
    "Gauge",
    "Histogram",
    "MetricsSource",
    "Registry",
    "Snapshot",
    "decode_snapshot",
    "encode_snapshot",
    "merge",
    "render",
    "without_gauges",
]
