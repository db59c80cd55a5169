"""Deduplication of worker output on the driver, as Ray does it.

Many workers often print the same thing (a library's warning, a progress
line). A line is compared by its words without digits or hex numbers, so
lines differing only in numbers count as the same. The first time a line is
seen it is printed. The same line from the same process is printed again each
time; once it comes from a second process, further copies (from any process)
are held back and counted. A line held back is printed once its aggregation
window (`window_s`, from the first time it was seen) passes: with
``[repeated Nx across cluster]`` when several copies were held back, plainly
when one was, then counting starts again. Lines matching the allow pattern are
never held back; lines matching the skip pattern are dropped.

Settings (Ray's, under aioray's names): ``AIORAY_DEDUP_LOGS=0`` turns it off,
``AIORAY_DEDUP_LOGS_AGG_WINDOW_S`` (5), ``AIORAY_DEDUP_LOGS_ALLOW_REGEX``,
``AIORAY_DEDUP_LOGS_SKIP_REGEX``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aioray._proto.aioray import v1 as pb

_NUMBERS = re.compile(r"(\d+|0x[0-9a-fA-F]+)")
NOTE = " (aioray deduplicates logs by default; set AIORAY_DEDUP_LOGS=0 to turn it off)"


def canonical(line: str) -> str:
    """The line without its words that hold numbers (or hex): what repeated lines share."""
    return " ".join(word for word in line.split() if not _NUMBERS.search(word))


def _meta(batch: pb.LogBatch, lines: list[str]) -> pb.LogBatch:
    return pb.LogBatch(
        node_id=batch.node_id,
        ip=batch.ip,
        pid=batch.pid,
        worker_id=batch.worker_id,
        job_id=batch.job_id,
        task_name=batch.task_name,
        actor_name=batch.actor_name,
        is_err=batch.is_err,
        lines=lines,
    )


@dataclass
class _Pattern:
    since: float  # when this round of counting began
    held: int  # copies held back this round
    line: str  # the latest copy
    batch: pb.LogBatch  # the latest copy's source
    sources: set[tuple[bytes, int]] = field(default_factory=set)  # (node, pid) that printed it


class LogDeduplicator:
    def __init__(
        self,
        window_s: float = 5.0,
        allow: str | None = None,
        skip: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._allow = re.compile(allow) if allow else None
        self._skip = re.compile(skip) if skip else None
        self._clock = clock
        self._recent: dict[str, _Pattern] = {}  # oldest round first
        self._noted = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LogDeduplicator | None:
        """As the environment says; None when deduplication is off."""
        if environ.get("AIORAY_DEDUP_LOGS", "1").strip().lower() in ("0", "false", "no"):
            return None
        return cls(
            float(environ.get("AIORAY_DEDUP_LOGS_AGG_WINDOW_S", "5")),
            environ.get("AIORAY_DEDUP_LOGS_ALLOW_REGEX") or None,
            environ.get("AIORAY_DEDUP_LOGS_SKIP_REGEX") or None,
        )

    def deduplicate(self, batch: pb.LogBatch) -> list[pb.LogBatch]:
        """The batches to print now: what of `batch` is not held back, then held-back lines whose
        window passed."""
        now = self._clock()
        source = (batch.node_id, batch.pid)
        shown: list[str] = []
        for line in batch.lines:
            if self._allow is not None and self._allow.search(line):
                shown.append(line)
                continue
            if self._skip is not None and self._skip.search(line):
                continue
            key = canonical(line)
            if not key:  # nothing but numbers (or blank): worth printing as it is
                shown.append(line)
                continue
            pattern = self._recent.get(key)
            if pattern is None:
                self._recent[key] = _Pattern(now, 0, line, batch, {source})
                shown.append(line)
                continue
            pattern.sources.add(source)
            if len(pattern.sources) > 1:
                pattern.held += 1
                pattern.line, pattern.batch = line, batch
            else:
                shown.append(line)
        out = [_meta(batch, shown)] if shown else []
        return out + self.expire(now)

    def _formatted(self, pattern: _Pattern) -> str:
        note = ""
        if not self._noted:
            self._noted = True
            note = NOTE
        return f"{pattern.line} [repeated {pattern.held}x across cluster]{note}"

    def expire(self, now: float | None = None) -> list[pb.LogBatch]:
        """Held-back lines whose window passed, to print now."""
        now = self._clock() if now is None else now
        out = []
        while self._recent:
            key, pattern = next(iter(self._recent.items()))
            if now - pattern.since < self.window_s:
                break
            del self._recent[key]
            if pattern.held > 1:
                out.append(_meta(pattern.batch, [self._formatted(pattern)]))
                # Go on counting it, in a new round (at the end: the oldest stay first).
                pattern.since, pattern.held = now, 0
                self._recent[key] = pattern
            elif pattern.held == 1:
                out.append(_meta(pattern.batch, [pattern.line]))
        return out

    def flush(self) -> list[pb.LogBatch]:
        """Every held-back line, to print now (the driver disconnects)."""
        out = []
        for pattern in self._recent.values():
            if pattern.held > 1:
                out.append(_meta(pattern.batch, [self._formatted(pattern)]))
            elif pattern.held == 1:
                out.append(_meta(pattern.batch, [pattern.line]))
        self._recent.clear()
        return out

    def has_held(self) -> bool:
        return any(p.held for p in self._recent.values())


__all__ = ["LogDeduplicator", "canonical"]
