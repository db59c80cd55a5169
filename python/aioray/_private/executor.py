"""The executing side: a worker runs the tasks pushed to it, one at a time, on its task thread.

Arguments arrive inline or as ids in the node's store (read zero-copy); small
return values go back inline in the result, larger ones are written to the
node's store and pinned there as primary copies until their owner frees them.
Before a result is sent, borrows of refs the task received (and still holds)
and of refs inside its return values are registered with their owners, so an
owner never frees an object a borrower still needs.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from aioray._private import serialization, task_spec
from aioray._private.task_spec import TaskSpec
from aioray.exceptions import ObjectLostError, RayTaskError

if TYPE_CHECKING:
    from aioray._private.core_worker import CoreWorker

log = logging.getLogger("aioray.executor")


class TaskContext(threading.local):
    task_id: bytes | None = None
    task_name: str = ""
    lease_id: bytes | None = None


class Executor:
    def __init__(self, core: CoreWorker) -> None:
        self.core = core
        self.context = TaskContext()
        self._queue: collections.deque[tuple[TaskSpec, bytes, Any]] = collections.deque()
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="aioray-task", daemon=True)
        self._thread.start()

    def submit(self, specs: list[TaskSpec], lease_id: bytes, reply: Any) -> None:
        """From the core loop: queue specs; `reply(results)` is called on the core loop."""
        with self._cv:
            for spec in specs:
                self._queue.append((spec, lease_id, reply))
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                spec, lease_id, reply = self._queue.popleft()
            start = time.perf_counter()
            task_id, status, returns = self.execute(spec, lease_id)
            result = (task_id, status, returns, time.perf_counter() - start)
            self.core.loop.call_soon_threadsafe(self._send, result, spec, reply)

    def _send(self, result: task_spec.Result, spec: TaskSpec, reply: Any) -> None:
        # Borrow registrations go out (and are acknowledged) before the result does.
        core = self.core
        if core.has_pending_registrations():
            core.spawn(self._register_then_reply(result, reply))
        else:
            reply(result)

    async def _register_then_reply(self, result: task_spec.Result, reply: Any) -> None:
        await self.core.flush_registrations()
        reply(result)

    def execute(self, spec: TaskSpec, lease_id: bytes) -> tuple[bytes, int, list[tuple[Any, ...]]]:
        ctx = self.context
        ctx.task_id, ctx.task_name, ctx.lease_id = spec.task_id, spec.name, lease_id
        try:
            try:
                fn = self.core.functions.load(spec.function_id)
                args, kwargs = self._resolve_args(spec)
            except Exception as e:
                err = RayTaskError(spec.name, traceback.format_exc(), e)
                return self._error_result(spec, err, task_spec.SYSTEM_ERROR)
            try:
                value = fn(*args, **kwargs)
            except Exception as e:
                tb = _user_traceback(e)
                return self._error_result(spec, RayTaskError(spec.name, tb, e), task_spec.APP_ERROR)
            del args, kwargs
            try:
                return (spec.task_id, task_spec.OK, self._store_returns(spec, value))
            except Exception as e:
                err = RayTaskError(spec.name, traceback.format_exc(), e)
                return self._error_result(spec, err, task_spec.APP_ERROR)
        finally:
            ctx.task_id, ctx.task_name, ctx.lease_id = None, "", None

    def _resolve_args(self, spec: TaskSpec) -> tuple[list[Any], dict[str, Any]]:
        values = []
        for arg in spec.args:
            if arg[0] == task_spec.ARG_INLINE:
                value, _ = serialization.deserialize(arg[1])
            else:
                _, oid, node_id, _size = arg
                value = self._read_store_arg(oid, node_id)
            values.append(value)
        n_kw = len(spec.kwarg_names)
        if n_kw:
            return values[:-n_kw], dict(zip(spec.kwarg_names, values[-n_kw:], strict=True))
        return values, {}

    def _read_store_arg(self, oid: bytes, node_id: bytes) -> Any:
        buf = self.core.store.get(oid)
        if buf is None:
            buf = self.core.fetch_to_local_store(oid, node_id)
        if buf is None:
            raise ObjectLostError(f"argument {oid.hex()} is in no reachable object store")
        value, _ = serialization.deserialize(buf)
        return value

    def _store_returns(self, spec: TaskSpec, value: Any) -> list[tuple[Any, ...]]:
        if spec.num_returns == 1:
            outputs = [value]
        else:
            if not isinstance(value, tuple | list) or len(value) != spec.num_returns:
                raise ValueError(
                    f"{spec.name} declares num_returns={spec.num_returns} but returned "
                    f"{type(value).__name__} {value!r:.60}"
                )
            outputs = list(value)
        returns = []
        core = self.core
        for oid, out in zip(spec.return_ids, outputs, strict=True):
            frame = serialization.serialize(out)
            inner = [(r.binary(), r.owner_address) for r in frame.contained_refs]
            if inner:
                core.lend_refs(inner, spec.owner)
            if frame.size <= core.inline_limit:
                returns.append((task_spec.RET_INLINE, frame.to_bytes(), inner))
            else:
                core.write_to_store(oid, frame)
                returns.append((task_spec.RET_STORE, core.node_id, frame.size, inner))
        return returns

    def _error_result(self, spec: TaskSpec, err: RayTaskError, status: int) -> tuple[bytes, int, list[Any]]:
        try:
            frame = serialization.serialize(err, is_error=True).to_bytes()
        except serialization.SerializationError:
            # The exception itself cannot be pickled: send its text.
            plain = RayTaskError(spec.name, err.traceback_str, None)
            frame = serialization.serialize(plain, is_error=True).to_bytes()
        return (spec.task_id, status, [(task_spec.RET_INLINE, frame, [])] * spec.num_returns)


def _user_traceback(e: BaseException) -> str:
    """The traceback of the user's code, without aioray's own frames above it."""
    tb = e.__traceback__
    # Skip the executor's frame: the user's function starts one level down.
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))
