"""The Ray-compatible synchronous API: ``import aioray as ray`` and a Ray Core script runs unchanged."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from aioray._private import worker_api
from aioray._private.actor import DEFAULT_NAMESPACE, ActorClass, ActorHandle, HandleMeta
from aioray._private.common.resources import ResourceSet
from aioray._private.core_worker.generators import ObjectRefGenerator
from aioray._private.core_worker.object_ref import ObjectRef, global_worker
from aioray._private.remote_function import RemoteFunction
from aioray._proto.aioray import v1 as pb

_T = TypeVar("_T")
_R = TypeVar("_R")
_P = ParamSpec("_P")

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from typing import Protocol

    _T_co = TypeVar("_T_co", covariant=True)

    class _ClassLike(Protocol[_P, _T_co]):
        """A class, for type checkers: callable (its constructor) and with an ``__mro__``, which a
        function has not, so that ``remote`` tells classes from functions."""

        @property
        def __mro__(self) -> tuple[type, ...]: ...
        def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _T_co: ...

    class _RemoteDecorator(Protocol):
        """``remote(**options)``: as ``remote`` itself."""

        @overload
        def __call__(self, cls: _ClassLike[_P, _T], /) -> ActorClass[_T, _P]: ...  # type: ignore[overload-overlap]
        @overload
        def __call__(
            self, fn: Callable[_P, Iterator[Any] | AsyncIterator[Any]], /
        ) -> RemoteFunction[_P, Any]: ...
        @overload
        def __call__(self, fn: Callable[_P, _R], /) -> RemoteFunction[_P, ObjectRef[_R]]: ...

    class _RemoteDecoratorAnyReturns(Protocol):
        """``remote(num_returns=n)``: a task whose ``remote`` returns a list of refs, None, or a
        generator, typed ``Any``."""

        def __call__(self, fn: Callable[_P, Any], /) -> RemoteFunction[_P, Any]: ...


class InitContext:
    """What ``init`` returns: the cluster's address, usable as a context manager that shuts down."""

    def __init__(self, conn: worker_api.Connection) -> None:
        self.address_info = {
            "address": conn.gcs_address,
            "gcs_address": conn.gcs_address,
            "node_id": conn.core.node_id.hex(),
            "metrics_export_port": conn.core.metrics_export_port,
            "webui_url": conn.dashboard_url,
        }
        self.dashboard_url = conn.dashboard_url  # Ray's RayContext.dashboard_url (None: no dashboard)

    def __getitem__(self, key: str) -> Any:
        return self.address_info[key]

    def __enter__(self) -> InitContext:
        return self

    def __exit__(self, *exc: object) -> None:
        shutdown()


# Ray's other init() arguments, with the values aioray honours as they are: any other value, and
# any argument Ray does not have, is refused by name rather than ignored.
_INIT_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "local_mode": (False,),
    "job_config": (None,),
    "configure_logging": (True, False),
    "logging_format": (None,),
    "logging_config": (None,),
    "enable_resource_isolation": (False,),
    "cgroup_path": (None,),
    "system_reserved_cpu": (None,),
    "system_reserved_memory": (None,),
    "_system_config": (None, {}),
}


def _check_init_arguments(others: dict[str, Any]) -> None:
    unknown = sorted(set(others) - set(_INIT_DEFAULT_ONLY) - {"logging_level"})
    if unknown:
        raise ValueError(f"aioray.init() got unknown argument(s): {', '.join(unknown)}")
    for key, value in others.items():
        if key in _INIT_DEFAULT_ONLY and not any(value == d for d in _INIT_DEFAULT_ONLY[key]):
            raise ValueError(
                f"aioray.init({key}={value!r}) is not supported by aioray (see docs/ray-compatibility.md)"
            )


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    namespace: str | None = None,
    ignore_reinit_error: bool = False,
    labels: dict[str, str] | None = None,
    runtime_env: dict[str, Any] | None = None,
    log_to_driver: bool | None = True,
    _metrics_export_port: int | None = None,
    include_dashboard: bool | None = None,
    dashboard_host: str | None = None,
    dashboard_port: int | None = None,
    **others: Any,
) -> InitContext:
    """Starts an embedded local cluster (no `address`) or connects to one ("HOST:PORT" or "auto").

    ``runtime_env`` is the job's runtime environment: its packages are uploaded now, and every task
    and actor of the job runs in it (merged with its own ``runtime_env``, as in Ray).

    ``log_to_driver`` (default True) prints what the job's tasks and actors write to stdout and
    stderr, on every node, here, prefixed ``(name pid=N, ip=HOST)``; False leaves it in the nodes'
    worker log files (``aioray logs``). ``_metrics_export_port`` is the port of a new cluster's
    ``/metrics`` endpoint (default: a free one; ``aioray.nodes()`` lists it as ``MetricsExportPort``).

    A new cluster runs the dashboard, as Ray's does: on ``dashboard_host`` (default 127.0.0.1, this
    machine only) and ``dashboard_port`` (default 8265, or the next free port when another cluster
    has it; an explicit port must be free). ``include_dashboard=False`` leaves it out, True fails
    the call if it cannot start (None: a warning, unless a port was given). The URL is printed and is the returned
    context's ``dashboard_url``.

    Ray's other arguments are accepted where aioray does what they ask (``logging_level`` sets the
    level of aioray's loggers in this process; the defaults of the others describe aioray as it
    is); other values raise ValueError naming them
    (docs/ray-compatibility.md).
    """
    _check_init_arguments(others)
    if _metrics_export_port is not None and (
        not isinstance(_metrics_export_port, int) or not 0 <= _metrics_export_port < 65536
    ):
        raise ValueError(f"_metrics_export_port must be a port number, got {_metrics_export_port!r}")
    if dashboard_port is not None and (
        not isinstance(dashboard_port, int)
        or isinstance(dashboard_port, bool)
        or not 0 <= dashboard_port < 65536
    ):
        raise ValueError(f"dashboard_port must be a port number, got {dashboard_port!r}")
    if include_dashboard is not None and not isinstance(include_dashboard, bool):
        raise ValueError(f"include_dashboard must be None, True or False, got {include_dashboard!r}")
    if dashboard_host is not None and (not isinstance(dashboard_host, str) or not dashboard_host):
        raise ValueError(f"dashboard_host must be a host name or address, got {dashboard_host!r}")
    if "logging_level" in others:
        logging.getLogger("aioray").setLevel(others["logging_level"])
    before = worker_api.current()
    conn = worker_api.init(
        address,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        object_store_memory=object_store_memory,
        namespace=namespace,
        ignore_reinit_error=ignore_reinit_error,
        labels=labels,
        runtime_env=runtime_env,
        log_to_driver=log_to_driver is None or bool(log_to_driver),
        metrics_export_port=_metrics_export_port,
        include_dashboard=include_dashboard,
        dashboard_host=dashboard_host,
        dashboard_port=dashboard_port,
    )
    if conn is not before and conn.node is not None and conn.dashboard_url:
        # As Ray's: said once, when this call started the cluster.
        print(f"Started a local aioray cluster. View the dashboard at {conn.dashboard_url}", file=sys.stderr)
    return InitContext(conn)


def shutdown() -> None:
    """Disconnects and stops the processes ``init`` started. Safe to call twice."""
    worker_api.shutdown()


def is_initialized() -> bool:
    return worker_api.current() is not None


# For type checkers (nothing here changes what runs): `f.remote(...)` is checked against `f`'s
# parameters and is an `ObjectRef[R]`, `R` being what `f` returns; `C.remote(...)` is checked against
# `C.__init__` and is an `ActorHandle[C]`. A generator function, or `num_returns` other than 1, gives
# a `remote` returning `Any`. mypy ignores what a class decorator returns: for it, `@remote class C`
# stays the plain class (no `C.remote`); `C = remote(CImpl)` is typed (pyright takes both). A class
# is also a callable: the class overload must come first.
@overload
def remote(cls: _ClassLike[_P, _T], /) -> ActorClass[_T, _P]: ...  # type: ignore[overload-overlap]
@overload
def remote(fn: Callable[_P, Iterator[Any] | AsyncIterator[Any]], /) -> RemoteFunction[_P, Any]: ...
@overload
def remote(fn: Callable[_P, _R], /) -> RemoteFunction[_P, ObjectRef[_R]]: ...
@overload
def remote(*, num_returns: Literal[1] | None = None, **options: Any) -> _RemoteDecorator: ...
@overload
def remote(*, num_returns: int | str, **options: Any) -> _RemoteDecoratorAnyReturns: ...
def remote(*args: Any, **options: Any) -> Any:
    """``@remote`` or ``@remote(num_cpus=..., ...)`` on a function (a task) or a class (an actor)."""

    def wrap(target: Any) -> Any:
        if isinstance(target, type):
            return ActorClass(target, options)
        if not callable(target):
            raise TypeError(f"@remote needs a function, got {type(target).__name__}")
        return RemoteFunction(target, options)

    if len(args) == 1 and not options and callable(args[0]):
        return wrap(args[0])
    if args or not options:  # `@remote()` too, as in Ray: it would silently mean nothing
        raise TypeError("use @remote or @remote(option=value, ...)")
    return wrap


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise ValueError(f"timeout must be None or a non-negative number of seconds, got {timeout!r}")


@overload
def get(refs: ObjectRef[_T], *, timeout: float | None = None) -> _T: ...
@overload
def get(refs: Sequence[ObjectRef[_T]], *, timeout: float | None = None) -> list[_T]: ...
def get(refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """The value(s) of one ref or a list of refs; raises the task's error, or GetTimeoutError."""
    _check_timeout(timeout)
    core = global_worker()
    if isinstance(refs, ObjectRef):
        return core.get([refs], timeout)[0]
    if not isinstance(refs, list):  # a ValueError, as in Ray
        raise ValueError(f"get() takes an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}")
    _check_refs(refs, "get() takes ObjectRefs")
    return core.get(refs, timeout)


def _check_refs(refs: list[Any], what: str) -> None:
    # The types are gathered in C: a list of 1k refs costs no Python step per ref.
    if all(issubclass(t, ObjectRef) for t in set(map(type, refs))):
        return
    bad = next(r for r in refs if not isinstance(r, ObjectRef))
    raise TypeError(f"{what}, got {type(bad).__name__} in the list")


def put(value: _T) -> ObjectRef[_T]:
    """Stores `value` in the cluster; returns its ref (the caller owns it)."""
    return global_worker().put(value)


def wait(
    refs: Sequence[ObjectRef[_T]],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef[_T]], list[ObjectRef[_T]]]:
    """Splits `refs` into (ready, not ready) once `num_returns` are ready or `timeout` passes.

    Both lists keep the input order.
    """
    _check_timeout(timeout)
    if not isinstance(refs, list):
        raise TypeError(f"wait() takes a list of ObjectRefs, got {type(refs).__name__}")
    _check_refs(refs, "wait() takes ObjectRefs")
    if not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"invalid number of objects to return: {num_returns!r} (at least 1)")
    if not refs:
        return [], []
    return global_worker().wait(refs, num_returns, timeout)


def _node_table_call(call: Callable[[pb.NodeInfoGcsServiceStub], Any], timeout: float = 10) -> Any:
    core = global_worker()  # a driver's or, inside a task, the worker's own

    async def run() -> Any:
        return await call(core.gcs(pb.NodeInfoGcsServiceStub, reconnect_timeout_s=timeout))

    # A little longer than the GCS budget: a GCS that is gone fails as GcsUnreachableError (a
    # ConnectionError naming the address), not as a bare timeout.
    return asyncio.run_coroutine_threadsafe(run(), core.loop).result(timeout + 5)


def nodes() -> list[dict[str, Any]]:
    """Every node that ever joined, with Ray's keys."""
    view = _node_table_call(lambda gcs: gcs.get_cluster_view(pb.Empty(), timeout=10))
    out = []
    for n in view.nodes:
        host, _, port = n.address.rpartition(":")
        object_port = n.object_manager_address.rpartition(":")[2]
        out.append(
            {
                "NodeID": n.node_id.hex(),
                "Alive": n.alive,
                "NodeManagerAddress": host,
                "NodeManagerPort": int(port) if port.isdigit() else 0,
                "Resources": dict(n.total.amounts),
                "ObjectStoreSocketName": n.store_name,
                "ObjectManagerPort": int(object_port) if object_port.isdigit() else 0,  # 0: gRPC only
                "IsHead": n.is_head,
                "Labels": dict(n.labels),
                "MetricsExportPort": n.metrics_export_port,
            }
        )
    return out


def _sum_resources(field: str) -> dict[str, float]:
    view = _node_table_call(lambda gcs: gcs.get_cluster_view(pb.Empty(), timeout=10))
    total = ResourceSet()
    for n in view.nodes:
        if n.alive:
            total = total + ResourceSet.from_wire(getattr(n, field).amounts)
    return total.to_dict()


def cluster_resources() -> dict[str, float]:
    """Total resources of the live nodes."""
    return _sum_resources("total")


def available_resources() -> dict[str, float]:
    """Resources of the live nodes not held by running tasks (as last reported, ~50 ms behind)."""
    return _sum_resources("available")


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kills an actor; later calls raise ActorDiedError. With no_restart=False it may restart."""
    if not isinstance(actor, ActorHandle):
        raise ValueError(
            f"kill() only takes actor handles, got {type(actor).__name__}; for tasks, use aioray.cancel()"
        )
    core = global_worker()
    core.run_sync(core.kill_actor(actor._actor_id, no_restart), timeout=30)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor called `name`; ValueError if there is none."""
    import cloudpickle

    from aioray._private.common import rpc

    core = global_worker()
    ns = namespace or core.namespace or DEFAULT_NAMESPACE

    async def lookup() -> pb.ActorInfo:
        return await core.gcs(pb.ActorInfoGcsServiceStub, reconnect_timeout_s=15).get_named_actor(
            pb.NamedActorRequest(name=name, namespace=ns), timeout=10
        )

    try:
        info = core.run_sync(lookup(), timeout=20)
    except rpc.GRPCError as e:
        if e.status == rpc.Status.NOT_FOUND:
            raise ValueError(
                f"Failed to look up actor with name {name!r} in namespace {ns!r}: no such live actor"
            ) from None
        raise
    meta: HandleMeta = cloudpickle.loads(info.handle_meta)
    return ActorHandle(info.actor_id, meta, None)


def cancel(ref: ObjectRef | ObjectRefGenerator, *, force: bool = False, recursive: bool = True) -> None:
    """Cancels the task that makes `ref` (or a generator's task): dropped if pending, interrupted
    if running.

    A running task gets KeyboardInterrupt (an async actor method is cancelled as a
    coroutine; a sync actor method only sees ``get_runtime_context().is_canceled()``);
    with ``force=True`` its worker process is killed instead (not for actor methods:
    use ``kill``). With ``recursive`` the tasks it submitted are cancelled too.
    ``get``/``await`` of the ref then raises TaskCancelledError (a generator's next
    item does); cancelled tasks are never retried.
    """
    if isinstance(ref, ObjectRefGenerator):
        ref = ref._cancel_ref()
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    core = global_worker()
    if force and ref.task_id() in core.actor_tasks:
        raise ValueError(
            "force=True is not supported for actor tasks: use aioray.kill(actor) to stop the actor"
        )
    core.cancel(ref, force, recursive)


def stats() -> dict[str, Any]:
    """Object store use across the live nodes: bytes used and held, spilled to disk, restored, per node too."""
    view = _node_table_call(lambda gcs: gcs.get_cluster_view(pb.Empty(), timeout=10))
    nodes = {
        n.node_id.hex(): {
            "store_capacity_bytes": n.store_capacity,
            "store_used_bytes": n.store_used,
            "store_objects": n.store_objects,
            "spilled_bytes": n.spilled_bytes,
            "spilled_bytes_total": n.spilled_total,
            "restored_bytes": n.restored_bytes,
        }
        for n in view.nodes
        if n.alive
    }
    totals = {key: sum(node[key] for node in nodes.values()) for key in next(iter(nodes.values()), {})}
    return {**totals, "nodes": nodes}
