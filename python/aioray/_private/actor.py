"""``@aioray.remote`` classes: actor classes, handles and methods."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeAlias, TypeVar, overload

import cloudpickle

from aioray._private.arity import CallShape
from aioray._private.common.ids import random_id
from aioray._private.core_worker import object_ref
from aioray._private.core_worker.object_ref import ObjectRef
from aioray._private.placement import PLACEMENT_OPTIONS, placement_of
from aioray._private.remote_function import (
    check_backpressure,
    check_num_returns,
    check_task_events,
    validate_options,
)
from aioray._private.runtime_env import parse_runtime_env, wire_for
from aioray._proto.aioray import v1 as pb

_ACTOR_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "max_concurrency",
    "max_restarts",
    "max_task_retries",
    "name",
    "namespace",
    "lifetime",
    "get_if_exists",
    "memory",
    "accelerator_type",
    "runtime_env",
    *PLACEMENT_OPTIONS,
    "concurrency_groups",
    "enable_task_events",
}
DEFAULT_NAMESPACE = "default"
# Methods every actor has, as in Ray: `__ray_ready__()` answers once the actor is constructed,
# `__ray_terminate__()` makes it exit gracefully after the calls before it, `__ray_call__(fn, *args)`
# runs ``fn(actor_instance, *args)`` inside it.
_BUILTIN_METHODS = ("__ray_ready__", "__ray_terminate__", "__ray_call__")
_METHOD_OPTIONS = {
    "num_returns",
    "name",
    "max_task_retries",
    "concurrency_group",
    "_generator_backpressure_num_objects",
    "enable_task_events",
}

# Type parameters, for type checkers only (nothing below changes what runs). Their defaults (PEP 696)
# keep the bare names meaning what they meant: `ActorHandle` is `ActorHandle[Any]`, and so on.
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
    from typing import Concatenate, Protocol

    from typing_extensions import ParamSpec as _ParamSpecWithDefault
    from typing_extensions import TypeVar as _TypeVarWithDefault

    _T = _TypeVarWithDefault("_T", default=Any)
    _T_co = _TypeVarWithDefault("_T_co", covariant=True, default=Any)
    _P = _ParamSpecWithDefault("_P", default=...)
    _Ret_co = _TypeVarWithDefault("_Ret_co", covariant=True, default=Any)

    _Q = ParamSpec("_Q")
    _S = TypeVar("_S")
    _S_contra = TypeVar("_S_contra", contravariant=True)
    _R = TypeVar("_R")
    _C_co = TypeVar("_C_co", covariant=True)
    _V_co = TypeVar("_V_co", covariant=True)
    _Iter = TypeVar("_Iter", bound="Iterator[Any] | AsyncIterator[Any]")

    class _RemoteMethod(Protocol[_S_contra, _Q, _C_co, _V_co]):
        """What ``@aioray.method(...)`` makes of a method, for type checkers: on an instance (inside
        the actor) the method as it was; on the class, hence on an ``ActorProxy``, an
        ``ActorMethod`` whose ``remote`` takes the method's arguments."""

        @overload
        def __get__(self, obj: None, owner: Any, /) -> ActorMethod[_Q, _V_co]: ...
        @overload
        def __get__(self, obj: _S_contra, owner: Any, /) -> Callable[_Q, _C_co]: ...

    class _MethodDecorator(Protocol):
        # Awaitables are awaited in the actor (so `ObjectRef[R]`); generators stream (`Any`).
        @overload
        def __call__(
            self, fn: Callable[Concatenate[_S, _Q], Coroutine[Any, Any, _R]], /
        ) -> _RemoteMethod[_S, _Q, Coroutine[Any, Any, _R], ObjectRef[_R]]: ...
        @overload
        def __call__(
            self, fn: Callable[Concatenate[_S, _Q], _Iter], /
        ) -> _RemoteMethod[_S, _Q, _Iter, Any]: ...
        @overload
        def __call__(
            self, fn: Callable[Concatenate[_S, _Q], Awaitable[_R]], /
        ) -> _RemoteMethod[_S, _Q, Awaitable[_R], ObjectRef[_R]]: ...
        @overload
        def __call__(
            self, fn: Callable[Concatenate[_S, _Q], _R], /
        ) -> _RemoteMethod[_S, _Q, _R, ObjectRef[_R]]: ...

    class _MethodDecoratorAnyReturns(Protocol):
        def __call__(self, fn: Callable[Concatenate[_S, _Q], _R], /) -> _RemoteMethod[_S, _Q, _R, Any]: ...

else:
    _T = TypeVar("_T")
    _T_co = TypeVar("_T_co", covariant=True)
    _P = ParamSpec("_P")
    _Ret_co = TypeVar("_Ret_co", covariant=True)


@overload
def method(
    *, num_returns: Literal[1] | None = None, concurrency_group: str | None = None
) -> _MethodDecorator: ...
@overload
def method(*, num_returns: int | str, concurrency_group: str | None = None) -> _MethodDecoratorAnyReturns: ...
def method(
    *, num_returns: int | str | None = None, concurrency_group: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@aioray.method(num_returns=2, concurrency_group="io")`` on an actor method sets its defaults:
    how many refs a call returns, and the concurrency group (of the class's ``concurrency_groups``)
    its calls run in."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if num_returns is not None:
            fn.__aioray_num_returns__ = _method_returns(num_returns, fn)  # type: ignore[attr-defined]
        if concurrency_group is not None:
            fn.__aioray_concurrency_group__ = concurrency_group  # type: ignore[attr-defined]
        return fn

    return wrap


@dataclass
class HandleMeta:
    """What every handle of an actor needs to know about its class."""

    class_name: str
    methods: dict[str, int | str]  # name -> num_returns ("streaming" for a generator method)
    call_shapes: dict[str, CallShape] = field(default_factory=dict)
    is_async: bool = False
    max_task_retries: int = 0
    concurrency_groups: frozenset[str] = frozenset()  # their names, to check per-call choices
    enable_task_events: bool = True  # the class's option: its calls' events are recorded


def _method_returns(num_returns: Any, fn: Callable[..., Any] | None) -> int | str:
    """An actor method's `num_returns`: an integer or "streaming" (Ray's "dynamic" is refused for
    actor methods: use "streaming")."""
    if num_returns == "dynamic":
        raise ValueError('num_returns="dynamic" is not supported for actor methods: use "streaming"')
    return check_num_returns(num_returns, fn)


def _method_groups(cls: type, groups: dict[str, int]) -> dict[str, str]:
    """The concurrency group of each method that names one; ValueError for a group not defined."""
    out = {}
    for name, member in inspect.getmembers(cls, predicate=callable):
        group = getattr(member, "__aioray_concurrency_group__", None)
        if group is None:
            continue
        if group not in groups:
            raise ValueError(
                f"{cls.__name__}.{name} is in concurrency group {group!r}, which the class does not define "
                f"(concurrency_groups={groups!r})"
            )
        out[name] = group
    return out


def _check_groups(groups: Any) -> dict[str, int]:
    if groups is None:
        return {}
    if not isinstance(groups, dict) or not all(
        isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 1
        for k, v in groups.items()
    ):
        raise ValueError(f"concurrency_groups must map names to integers >= 1, got {groups!r}")
    return dict(groups)


def _class_meta(cls: type, max_task_retries: int) -> HandleMeta:
    methods: dict[str, int | str] = {}
    call_shapes: dict[str, CallShape] = {}
    is_async = False
    for name, member in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name != "__call__":
            continue
        declared = getattr(member, "__aioray_num_returns__", None)
        methods[name] = check_num_returns(None, member) if declared is None else declared
        if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
            is_async = True
        try:
            sig = inspect.signature(member)
            params = list(sig.parameters.values())
            if not isinstance(inspect.getattr_static(cls, name), staticmethod | classmethod) and params:
                sig = sig.replace(parameters=params[1:])  # drop self
            call_shapes[name] = CallShape(sig)
        except (TypeError, ValueError):
            call_shapes[name] = CallShape(None)
    return HandleMeta(cls.__name__, methods, call_shapes, is_async, max_task_retries)


class ActorClass(Generic[_T, _P]):
    """A class to run as an actor: ``C.remote(*args)`` starts one and returns its handle at once.

    For type checkers, ``ActorClass[T, P]``: ``remote`` takes the arguments ``P`` of ``T.__init__``
    and returns an ``ActorHandle[T]``.
    """

    def __init__(self, cls: type[_T], options: dict[str, Any]) -> None:
        validate_options(options, _ACTOR_OPTIONS, "an actor class")
        placement_of(options, 0)  # refuses a bad strategy or resource now, not at .remote()
        lifetime = options.get("lifetime")
        if lifetime not in (None, "detached", "non_detached"):
            raise ValueError(f"lifetime must be 'detached' or 'non_detached', got {lifetime!r}")
        for key in ("max_task_retries", "max_restarts"):
            value = options.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < -1:
                raise ValueError(f"{key} only accepts -1, 0 or a positive integer, got {value!r}")
        name = options.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"an actor's name must be a string, got {type(name).__name__}")
            if not name:
                raise ValueError("an actor's name cannot be empty (leave it out for an anonymous actor)")
        if options.get("get_if_exists") and not name:
            raise ValueError("get_if_exists needs the actor's name: .options(name=..., get_if_exists=True)")
        _method_groups(cls, _check_groups(options.get("concurrency_groups")))  # refuse bad groups early
        check_task_events(options.get("enable_task_events"))
        self._cls = cls
        self._options = options
        self._runtime_env = parse_runtime_env(options.get("runtime_env"))
        self._env_cache: tuple[Any, bytes] | None = None  # (core worker, its runtime env for this class)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_env_cache"] = None  # belongs to this process's core worker
        return state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor class {self._cls.__name__} cannot be instantiated directly: use {self._cls.__name__}.remote(...)"
        )

    def __getattr__(self, name: str) -> Any:
        # The class's own attributes (constants, static and class methods) through the actor class,
        # as in Ray, where the actor class derives from the user's.
        cls = self.__dict__.get("_cls")
        if cls is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(cls, name)

    def __dir__(self) -> list[str]:
        return sorted({"options", "remote", *(n for n in dir(self._cls) if not n.startswith("__"))})

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        raise TypeError(
            "Inheriting from actor classes is not currently supported: inherit from the plain class and "
            "make the derived class an actor with @aioray.remote"
        )

    def options(self, **options: Any) -> ActorClass[_T, _P]:
        """A copy with some options changed (name, lifetime, num_cpus, max_restarts, ...)."""
        return ActorClass(self._cls, {**self._options, **options})

    def remote(self, *args: _P.args, **kwargs: _P.kwargs) -> ActorHandle[_T]:
        opts = self._options
        CallShape.of(self._cls).check(self._cls.__name__, args, kwargs)
        core = object_ref.global_worker()
        max_task_retries = int(opts.get("max_task_retries", 0))
        if max_task_retries == -1:  # retried without limit, as max_retries=-1 for tasks
            max_task_retries = 10**9
        meta = _class_meta(self._cls, max_task_retries)
        groups = _check_groups(opts.get("concurrency_groups"))
        meta.concurrency_groups = frozenset(groups)
        meta.enable_task_events = check_task_events(opts.get("enable_task_events"))
        max_concurrency = int(opts.get("max_concurrency", 1000 if meta.is_async else 1))
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        # As in Ray, an actor needs no CPU to live unless it asks for one.
        inherited = core.current_placement_group()
        cache = self._env_cache
        if cache is None or cache[0] is not core:
            cache = self._env_cache = (core, wire_for(core, self._runtime_env))
        placement = placement_of(
            opts, 0, inherited if inherited is not None and inherited[2] else None, runtime_env=cache[1]
        )
        name = opts.get("name") or ""
        namespace = opts.get("namespace") or core.namespace or DEFAULT_NAMESPACE
        request = pb.CreateActorRequest(
            actor_id=random_id(16),
            handle_meta=cloudpickle.dumps(meta),
            name=name,
            namespace=namespace,
            detached=opts.get("lifetime") == "detached",
            get_if_exists=bool(opts.get("get_if_exists")),
            resources=pb.ResourceMap(amounts=placement.shape.resources.to_dict()),
            max_restarts=int(opts.get("max_restarts", 0)),
            strategy=placement.shape.strategy_message(),
            runtime_env=placement.shape.runtime_env_message(),
        )
        actor_id, lifetime, created = core.start_actor(
            self._cls,
            args,
            kwargs,
            request,
            max_concurrency=max_concurrency,
            is_async=meta.is_async,
            wait=bool(name),  # a name must be claimed (or found, with get_if_exists) before returning
            concurrency_groups=groups,
            method_groups=_method_groups(self._cls, groups),
            placement_group=placement.placement_group,
            enable_task_events=meta.enable_task_events,
        )
        if name and created.result().actor_id != actor_id:
            # get_if_exists found a live actor of that name: this handle is for it.
            info = created.result()
            return ActorHandle(info.actor_id, cloudpickle.loads(info.handle_meta), None)
        return ActorHandle(actor_id, meta, lifetime)


class ActorHandle(Generic[_T_co]):
    """A handle to an actor: ``handle.method.remote(*args)`` returns an ObjectRef. Picklable.

    Typing: ``C.remote(...)`` is an ``ActorHandle[C]``, but its methods are found at run time
    (``__getattr__``), so type checkers see each as an unchecked ``ActorMethod`` whose ``remote``
    returns ``Any``. To have calls checked, mark the methods with ``@aioray.method()`` and annotate
    the handle as ``ActorProxy[C]`` (``h: ActorProxy[C] = C.remote(...)``): then
    ``h.m.remote(...)`` is checked against ``C.m`` and is an ``ObjectRef[R]`` (``R`` awaited for an
    ``async def``); its type shows as ``Any | ObjectRef[R]``. Limits: on an ``ActorProxy``, methods
    without ``@aioray.method()`` are an error, as are the handle's own attributes (``actor_id``) and
    passing it where an ``ActorHandle`` is expected (narrow with ``isinstance`` first).
    """

    def __init__(self, actor_id: bytes, meta: HandleMeta, lifetime: ObjectRef | None) -> None:
        self._actor_id = actor_id
        self._meta = meta
        self._lifetime = lifetime

    def __getattr__(self, name: str) -> ActorMethod:
        if name in _BUILTIN_METHODS:
            return ActorMethod(self, name, 1)
        meta = self.__dict__.get("_meta")
        if meta is not None and name in meta.methods:
            return ActorMethod(self, name, meta.methods[name])
        if name.startswith("_") or meta is None:
            raise AttributeError(name)
        raise AttributeError(f"actor {meta.class_name} has no method {name!r}")

    def __dir__(self) -> list[str]:
        return sorted({*self._meta.methods, *_BUILTIN_METHODS})

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorHandle, (self._actor_id, self._meta, self._lifetime))

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __repr__(self) -> str:
        return f"Actor({self._meta.class_name}, {self._actor_id.hex()[:12]})"

    async def _aioray_wait_ready(self) -> ActorHandle:
        """Waits until the actor is alive; raises its death cause (e.g. the constructor's error)."""
        core = object_ref.global_worker()
        fut = asyncio.run_coroutine_threadsafe(core.wait_actor_started(self._actor_id), core.loop)
        await asyncio.wrap_future(fut)
        return self


# An actor handle as type checkers should see it to check method calls (see ActorHandle): the class
# part gives each `@aioray.method()` method's typed `ActorMethod`.
ActorProxy: TypeAlias = ActorHandle[_T] | type[_T]


class ActorMethod(Generic[_P, _Ret_co]):
    """One method of an actor handle: ``.remote(*args)`` calls it. For type checkers,
    ``ActorMethod[P, Ret]``: ``remote`` takes ``P`` and returns ``Ret``."""

    def __init__(
        self,
        handle: ActorHandle,
        name: str,
        num_returns: int | str,
        label: str | None = None,
        max_task_retries: int | None = None,
        concurrency_group: str = "",
        backpressure: int = 0,
        task_events: bool | None = None,
    ) -> None:
        self._handle = handle
        self._task_events = task_events  # None: the actor class's choice
        self._name = name
        self._num_returns = num_returns
        self._backpressure = backpressure
        self._label = label
        self._max_task_retries = max_task_retries
        self._concurrency_group = concurrency_group

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor methods cannot be called directly: use .{self._name}.remote(...)")

    @overload
    def options(self, *, num_returns: Literal[1], **options: Any) -> ActorMethod[_P, _Ret_co]: ...
    @overload
    def options(self, *, num_returns: int | str | None, **options: Any) -> ActorMethod[_P, Any]: ...
    @overload
    def options(self, **options: Any) -> ActorMethod[_P, _Ret_co]: ...
    def options(self, **options: Any) -> ActorMethod[_P, Any]:
        """A copy of this method with per-call options: ``num_returns``, ``name`` (the call's name in
        errors), ``max_task_retries``, ``concurrency_group``. Any other option raises ``ValueError``."""
        validate_options(options, _METHOD_OPTIONS, "an actor method")
        group = options.get("concurrency_group", self._concurrency_group) or ""
        if group and group not in self._handle._meta.concurrency_groups:
            raise ValueError(
                f"actor {self._handle._meta.class_name} has no concurrency group {group!r} "
                f"(it has {sorted(self._handle._meta.concurrency_groups)})"
            )
        num_returns = _method_returns(options.get("num_returns", self._num_returns), None)
        backpressure = check_backpressure(
            options.get("_generator_backpressure_num_objects", self._backpressure or None)
        )
        max_task_retries = options.get("max_task_retries", self._max_task_retries)
        if max_task_retries is not None and (not isinstance(max_task_retries, int) or max_task_retries < -1):
            raise ValueError(f"max_task_retries must be an integer >= -1, got {max_task_retries!r}")
        task_events = self._task_events
        if "enable_task_events" in options:
            task_events = check_task_events(options["enable_task_events"])
        return ActorMethod(
            self._handle,
            self._name,
            num_returns,
            options.get("name", self._label),
            max_task_retries,
            group,
            backpressure,
            task_events,
        )

    # The returns below are `Ret` by construction (see _RemoteMethod), which mypy cannot see.
    def remote(self, *args: _P.args, **kwargs: _P.kwargs) -> _Ret_co:
        meta = self._handle._meta
        label = self._label or f"{meta.class_name}.{self._name}"
        shape = meta.call_shapes.get(self._name)
        if shape is not None:
            shape.check(label, args, kwargs)
        core = object_ref.global_worker()
        if self._max_task_retries is None:
            max_task_retries = meta.max_task_retries
        else:  # -1: retried without limit
            max_task_retries = 10**9 if self._max_task_retries == -1 else self._max_task_retries
        task_events = meta.enable_task_events if self._task_events is None else self._task_events
        if isinstance(self._num_returns, str):  # "streaming": a method that yields
            return core.submit_actor_generator_task(  # type: ignore[return-value]
                self._handle._actor_id,
                self._name,
                label,
                args,
                kwargs,
                max_task_retries=max_task_retries,
                concurrency_group=self._concurrency_group,
                backpressure=self._backpressure,
                enable_task_events=task_events,
            )
        refs = core.submit_actor_task(
            self._handle._actor_id,
            self._name,
            label,
            args,
            kwargs,
            num_returns=self._num_returns,
            max_task_retries=max_task_retries,
            concurrency_group=self._concurrency_group,
            enable_task_events=task_events,
        )
        if self._num_returns == 1:
            return refs[0]  # type: ignore[return-value]
        return None if self._num_returns == 0 else refs  # type: ignore[return-value]
