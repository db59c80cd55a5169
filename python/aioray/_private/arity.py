"""Checking a call's arguments against the remote function's signature before it is submitted.

`inspect.Signature.bind` costs about 5 µs, a sixth of a task submission; most
calls pass plain positional arguments, whose count is checked against the
precomputed bounds instead, and only other calls (keywords, or a count out of
bounds, which then gets bind's precise message) go through `bind`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class CallShape:
    __slots__ = ("_max", "_min", "_signature")

    def __init__(self, signature: inspect.Signature | None) -> None:
        self._signature = signature
        self._min, self._max = 0, -1  # an empty range: every call goes through bind
        if signature is None:
            return
        params = list(signature.parameters.values())
        if any(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty for p in params):
            return  # a required keyword-only parameter: positional-only calls are never complete
        positional = [p for p in params if p.kind in _POSITIONAL]
        self._min = sum(p.default is p.empty for p in positional)
        has_var_positional = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
        self._max = sys.maxsize if has_var_positional else len(positional)

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> CallShape:
        try:
            return cls(inspect.signature(fn))
        except (TypeError, ValueError):  # some builtins have no signature: let the worker judge
            return cls(None)

    def check(self, label: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raises TypeError naming `label` when the arguments do not fit the signature."""
        if self._signature is None or (not kwargs and self._min <= len(args) <= self._max):
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{label}.remote(): {e}") from None
