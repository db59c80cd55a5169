"""``@aioray.remote`` functions: options, validation and submission."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, overload

from aioray._private.arity import CallShape
from aioray._private.common.lease_shape import Placement
from aioray._private.core_worker import object_ref
from aioray._private.placement import PLACEMENT_OPTIONS, placement_of
from aioray._private.runtime_env import parse_runtime_env, wire_for

_FUNCTION_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "num_returns",
    "max_retries",
    "retry_exceptions",
    "name",
    "memory",
    "accelerator_type",
    "runtime_env",
    *PLACEMENT_OPTIONS,
    "_generator_backpressure_num_objects",
    "enable_task_events",
}
DEFAULT_MAX_RETRIES = 3
GENERATOR_RETURNS = ("streaming", "dynamic")


def check_num_returns(num_returns: Any, fn: Callable[..., Any] | None) -> int | str:
    """`num_returns` as given, or "streaming" for a generator function that names none (as Ray)."""
    if num_returns is None:
        is_generator = fn is not None and (inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn))
        return "streaming" if is_generator else 1
    if num_returns in GENERATOR_RETURNS:
        return str(num_returns)
    if not isinstance(num_returns, int) or isinstance(num_returns, bool) or num_returns < 0:
        raise ValueError(
            f"num_returns must be a non-negative integer, 'streaming' or 'dynamic', got {num_returns!r}"
        )
    return num_returns


def check_backpressure(value: Any) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise ValueError(f"_generator_backpressure_num_objects must be an integer, got {value!r}")
    return max(0, value)  # -1 and 0: no backpressure


# Ray options aioray accepts only at their default value for now: anything else would be silently
# ignored, so it is refused (see docs/ray-compatibility.md).
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {}


def check_task_events(value: Any) -> bool:
    """``enable_task_events``: record the task's events (the state API, timeline) or not."""
    if value is None:
        return True
    if not isinstance(value, bool):
        raise ValueError(f"enable_task_events must be a bool, got {value!r}")
    return value


def with_runtime_env(placement: Placement, runtime_env: bytes) -> Placement:
    if placement.shape.runtime_env == runtime_env:
        return placement
    return dataclasses.replace(placement, shape=dataclasses.replace(placement.shape, runtime_env=runtime_env))


def validate_options(options: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"unknown option(s) for {what}: {', '.join(sorted(unknown))}; valid: {', '.join(sorted(allowed))}"
        )
    for key, defaults in _DEFAULT_ONLY.items():
        if key in options and not any(options[key] == d for d in defaults):
            raise ValueError(
                f"{key}={options[key]!r} for {what} is not supported by aioray yet (only its default); "
                "see docs/ray-compatibility.md"
            )
    for key in ("num_cpus", "num_gpus"):
        value = options.get(key)
        if value is not None and (not isinstance(value, int | float) or value < 0):
            raise ValueError(f"{key} must be a non-negative number, got {value!r}")
    res = options.get("resources")
    if res is not None and (
        not isinstance(res, dict) or not all(isinstance(v, int | float) for v in res.values())
    ):
        raise ValueError(f"resources must be a dict of names to numbers, got {res!r}")


if TYPE_CHECKING:  # defaults (PEP 696): a bare `RemoteFunction` is `RemoteFunction[..., Any]`
    from typing_extensions import ParamSpec as _ParamSpecWithDefault
    from typing_extensions import TypeVar as _TypeVarWithDefault

    _P = _ParamSpecWithDefault("_P", default=...)
    _Ret_co = _TypeVarWithDefault("_Ret_co", covariant=True, default=Any)
else:
    _P = ParamSpec("_P")
    _Ret_co = TypeVar("_Ret_co", covariant=True)


class RemoteFunction(Generic[_P, _Ret_co]):
    """A function to run as a task: ``f.remote(*args)`` returns an ObjectRef at once.

    For type checkers, ``RemoteFunction[P, Ret]`` takes the function's parameters ``P`` and returns
    ``Ret`` from ``remote``: ``ObjectRef[R]`` for ``@remote`` on a function returning ``R``; ``Any``
    for a generator function or a ``num_returns`` other than 1 (a list of refs, None, or a generator).
    """

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        validate_options(options, _FUNCTION_OPTIONS, "a remote function")
        if inspect.iscoroutinefunction(fn):
            raise ValueError(
                f"'async def' should not be used for remote tasks ({getattr(fn, '__name__', fn)}): a task runs "
                "in a worker of its own; use an async actor method to run a coroutine"
            )
        num_returns = check_num_returns(options.get("num_returns"), fn)
        self._backpressure = check_backpressure(options.get("_generator_backpressure_num_objects"))
        self._task_events = check_task_events(options.get("enable_task_events"))
        max_retries = options.get("max_retries", DEFAULT_MAX_RETRIES)
        if not isinstance(max_retries, int) or max_retries < -1:
            raise ValueError(f"max_retries must be an integer >= -1, got {max_retries!r}")
        retry = options.get("retry_exceptions", False)
        if isinstance(retry, list):
            retry = tuple(retry)
        if not (
            isinstance(retry, bool) or (isinstance(retry, tuple) and all(isinstance(t, type) for t in retry))
        ):
            raise ValueError("retry_exceptions must be a bool or a list of exception classes")
        self._function = fn
        self._options = options
        self._name = str(options.get("name") or getattr(fn, "__name__", "task"))
        self._num_returns = num_returns
        self._max_retries = 10**9 if max_retries == -1 else max_retries
        self._retry_exceptions = retry
        self._placement = placement_of(options, 1)
        self._runtime_env = parse_runtime_env(options.get("runtime_env"))
        # (core worker, its runtime env for this function, the placement with it): resolved at the
        # first call from a process, so later calls pay nothing for it.
        self._env_cache: tuple[Any, bytes, Placement] | None = None
        self._call_shape = CallShape.of(fn)
        functools.update_wrapper(self, fn)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_env_cache"] = None  # belongs to this process's core worker
        return state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly: use {self._name}.remote(...) "
            "and get the result with aioray.get(ref) or `await ref`"
        )

    @overload
    def options(self, *, num_returns: Literal[1], **options: Any) -> RemoteFunction[_P, _Ret_co]: ...
    @overload
    def options(self, *, num_returns: int | str | None, **options: Any) -> RemoteFunction[_P, Any]: ...
    @overload
    def options(self, **options: Any) -> RemoteFunction[_P, _Ret_co]: ...
    def options(self, **options: Any) -> RemoteFunction[_P, Any]:
        """A copy with some options changed (num_cpus, num_returns, max_retries, ...)."""
        return RemoteFunction(self._function, {**self._options, **options})

    def _placement_for_call(self, core: Any) -> Placement:
        cache = self._env_cache
        if cache is None or cache[0] is not core:
            env = wire_for(core, self._runtime_env)
            cache = self._env_cache = (core, env, with_runtime_env(self._placement, env))
        # Inside a placement group that captures child tasks, a task with no strategy runs in it.
        inherited = core.current_placement_group()
        if inherited is None or not inherited[2]:
            return cache[2]
        return placement_of(self._options, 1, inherited, runtime_env=cache[1])

    # The returns below are `Ret` by construction (see the class docstring), which mypy cannot see.
    def remote(self, *args: _P.args, **kwargs: _P.kwargs) -> _Ret_co:
        self._call_shape.check(self._name, args, kwargs)
        core = object_ref.global_worker()
        if isinstance(self._num_returns, str):  # a generator task
            generator, end = core.submit_generator_task(
                self._function,
                self._name,
                args,
                kwargs,
                placement=self._placement_for_call(core),
                max_retries=self._max_retries,
                retry_exceptions=self._retry_exceptions,
                backpressure=self._backpressure,
                dynamic=self._num_returns == "dynamic",
                enable_task_events=self._task_events,
            )
            return end if self._num_returns == "dynamic" else generator  # type: ignore[return-value]
        refs = core.submit_task(
            self._function,
            self._name,
            args,
            kwargs,
            num_returns=self._num_returns,
            placement=self._placement_for_call(core),
            max_retries=self._max_retries,
            retry_exceptions=self._retry_exceptions,
            enable_task_events=self._task_events,
        )
        if self._num_returns == 1:
            return refs[0]  # type: ignore[return-value]
        if self._num_returns == 0:
            return None  # type: ignore[return-value]
        return refs  # type: ignore[return-value]
