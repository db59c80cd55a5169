"""``@aioray.remote`` functions: options, validation and submission."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from aioray._private.arity import CallShape
from aioray._private.common.resources import task_resources
from aioray._private.core_worker import object_ref

_FUNCTION_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "num_returns",
    "max_retries",
    "retry_exceptions",
    "name",
    "memory",
    "scheduling_strategy",
    "runtime_env",
}
DEFAULT_MAX_RETRIES = 3


# Ray options aioray accepts only at their default value for now: anything else would be silently
# ignored, so it is refused (see docs/ray-compatibility.md).
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "scheduling_strategy": (None, "DEFAULT"),
    "runtime_env": (None, {}),
    "memory": (None, 0),
}


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


class RemoteFunction:
    """A function to run as a task: ``f.remote(*args)`` returns an ObjectRef at once."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]) -> None:
        validate_options(options, _FUNCTION_OPTIONS, "a remote function")
        num_returns = options.get("num_returns", 1)
        if not isinstance(num_returns, int) or num_returns < 0:
            raise ValueError(f"num_returns must be a non-negative integer, got {num_returns!r}")
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
        self._resources = task_resources(
            options.get("num_cpus"), options.get("num_gpus"), options.get("resources"), 1
        )
        self._call_shape = CallShape.of(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly: use {self._name}.remote(...) "
            "and get the result with aioray.get(ref) or `await ref`"
        )

    def options(self, **options: Any) -> RemoteFunction:
        """A copy with some options changed (num_cpus, num_returns, max_retries, ...)."""
        return RemoteFunction(self._function, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self._call_shape.check(self._name, args, kwargs)
        core = object_ref.global_worker()
        refs = core.submit_task(
            self._function,
            self._name,
            args,
            kwargs,
            num_returns=self._num_returns,
            resources=self._resources,
            max_retries=self._max_retries,
            retry_exceptions=self._retry_exceptions,
        )
        if self._num_returns == 1:
            return refs[0]
        if self._num_returns == 0:
            return None
        return refs
