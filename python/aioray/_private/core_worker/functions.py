"""The function table: a remote function is pickled and exported to the GCS once; workers fetch it by id."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable
from typing import Any

import cloudpickle

from aioray._private.common.serialization import SerializationError
from aioray._private.core_worker.runtime import Runtime
from aioray._proto.aioray import v1 as pb

FUNCTION_KEY = "fn:"


class FunctionManager:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._ids: dict[int, tuple[Any, bytes, bytes]] = {}  # id(fn) -> (fn, function id, pickled)
        self._exported: dict[bytes, asyncio.Future[None]] = {}
        self._loaded: dict[bytes, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def function_id(self, fn: Any) -> tuple[bytes, bytes]:
        """(function id, pickled function); pickles once per function object."""
        cached = self._ids.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1], cached[2]
        try:
            pickled = cloudpickle.dumps(fn, protocol=5)
        except Exception as e:
            name = getattr(fn, "__qualname__", repr(fn))
            raise SerializationError(
                f"could not serialize remote function {name}: {type(e).__name__}: {e}"
            ) from e
        fid = hashlib.sha256(pickled).digest()[:16]
        with self._lock:
            self._ids[id(fn)] = (fn, fid, pickled)
        return fid, pickled

    def is_exported(self, fid: bytes) -> bool:
        fut = self._exported.get(fid)
        return fut is not None and fut.done() and fut.exception() is None

    def export(self, fid: bytes, pickled: bytes) -> None:
        """On the core loop: starts exporting `fid` unless done or under way."""
        if fid in self._exported:
            return
        fut = self._exported[fid] = self._runtime.loop.create_future()

        async def put() -> None:
            try:
                stub = self._runtime.gcs(pb.InternalKvGcsServiceStub)
                await stub.kv_put(pb.KvPutRequest(key=FUNCTION_KEY + fid.hex(), value=pickled), timeout=30)
                fut.set_result(None)
            except Exception as e:
                del self._exported[fid]
                fut.set_exception(e)

        self._runtime.spawn(put())

    async def wait_exported(self, fid: bytes) -> None:
        fut = self._exported.get(fid)
        if fut is not None:
            await asyncio.shield(fut)

    def load(self, fid: bytes) -> Callable[..., Any]:
        """From the task thread: the function, fetched from the GCS on first use."""
        fn = self._loaded.get(fid)
        if fn is None:

            async def fetch() -> pb.KvGetReply:
                return await self._runtime.gcs(pb.InternalKvGcsServiceStub).kv_get(
                    pb.KvKey(key=FUNCTION_KEY + fid.hex()), timeout=30
                )

            reply = self._runtime.run_sync(fetch(), timeout=60)
            if not reply.found:
                raise LookupError(f"function {fid.hex()} was never exported to this cluster")
            fn = self._loaded[fid] = cloudpickle.loads(reply.value)
        return fn
