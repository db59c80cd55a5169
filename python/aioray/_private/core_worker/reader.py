"""The object reader: one path for get, await and wait, from any thread.

Values are found in two steps. First the object's *value* (where it is): an
owned object's value arrives with its task's result; a borrowed one is asked
of its owner (GetObject, answered once it is ready). Then its *bytes*: inline
values are at hand, store objects are read zero-copy from this node's store,
restored from disk or pulled from another node first. A copy that cannot be
read anywhere is rebuilt from lineage (by us, or by its owner at our request).

Blocking callers (`get`, `wait`, the executor's argument reads) run the same
coroutines on the core loop; only values already readable here are taken
without a hop through the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import operator
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any

from aioray._private.common import rpc, serialization
from aioray._private.common.spill_files import map_spilled
from aioray._private.core_worker.nodes import NodeDirectory
from aioray._private.core_worker.object_ref import ObjectRef
from aioray._private.core_worker.ownership import ObjectValue, OwnershipTable
from aioray._private.core_worker.runtime import Runtime
from aioray._proto.aioray import v1 as pb
from aioray._store import Buffer, ObjectStore
from aioray.exceptions import (
    GetTimeoutError,
    ObjectLostError,
    OwnerDiedError,
    RayTaskError,
    TaskCancelledError,
)

_OWNER = operator.attrgetter("_owner")  # read in C: a wait over 1k refs pays no Python per ref
_ID = operator.attrgetter("_id")


def _split(refs: Sequence[ObjectRef], picked: list[int]) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """(the refs at `picked`, every other ref), both in input order, the rest copied by slices."""
    ready = [refs[i] for i in picked]
    rest: list[ObjectRef] = []
    start = 0
    for i in picked:
        rest += refs[start:i]
        start = i + 1
    rest += refs[start:]
    return ready, rest


IGNORE_UNHANDLED_ERRORS_ENV = "AIORAY_IGNORE_UNHANDLED_ERRORS"

# A value and, for a store object, a read buffer of it (None for inline values).
# A read buffer: a view of a store object, or a spill file mapped in.
ReadBuffer = Buffer | memoryview
Readable = tuple[ObjectValue, ReadBuffer | None]


async def wait_some(
    futures: Collection[asyncio.Future[Any]],
    needed: int,
    stop: Callable[[asyncio.Future[Any]], bool] | None = None,
) -> None:
    """Waits until `needed` of the futures are done, with one callback each and no task per future.

    With `stop`, also returns as soon as a done future satisfies it (a failed object, for get)."""
    if stop is not None and any(f.done() and stop(f) for f in futures):
        return
    waiting = [f for f in futures if not f.done()]
    remaining = needed - (len(futures) - len(waiting))
    if remaining <= 0:
        return
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def count_down(f: asyncio.Future[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        if (remaining == 0 or (stop is not None and stop(f))) and not finished.done():
            finished.set_result(None)

    for f in waiting:
        f.add_done_callback(count_down)
    try:
        await finished
    finally:
        for f in waiting:  # leave the futures as we found them (removing a fired callback is a no-op)
            f.remove_done_callback(count_down)


def is_error(value: ObjectValue) -> bool:
    """Whether the value is an inline error frame (a failed task's result), without unpickling it."""
    return value.inline is not None and serialization.peek_flags(value.inline)[1]


def report_unhandled_error(value: ObjectValue) -> None:
    """An error value nobody read is being freed: say so on stderr, as Ray does, since the failure
    would otherwise go unseen (AIORAY_IGNORE_UNHANDLED_ERRORS=1 turns this off). Cancellations,
    asked for by the user, are not reported."""
    if os.environ.get(IGNORE_UNHANDLED_ERRORS_ENV, "0") not in ("", "0") or value.inline is None:
        return
    try:
        err, _ = serialization.deserialize(value.inline)
    except Exception:
        return
    if isinstance(err, TaskCancelledError):
        return
    sys.stderr.write(f"Unhandled error (suppress with '{IGNORE_UNHANDLED_ERRORS_ENV}=1'): {err}\n")


def _failed(f: asyncio.Future[Any]) -> bool:
    return not f.cancelled() and (f.exception() is not None or is_error(f.result()))


def materialize(oid: bytes, value: ObjectValue, buf: ReadBuffer | None) -> Any:
    """The Python value of a readable object; raises the error it stores."""
    value.accessed = True
    if value.inline is not None:
        result, is_error = serialization.deserialize(value.inline)
    else:
        if buf is None:
            raise ObjectLostError(
                f"object {oid.hex()} is not in this node's store and no copy could be fetched"
            )
        result, is_error = serialization.deserialize(buf)
    if is_error:
        if isinstance(result, RayTaskError):
            raise result.as_instanceof_cause()
        raise result
    return result


class ObjectReader:
    def __init__(
        self,
        runtime: Runtime,
        refs: OwnershipTable,
        store: ObjectStore,
        nodes: NodeDirectory,
        node_id: bytes,
        reconstruct: Callable[[bytes], Awaitable[None]],
        blocking: Callable[[bool], bool],
        cancel: Callable[[ObjectRef], None],
    ) -> None:
        """`reconstruct(oid)` re-runs the task that made an owned object; `blocking(True/False)` tells
        the raylet that the running task blocks (True if it applied); `cancel(ref)` cancels a task."""
        self._runtime = runtime
        self._refs = refs
        self._store = store
        self._nodes = nodes
        self._node_id = node_id
        self._reconstruct = reconstruct
        self._blocking = blocking
        self._cancel = cancel
        self._futures: dict[bytes, asyncio.Future[ObjectValue]] = {}  # owned objects someone waits for
        self._fetches: dict[bytes, asyncio.Task[ObjectValue]] = {}  # borrowed objects asked of their owner
        self._awaiters: dict[bytes, int] = {}  # object id -> coroutines awaiting it right now
        # Threads in a synchronous wait over owned objects sleep here; each arrival of an owned
        # value wakes them (only while one waits: the loop pays nothing otherwise).
        self._arrival = threading.Condition()
        self._arrivals = 0
        self._sleepers = 0

    # -- values: where an object is ------------------------------------------------------------
    def set_result(self, oid: bytes, value: ObjectValue, inner: tuple[tuple[bytes, str], ...]) -> bool:
        """On the loop: an owned object's value arrived; False if nobody references it any more."""
        if not self._refs.set_value(oid, value, inner, inner_registered=True):
            return False
        fut = self._futures.pop(oid, None)
        if fut is not None and not fut.done():
            fut.set_result(value)
        if self._sleepers:
            with self._arrival:
                self._arrivals += 1
                self._arrival.notify_all()
        return True

    def forget(self, oids: Iterable[bytes]) -> None:
        """On the loop: the objects were released; nobody can wait for them any more."""
        if self._futures:
            pop = self._futures.pop
            for oid in oids:
                pop(oid, None)

    def _value_future(self, oid: bytes) -> asyncio.Future[ObjectValue]:
        """On the loop: the future `set_result` completes when the value of owned `oid` arrives."""
        fut = self._futures.get(oid)
        if fut is None:
            fut = self._futures[oid] = self._runtime.loop.create_future()
        return fut

    async def wait_value(self, oid: bytes, owner: str, timeout: float | None) -> ObjectValue:
        """On the loop: the object's value (location), waiting for it to exist."""
        entry = self._refs.get(oid)
        if entry is not None and entry.value is not None:
            return entry.value
        if owner == self._runtime.address:
            if entry is None:
                raise ObjectLostError(f"object {oid.hex()} was freed: no reference to it was left")
            return await asyncio.wait_for(asyncio.shield(self._value_future(oid)), timeout)
        fetch = self._fetches.get(oid)
        if fetch is None:
            fetch = self._fetches[oid] = self._runtime.loop.create_task(self._ask_owner(oid, owner))
            fetch.add_done_callback(lambda _: self._fetches.pop(oid, None))
        return await asyncio.wait_for(asyncio.shield(fetch), timeout)

    async def _ask_owner(self, oid: bytes, owner: str, lost: bool = False) -> ObjectValue:
        stub = self._runtime.channels.stub(owner, pb.CoreWorkerStub)
        try:
            reply = await stub.get_object(pb.GetObjectRequest(object_id=oid, lost=lost))
        except rpc.CONNECTION_ERRORS as e:
            raise OwnerDiedError(f"the owner of object {oid.hex()} ({owner}) is unreachable: {e}") from None
        if reply.status == pb.GetObjectReplyStatus.FREED:
            raise ObjectLostError(f"object {oid.hex()} was already freed by its owner")
        if reply.status == pb.GetObjectReplyStatus.LOST:
            raise ObjectLostError(reply.message)
        if reply.inline_value:
            value = ObjectValue(reply.inline_value)
        else:
            self._nodes.note(reply.node_id, reply.node_address)
            value = ObjectValue(None, reply.node_id, reply.node_address, reply.size)
        entry = self._refs.get(oid)
        if entry is not None:
            entry.value = value
        return value

    async def _wait_values(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[ObjectValue]:
        # Objects this process owns are waited for through one countdown over their futures, not a
        # task per ref: a get of 100k pending refs would otherwise cost seconds and ~2 KiB a ref.
        values: list[ObjectValue | None] = [None] * len(refs)
        owned: dict[bytes, asyncio.Future[ObjectValue]] = {}
        borrowed: list[int] = []
        for i, r in enumerate(refs):
            oid = r.binary()
            entry = self._refs.get(oid)
            if entry is not None and entry.value is not None:
                values[i] = entry.value
            elif r.owner_address != self._runtime.address:
                borrowed.append(i)
            elif entry is None:
                raise ObjectLostError(f"object {oid.hex()} was freed: no reference to it was left")
            elif oid not in owned:
                owned[oid] = self._value_future(oid)
        # As in Ray, a get raises as soon as any object in it has failed; the others keep running.
        if any(v is not None and is_error(v) for v in values):
            return self._first_failure(refs, values, owned)
        fetches: dict[asyncio.Task[ObjectValue], int] = {}
        try:
            async with asyncio.timeout(timeout):
                for i in borrowed:
                    oid, owner = refs[i].binary(), refs[i].owner_address
                    fetches[self._runtime.loop.create_task(self.wait_value(oid, owner, None))] = i
                watched = [*fetches, *owned.values()]
                await wait_some(watched, len(watched), stop=_failed)
        except TimeoutError:
            raise GetTimeoutError(
                f"get timed out after {timeout}s waiting for {len(refs)} object(s)"
            ) from None
        finally:
            error: BaseException | None = None
            for task, i in fetches.items():
                if task.done() and not task.cancelled():
                    if task.exception() is not None:
                        error = error or task.exception()
                    else:
                        values[i] = task.result()
                task.cancel()
        if error is not None:
            raise error
        if any(f.done() and is_error(f.result()) for f in owned.values()):
            return self._first_failure(refs, values, owned)
        out: list[ObjectValue] = []
        for r, known in zip(refs, values, strict=True):
            out.append(known if known is not None else owned[r.binary()].result())
        return out

    @staticmethod
    def _first_failure(
        refs: Sequence[ObjectRef],
        values: list[ObjectValue | None],
        owned: dict[bytes, asyncio.Future[ObjectValue]],
    ) -> list[ObjectValue]:
        """Raises the error of the first failed object in `refs` (some others may not be done)."""
        for r, known in zip(refs, values, strict=True):
            value = known
            if value is None:
                fut = owned.get(r.binary())
                if fut is not None and fut.done():
                    value = fut.result()
            if value is not None and is_error(value):
                materialize(r.binary(), value, None)
        raise AssertionError("no failed object among the refs")

    async def recover_lost(self, ref: ObjectRef) -> ObjectValue:
        """On the loop: the value of an object whose copy could not be read, rebuilt if its node died.

        The owner re-runs the task that made it (lineage); a borrower asks the owner to.
        """
        oid = ref.binary()
        if ref.owner_address == self._runtime.address:
            await self._reconstruct(oid)
            value = self._refs.value(oid)
            if value is None:
                raise ObjectLostError(f"object {oid.hex()} was freed while it was being rebuilt")
            return value
        return await self._ask_owner(oid, ref.owner_address, lost=True)

    # -- bytes: reading a store object ---------------------------------------------------------
    async def read_buffer(
        self, oid: bytes, value: ObjectValue, task: tuple[bytes, int] | None = None
    ) -> ReadBuffer | None:
        """On the loop: a read buffer of a store object (restored or pulled as needed); None if inline.
        A pull for an argument of `task` (id, attempt) is recorded as its ARGS_PULLED event."""
        if value.inline is not None:
            return None
        buf = self._store.get(oid)
        if buf is not None:
            return buf
        if not value.node_id or value.node_id == self._node_id:
            return await self._restore(oid)
        source = value.node_address or self._nodes.address_of(value.node_id)
        if not source:
            raise ObjectLostError(
                f"object {oid.hex()} lives on node {value.node_id.hex()[:12]}, whose address is unknown"
            )
        return await self._pull(oid, value.node_id, source, value.size, task)

    def read_buffer_blocking(
        self, oid: bytes, value: ObjectValue, task: tuple[bytes, int] | None = None
    ) -> ReadBuffer | None:
        """`read_buffer` from a non-loop thread, without a hop through the loop when the copy is here."""
        buf = self._store.get(oid)
        if buf is not None:
            return buf
        return self._runtime.run_sync(self.read_buffer(oid, value, task))

    async def _restore(self, oid: bytes) -> ReadBuffer | None:
        """A read buffer of a spilled object of this node (None if it is nowhere)."""
        stub = self._runtime.raylet(pb.ObjectManagerStub)
        reply = await stub.restore_object(pb.RestoreRequest(object_id=oid), timeout=300)
        if not reply.found:
            return None
        if reply.in_store:
            return self._store.get(oid)
        return map_spilled(reply.path, reply.offset, reply.size)

    async def _pull(
        self, oid: bytes, node_id: bytes, source: str, size: int, task: tuple[bytes, int] | None = None
    ) -> ReadBuffer | None:
        """Has this node's raylet pull the object from `source`; a read buffer of the new copy."""
        stub = self._runtime.raylet(pb.ObjectManagerStub)
        request = pb.FetchRequest(object_id=oid, source_address=source, size=size, source_node_id=node_id)
        if task is not None:
            request.task_id, request.attempt = task
        for _ in range(3):  # the fresh copy is evictable: on a busy store it may be gone before we read it
            reply = await stub.fetch_object(request, timeout=600)
            if not reply.ok:
                raise ObjectLostError(
                    f"object {oid.hex()} could not be fetched from node {node_id.hex()[:12]} ({source}): "
                    f"{reply.message}"
                )
            buf = self._store.get(oid)
            if buf is not None:
                return buf
        return None

    async def _readable(self, ref: ObjectRef, value: ObjectValue) -> Readable:
        # Only a copy that cannot be read counts as lost here: an ObjectLostError stored as the
        # value (a task's own failure) is raised by materialize, never rebuilt.
        oid = ref.binary()
        try:
            buf = await self.read_buffer(oid, value)
            if buf is None and value.inline is None:
                raise ObjectLostError(f"object {oid.hex()} could not be read from any store")
        except ObjectLostError:
            value = await self.recover_lost(ref)  # lost with its node: rebuilt from lineage
            buf = await self.read_buffer(oid, value)
        return value, buf

    async def _resolve(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Readable]:
        values = await self._wait_values(refs, timeout)
        return [await self._readable(r, v) for r, v in zip(refs, values, strict=True)]

    def _here(self, refs: Sequence[ObjectRef]) -> list[Readable] | None:
        """The objects, if every one is readable in this process right now (any thread)."""
        out: list[Readable] = []
        for r in refs:
            oid = r.binary()
            value = self._refs.value(oid)
            if value is None:
                return None
            buf = None
            if value.inline is None:
                buf = self._store.get(oid)
                if buf is None:
                    return None
            out.append((value, buf))
        return out

    # -- get / await / wait --------------------------------------------------------------------
    async def get_async(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        readable = await self._resolve(refs, timeout)
        return [materialize(r.binary(), v, buf) for r, (v, buf) in zip(refs, readable, strict=True)]

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """From a non-loop thread: `get_async` run on the loop, unless everything is here already."""
        readable = self._here(refs)
        if readable is None and len(refs) == 1 and refs[0].owner_address == self._runtime.address:
            readable = self._get_owned(refs[0], timeout)
        if readable is None:
            # A task waiting for objects still being made lends its CPU to the tasks that make them.
            waits = any(self._refs.value(r.binary()) is None for r in refs)
            blocked = waits and self._blocking(True)
            try:
                readable = self._runtime.run_sync(self._resolve(refs, timeout), timeout=None)
            finally:
                if blocked:
                    self._blocking(False)
        return [materialize(r.binary(), v, buf) for r, (v, buf) in zip(refs, readable, strict=True)]

    def _get_owned(self, ref: ObjectRef, timeout: float | None) -> list[Readable] | None:
        """The synchronous round trip's wait (``get(f.remote())``): one object this process owns,
        waited for on a plain future the loop completes, without a coroutine and a task per get.
        None when the value is not readable here once it exists: the general path reads it (and
        raises what it should for a freed or failed object)."""
        oid = ref.binary()
        if self._refs.get(oid) is None:
            return None
        arrived: concurrent.futures.Future[None] = concurrent.futures.Future()

        def done(_: object = None) -> None:
            if not arrived.done():
                arrived.set_result(None)

        def watch() -> None:  # on the loop
            entry = self._refs.get(oid)
            if entry is None or entry.value is not None:
                done()
            else:
                self._value_future(oid).add_done_callback(done)

        blocked = self._blocking(True)
        try:
            self._runtime.loop.call_soon_threadsafe(watch)
            arrived.result(timeout)
        except concurrent.futures.TimeoutError:
            raise GetTimeoutError(f"get timed out after {timeout}s waiting for 1 object(s)") from None
        finally:
            if blocked:
                self._blocking(False)
        return self._here([ref])

    def get_future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        """From any thread: a concurrent future of the value."""
        readable = self._here([ref])
        if readable is None:

            async def resolve() -> Any:
                return (await self.get_async([ref], None))[0]

            return self._runtime.submit(resolve())
        out: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            out.set_result(materialize(ref.binary(), *readable[0]))
        except BaseException as e:
            out.set_exception(e)
        return out

    def ready_future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        """From any thread: a concurrent future that is done once the object is ready (a value or an
        error, anywhere in the cluster), without reading or pulling it."""
        if self._here([ref]) is not None:
            out: concurrent.futures.Future[Any] = concurrent.futures.Future()
            out.set_result(None)
            return out
        return self._runtime.submit(self.wait_async([ref], 1, None))

    async def await_ref(self, ref: ObjectRef, cancel_on_cancel: bool = True) -> Any:
        """``await ref`` on any loop: the value; if the awaiting coroutine is cancelled, the task is
        cancelled too, unless something else still needs its result (see `_abandoned`)."""
        oid = ref.binary()
        self._awaiters[oid] = self._awaiters.get(oid, 0) + 1
        try:
            return await asyncio.wrap_future(self.get_future(ref))
        except asyncio.CancelledError:
            if cancel_on_cancel and self._abandoned(ref):
                self._cancel(ref)
            raise
        finally:
            left = self._awaiters[oid] - 1
            if left:
                self._awaiters[oid] = left
            else:
                del self._awaiters[oid]

    def _abandoned(self, ref: ObjectRef) -> bool:
        """Whether no one but the cancelled awaiter needs this result: we own it, no other
        coroutine awaits it, no other process borrows it, no pending task takes it as an
        argument and no object contains it."""
        if ref.owner_address != self._runtime.address or self._awaiters.get(ref.binary(), 0) > 1:
            return False
        entry = self._refs.get(ref.binary())
        if entry is None or entry.value is not None:
            return False
        return not (entry.borrowers or entry.submitted or entry.contained)

    def _ready_prefix(self, refs: Sequence[ObjectRef], num_returns: int) -> list[int] | None:
        """Indices of the first `num_returns` refs whose value exists, scanning no further than it
        takes; None if one of them was freed (the general path says so)."""
        picked: list[int] = []
        get = self._refs.get
        for i, ref in enumerate(refs):
            entry = get(ref._id)
            if entry is None:
                return None
            if entry.value is not None:
                picked.append(i)
                if len(picked) == num_returns:
                    break
        return picked

    def _wait_owned(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]] | None:
        """`wait` over objects this process owns, on the calling thread with no loop round trip:
        scan for ready ones (stopping at the `num_returns`th), sleep until the next owned value
        arrives, scan again. Refs that finish in order cost a scan of a few entries per call, not
        the whole list (the "not ready" list is cut out by slices, in C). None: use the loop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        blocked = False
        try:
            while True:
                with self._arrival:
                    seen = self._arrivals
                picked = self._ready_prefix(refs, num_returns)
                if picked is None:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if len(picked) >= num_returns or (remaining is not None and remaining <= 0):
                    return _split(refs, picked)
                if not blocked:
                    blocked = self._blocking(True)
                with self._arrival:
                    self._sleepers += 1
                    try:
                        while self._arrivals == seen and (remaining is None or remaining > 0):
                            self._arrival.wait(remaining)
                            remaining = None if deadline is None else deadline - time.monotonic()
                    finally:
                        self._sleepers -= 1
        finally:
            if blocked:
                self._blocking(False)

    async def wait_async(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        if num_returns < 0 or num_returns > len(refs):
            raise ValueError(
                f"num_returns={num_returns} must be between 0 and the number of refs ({len(refs)})"
            )
        if len(set(refs)) != len(refs):
            raise ValueError("wait() got the same ObjectRef more than once")
        # Owned objects are watched through their futures and borrowed ones through one fetch task
        # each; a single countdown then wakes us, so a wait over n refs costs O(n), not a task per ref.
        watched: dict[asyncio.Future[Any], bytes] = {}
        fetches: list[asyncio.Task[ObjectValue]] = []
        ready_ids: set[bytes] = set()
        for r in refs:
            oid = r.binary()
            entry = self._refs.get(oid)
            if entry is not None and entry.value is not None:
                ready_ids.add(oid)
            elif r.owner_address == self._runtime.address and entry is not None:
                watched[self._value_future(oid)] = oid
            else:  # borrowed, or owned and already freed (the fetch reports that as its error)
                task = self._runtime.loop.create_task(self.wait_value(oid, r.owner_address, None))
                fetches.append(task)
                watched[task] = oid
        try:
            needed = num_returns - len(ready_ids)
            if needed > 0 and watched:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await wait_some(watched, min(needed, len(watched)))
            ready_ids.update(oid for f, oid in watched.items() if f.done())
        finally:
            for task in fetches:
                if task.done() and not task.cancelled():
                    task.exception()  # an error counts as ready; the caller's get will raise it
                task.cancel()
        ready = [r for r in refs if r.binary() in ready_ids][: max(num_returns, 0)]
        chosen = {r.binary() for r in ready}
        return ready, [r for r in refs if r.binary() not in chosen]

    def wait(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """From a non-loop thread: `wait_async` on the loop, lending the task's CPU meanwhile;
        over objects this process owns, on the calling thread (`_wait_owned`)."""
        if set(map(_OWNER, refs)) == {self._runtime.address}:
            if num_returns < 0 or num_returns > len(refs):
                raise ValueError(
                    f"num_returns={num_returns} must be between 0 and the number of refs ({len(refs)})"
                )
            if len(set(map(_ID, refs))) != len(refs):
                raise ValueError("wait() got the same ObjectRef more than once")
            done = self._wait_owned(refs, num_returns, timeout)
            if done is not None:
                return done
        blocked = self._blocking(True)
        try:
            return self._runtime.run_sync(self.wait_async(refs, num_returns, timeout))
        finally:
            if blocked:
                self._blocking(False)
