"""The GCS's publish/subscribe service: raylets and workers learn of changes without polling.

Channel names and what each message carries are listed in `common.pubsub`. A
subscriber that asks for the cluster view gets it as its first message, queued
in the same loop step as the subscription, so no update can fall between the
snapshot and the stream. Messages published with `keep` (the recent deaths of lease owners) are
replayed to each new subscription of their channel, in the same step: a raylet that resubscribes
after a GCS restart still hears of the deaths reported before it was back.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable

from aioray._private.common.pubsub import VIEW_CHANNEL
from aioray._proto.aioray import v1 as pb

MAX_KEPT = 1000  # kept messages per channel, the oldest dropped first


class Publisher(pb.PubSubGcsServiceBase):
    def __init__(self, cluster_view: Callable[[], pb.ClusterView]) -> None:
        self._cluster_view = cluster_view
        self._subscribers: dict[str, set[asyncio.Queue[pb.PubMessage | None]]] = {}
        self._kept: dict[str, collections.deque[pb.PubMessage]] = {}

    def has_subscribers(self, channel: str) -> bool:
        return bool(self._subscribers.get(channel))

    def publish_local(self, channel: str, data: bytes, keep: bool = False) -> None:
        msg = pb.PubMessage(channel=channel, data=data)
        if keep:
            self._kept.setdefault(channel, collections.deque(maxlen=MAX_KEPT)).append(msg)
        for q in self._subscribers.get(channel, ()):
            q.put_nowait(msg)

    async def publish(self, pub_message: pb.PubMessage) -> pb.Empty:
        self.publish_local(pub_message.channel, pub_message.data)
        return pb.Empty()

    async def subscribe(self, subscribe_request: pb.SubscribeRequest) -> AsyncIterator[pb.PubMessage]:
        q: asyncio.Queue[pb.PubMessage | None] = asyncio.Queue()
        if subscribe_request.with_cluster_view:
            q.put_nowait(pb.PubMessage(channel=VIEW_CHANNEL, data=bytes(self._cluster_view())))
        for ch in subscribe_request.channels:
            for kept in self._kept.get(ch, ()):
                q.put_nowait(kept)
            self._subscribers.setdefault(ch, set()).add(q)
        try:
            while (msg := await q.get()) is not None:
                yield msg
        finally:
            for ch in subscribe_request.channels:
                self._subscribers.get(ch, set()).discard(q)

    def close(self) -> None:
        """Ends every subscription stream."""
        for subs in self._subscribers.values():
            for q in subs:
                q.put_nowait(None)
