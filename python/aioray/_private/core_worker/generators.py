"""Streaming generators, the owner's side: items arrive one by one while the task still runs.

A task whose function yields reports each item to its owner as soon as it is
produced (`ReportGeneratorItem`: small items inline, larger ones written to the
node's store first, as any return). The owner records the item under a fixed id
(the task id and the item's index), so a retried or re-run attempt that
reports it again changes nothing the consumer has seen, and holds a ref to it
until the consumer takes it. With `_generator_backpressure_num_objects=N` the
owner answers a report only while fewer than N items are waiting to be taken:
the producer pauses until the consumer catches up. When the task ends, well or
not, the stream ends; a failure (the task raised, was cancelled, or its worker
died past its retries) is one more item whose value is the error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioray._private.common import serialization, task_spec
from aioray._private.common.ids import object_id
from aioray._private.core_worker.object_ref import ObjectRef
from aioray._private.core_worker.ownership import ObjectValue, OwnershipTable

StoreResult = Callable[[bytes, ObjectValue, tuple[tuple[bytes, str], ...]], None]


def item_id(task_id: bytes, index: int) -> bytes:
    """Item `index` of a streaming task (its first id, as any task's first return, is its
    end-of-stream result)."""
    return object_id(task_id, index + 2)


@dataclass
class Stream:
    name: str
    backpressure: int  # at most this many items waiting for the consumer; 0: no limit
    dynamic: bool = False  # num_returns="dynamic": the task's end result lists every item
    received: int = 0
    consumed: int = 0
    waiting: dict[int, ObjectRef] = field(default_factory=dict)  # reported, not yet taken
    finished: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    producer_may_go_on: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class GeneratorStreams:
    """The streams of the generator tasks this process owns (on the core loop)."""

    def __init__(
        self,
        refs: OwnershipTable,
        address: Callable[[], str],
        store_result: StoreResult,
        node_is_dead: Callable[[bytes], bool],
    ) -> None:
        self._refs = refs
        self._address = address
        self._store_result = store_result
        self._node_is_dead = node_is_dead
        self.streams: dict[bytes, Stream] = {}
        # Ids of the items each finished generator task made, for lineage (kept while any lives).
        self.items: dict[bytes, list[bytes]] = {}

    def open(self, task_id: bytes, name: str, backpressure: int, dynamic: bool = False) -> None:
        self.streams[task_id] = Stream(name, max(0, backpressure), dynamic)
        self.items[task_id] = []

    async def on_item(self, task_id: bytes, index: int, ret: tuple[Any, ...], decode: Any) -> None:
        """A report of item `index`. Answers (returns) once the producer may go on."""
        stream = self.accept(task_id, index, ret, decode)
        while (
            stream is not None
            and stream.backpressure
            and stream.received - stream.consumed >= stream.backpressure
            and not stream.finished
        ):
            stream.producer_may_go_on.clear()
            await stream.producer_may_go_on.wait()

    def accept(self, task_id: bytes, index: int, ret: tuple[Any, ...], decode: Any) -> Stream | None:
        """Item `index` arrived (from a report, or a task channel's items frame); the stream it
        went to, for `on_item`'s backpressure, or None if it was a repeat."""
        oid = item_id(task_id, index)
        value, inner = decode(ret)
        stream = self.streams.get(task_id)
        if stream is None or index < stream.received or stream.finished:
            # An attempt after a retry, or a re-run rebuilding lost items: only a copy that is
            # gone is replaced; the consumer's refs stay as they were.
            entry = self._refs.get(oid)
            if entry is not None and (
                entry.value is None
                or (entry.value.node_id is not None and self._node_is_dead(entry.value.node_id))
            ):
                self._store_result(oid, value, inner)
            return None
        # Reports come in order: an attempt waits for each answer before it reports the next item.
        ref = ObjectRef(oid, self._address())
        self._store_result(oid, value, inner)
        stream.waiting[index] = ref
        stream.received = index + 1
        self.items[task_id].append(oid)
        stream.wake()
        return stream

    async def next(self, task_id: bytes) -> ObjectRef | None:
        """The next item's ref, once it was produced; None at the end of the stream."""
        stream = self.streams.get(task_id)
        while stream is not None:
            ref = stream.waiting.pop(stream.consumed, None)
            if ref is not None:
                stream.consumed += 1
                stream.producer_may_go_on.set()
                return ref
            if stream.finished:
                return None
            await stream.changed.wait()
        return None

    def is_finished(self, task_id: bytes) -> bool:
        stream = self.streams.get(task_id)
        return stream is None or (stream.finished and stream.consumed >= stream.received)

    def finish(self, task_id: bytes, error: bytes | None, end_id: bytes) -> None:
        """The task ended; `error` (a frame) is delivered as one last item. For a dynamic generator,
        the value of `end_id` becomes the list of its items (or the error)."""
        stream = self.streams.get(task_id)
        if stream is None or stream.finished:
            return
        if stream.dynamic:
            self.streams.pop(task_id)
            if error is not None:
                self._store_result(end_id, ObjectValue(error), ())
                return
            refs = [stream.waiting[i] for i in range(stream.received)]
            frame = serialization.serialize(DynamicObjectRefGenerator(refs))
            inner = tuple((r.binary(), r.owner_address) for r in frame.contained_refs)
            self._store_result(end_id, ObjectValue(frame.to_bytes()), inner)
            return
        if error is not None:
            oid = item_id(task_id, stream.received)
            stream.waiting[stream.received] = ObjectRef(oid, self._address())
            self._store_result(oid, ObjectValue(error), ())
            stream.received += 1
        stream.finished = True
        stream.producer_may_go_on.set()
        stream.wake()

    def close(self, task_id: bytes) -> None:
        """The consumer dropped the generator: items it never took are released (a dynamic
        generator's items wait for the task's end, which lists them all)."""
        stream = self.streams.get(task_id)
        if stream is not None and not stream.dynamic:
            del self.streams[task_id]
            stream.waiting.clear()
            stream.producer_may_go_on.set()

    def item_alive(self, task_id: bytes) -> bool:
        return any(oid in self._refs for oid in self.items.get(task_id, ()))

    def forget(self, task_id: bytes) -> None:
        self.items.pop(task_id, None)


def end_of_stream_error(returns: list[tuple[Any, ...]]) -> bytes | None:
    """The error frame a generator task ended with (its end-of-stream result), or None."""
    if not returns or returns[0][0] != task_spec.RET_INLINE:
        return None
    frame: bytes = returns[0][1]
    return frame if serialization.peek_flags(frame)[1] else None


class ObjectRefGenerator:
    """What calling a generator task returns: its items' refs, in order, as they are produced.

    ``next(gen)`` / ``for ref in gen`` block until the next item exists; ``async for ref in gen``
    / ``await gen.__anext__()`` wait without blocking the loop. Each item is an ordinary ObjectRef
    (get it, await it, pass it to tasks). An error the task raised is the last item's value.
    ``aioray.cancel(gen)`` cancels the task. Dropping the generator releases the items not taken.
    """

    def __init__(self, task_id: bytes, core: Any) -> None:
        self._task_id = task_id
        self._core = core
        self._streams: GeneratorStreams = core.submitter.generators

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        # An item that is there already is taken on this thread, without a round trip through the
        # loop: a dict pop is atomic, and only the consumer moves `consumed`. With backpressure
        # the producer must hear of it, which happens on the loop.
        stream = self._streams.streams.get(self._task_id)
        if stream is not None and not stream.backpressure and not self._core.runtime.in_loop_thread():
            ready = stream.waiting.pop(stream.consumed, None)
            if ready is not None:
                stream.consumed += 1
                return ready
        ref: ObjectRef | None = self._core.run_sync(self._streams.next(self._task_id))
        if ref is None:
            raise StopIteration
        return ref

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        fut = asyncio.run_coroutine_threadsafe(self._streams.next(self._task_id), self._core.loop)
        ref: ObjectRef | None = await asyncio.wrap_future(fut)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def task_id(self) -> bytes:
        return self._task_id

    def is_finished(self) -> bool:
        """Whether every item was taken and the task ended."""
        return self._streams.is_finished(self._task_id)

    def _cancel_ref(self) -> ObjectRef:
        """A ref of the task (its end-of-stream result), for `aioray.cancel`."""
        return ObjectRef(object_id(self._task_id, 1), self._core.address, _count=False)

    def __reduce__(self) -> Any:
        raise TypeError("an ObjectRefGenerator cannot be passed to other processes; pass its items' refs")

    def __del__(self) -> None:
        loop = self._core.loop
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                loop.call_soon_threadsafe(self._streams.close, self._task_id)

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: the refs of everything it yielded."""

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = refs

    def __iter__(self) -> Any:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} items)"


__all__ = [
    "DynamicObjectRefGenerator",
    "GeneratorStreams",
    "ObjectRefGenerator",
    "end_of_stream_error",
    "item_id",
]
