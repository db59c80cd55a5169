"""The asyncio API: ``async with aioray.Cluster() as cluster:``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aioray._private import worker_api
from aioray._private.core_worker.object_ref import ObjectRef


class Cluster:
    """An embedded local cluster (no `address`) or a connection to one, for asyncio code.

    ``await cluster.remote(f, *args)`` submits and awaits; ``await cluster.put/get/wait``;
    refs returned by ``f.remote()`` can be awaited directly. Leaving the
    ``async with`` block shuts down what it started.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
        object_store_memory: int | None = None,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        log_to_driver: bool = True,
        metrics_export_port: int | None = None,
        include_dashboard: bool | None = None,
        dashboard_host: str | None = None,
        dashboard_port: int | None = None,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        """`log_to_driver` and `metrics_export_port` as `aioray.init`'s `log_to_driver` and
        `_metrics_export_port`; the dashboard's arguments as `aioray.init`'s (`dashboard_url` is
        its URL once started); `runtime_env` is the job's, as `aioray.init(runtime_env=...)`."""
        self._kwargs = {
            "runtime_env": runtime_env,
            "log_to_driver": log_to_driver,
            "metrics_export_port": metrics_export_port,
            "include_dashboard": include_dashboard,
            "dashboard_host": dashboard_host,
            "dashboard_port": dashboard_port,
            "labels": labels,
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "resources": resources,
            "object_store_memory": object_store_memory,
            "namespace": namespace,
        }
        self._address = address
        self._conn: worker_api.Connection | None = None

    async def start(self) -> Cluster:
        self._conn = await asyncio.to_thread(worker_api.init, self._address, **self._kwargs)  # type: ignore[arg-type]
        return self

    async def __aenter__(self) -> Cluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        if self._conn is not None:
            self._conn = None
            await asyncio.to_thread(worker_api.shutdown)

    @property
    def address(self) -> str:
        return self._require().gcs_address

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard's URL (None: the cluster runs none)."""
        return self._require().dashboard_url

    def _require(self) -> worker_api.Connection:
        if self._conn is None or worker_api.current() is not self._conn:
            raise RuntimeError("this Cluster is not started (use `async with aioray.Cluster() as cluster:`)")
        return self._conn

    async def remote(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Submits `fn` and awaits its result; for an actor class, returns the handle once the actor is alive.

        `fn` is a remote function, a plain function, or an actor class (``@remote`` or plain class).
        Constructor errors surface here.
        """
        from aioray._private.actor import ActorClass
        from aioray._private.remote_function import RemoteFunction

        self._require()
        if isinstance(fn, type):
            fn = ActorClass(fn, {})
        if isinstance(fn, ActorClass):
            return await fn.remote(*args, **kwargs)._aioray_wait_ready()
        if not isinstance(fn, RemoteFunction):
            fn = RemoteFunction(fn, {})
        refs = fn.remote(*args, **kwargs)
        if isinstance(refs, list):
            return await self.get(refs)
        if refs is None:
            return None
        return await refs

    async def put(self, value: Any) -> ObjectRef:
        conn = self._require()
        return conn.core.put(value)

    async def get(self, refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
        conn = self._require()
        single = isinstance(refs, ObjectRef)
        ref_list: list[ObjectRef] = [refs] if isinstance(refs, ObjectRef) else list(refs)
        fut = asyncio.run_coroutine_threadsafe(conn.core.get_async(ref_list, timeout), conn.loop)
        values = await asyncio.wrap_future(fut)
        return values[0] if single else values

    async def wait(
        self, refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        conn = self._require()
        fut = asyncio.run_coroutine_threadsafe(
            conn.core.wait_async(list(refs), num_returns, timeout), conn.loop
        )
        return await asyncio.wrap_future(fut)


async def connect(
    address: str, *, namespace: str | None = None, runtime_env: dict[str, Any] | None = None
) -> Cluster:
    """Connects to a running cluster ("HOST:PORT" or "auto"); `await cluster.shutdown()` disconnects."""
    return await Cluster(address, namespace=namespace, runtime_env=runtime_env).start()
