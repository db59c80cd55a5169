"""The GCS event log (seed 002's event table): what happened in the cluster, newest last, bounded."""

from __future__ import annotations

import logging
import time

from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.gcs")
MAX_EVENTS = 10000


class EventLog(pb.EventGcsServiceBase):
    def __init__(self) -> None:
        self.events: list[pb.Event] = []

    def record(self, source: str, severity: str, message: str) -> None:
        self._append(pb.Event(time=time.time(), source=source, severity=severity, message=message))
        log.info("%s", message)

    def _append(self, event: pb.Event) -> None:
        self.events.append(event)
        del self.events[:-MAX_EVENTS]

    async def add_event(self, event: pb.Event) -> pb.Empty:
        self._append(event)
        return pb.Empty()

    async def get_events(self, empty: pb.Empty) -> pb.EventList:
        return pb.EventList(events=list(self.events))
