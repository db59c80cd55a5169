"""Custom serializers for types that do not pickle (or not well), as ``ray.util.register_serializer``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cloudpickle

__all__ = ["deregister_serializer", "register_serializer"]


def register_serializer(
    cls: type, *, serializer: Callable[[Any], Any], deserializer: Callable[[Any], Any]
) -> None:
    """From now on, this process sends instances of `cls` as ``serializer(obj)`` (which must pickle),
    rebuilt by ``deserializer(serialized)`` wherever they arrive. The deserializer travels with the
    value (by value, like a task's function), so the receiving processes need not register it.

    As in Ray, it applies to what *this* process serializes (task arguments, ``put``, return
    values and errors of tasks it runs): register it inside tasks and actors that send such values.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_serializer takes a class, got {cls!r}")
    if not callable(serializer) or not callable(deserializer):
        raise TypeError("serializer and deserializer must be callables")

    def reduce(obj: Any) -> tuple[Callable[[Any], Any], tuple[Any]]:
        return deserializer, (serializer(obj),)

    # aioray's pickler (cloudpickle's), not the standard library's: nothing else changes.
    cloudpickle.CloudPickler.dispatch_table[cls] = reduce


def deregister_serializer(cls: type) -> None:
    """Forgets the serializer `register_serializer` set for `cls`; nothing happens if there is none."""
    cloudpickle.CloudPickler.dispatch_table.pop(cls, None)
