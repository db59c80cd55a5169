"""Faster attribute access for betterproto messages: the same behaviour, without its per-access cost.

betterproto 2.0.0b7 routes every attribute read of a message (methods included) through a Python
``__getattribute__`` that looks up the class's metadata through a class property and catches an
AttributeError, and every write through a ``__setattr__`` that calls ``hasattr`` (the same path
again); building a default calls ``warnings.catch_warnings()``. On a 2-core VM that made building
an empty ``NodeInfo`` 115 us and parsing a ``PlacementGroupInfo`` 240 us (the Rust codec sets
fields through the same ``__setattr__``): a third of the GCS's time while placing groups.

`install()` replaces those four methods of ``betterproto.Message`` with versions that keep its
rules (lazy defaults for unset fields, one-of groups, ``_serialized_on_wire``) and read the
per-class facts from a plain dict. Only for the betterproto version pinned in pyproject.toml:
another version may have changed what these methods must do (`installed()` tells, and a unit test
fails until this module is checked against the new one).
"""

from __future__ import annotations

from typing import Any

import betterproto
from betterproto import PLACEHOLDER, Message

PINNED_VERSION = "2.0.0b7"

# betterproto's own, for the test that compares the two.
ORIGINAL_METHODS = {
    name: Message.__dict__[name]
    for name in (
        "_Message__raw_get",
        "__post_init__",
        "__getattribute__",
        "__setattr__",
        "_get_field_default",
    )
}

_getattribute = object.__getattribute__
_setattr = object.__setattr__


class _ClassFacts:
    """What the replaced methods need to know of one message class, read once."""

    __slots__ = ("default_gen", "fieldless", "fields", "oneof_field_names", "oneof_group_by_field")

    def __init__(self, cls: type[Message]) -> None:
        meta = cls._betterproto  # type: ignore[arg-type]  # a class property of the message class
        self.oneof_group_by_field: dict[str, str] = meta.oneof_group_by_field
        self.oneof_field_names: dict[str, tuple[str, ...]] = {
            group: tuple(f.name for f in fields) for group, fields in meta.oneof_field_by_group.items()
        }
        self.default_gen: dict[str, Any] = meta.default_gen
        self.fields = tuple((name, m.group, m.optional) for name, m in meta.meta_by_field_name.items())
        self.fieldless = not self.fields


_FACTS: dict[type, _ClassFacts] = {}


def _facts(cls: type) -> _ClassFacts:
    facts = _FACTS.get(cls)
    if facts is None:
        # Two threads may both compute it: the same facts either way.
        facts = _FACTS[cls] = _ClassFacts(cls)
    return facts


def _post_init(self: Message) -> None:
    # As betterproto's: a message built with any field given is "on the wire"; note each
    # one-of group's chosen field.
    on_wire = False
    group_current: dict[str, str | None] = {}
    state = _getattribute(self, "__dict__")
    for name, group, optional in _facts(type(self)).fields:
        if group:
            group_current.setdefault(group)
        value = state[name]
        if value is not PLACEHOLDER and not (optional and value is None):
            on_wire = True
            if group:
                group_current[group] = name
    state["_serialized_on_wire"] = on_wire
    state["_unknown_fields"] = b""
    state["_group_current"] = group_current


def _get_attribute(self: Message, name: str) -> Any:
    value = _getattribute(self, name)
    if name[0] == "_":  # never a field (`test_no_field_name_starts_with_an_underscore`)
        return value
    facts = _FACTS.get(type(self)) or _facts(type(self))
    if facts.oneof_group_by_field:
        group = facts.oneof_group_by_field.get(name)
        if group is not None:
            group_current = _getattribute(self, "__dict__").get("_group_current")
            if group_current is not None and group_current[group] != name:
                raise AttributeError(
                    f"{group!r} is set to {group_current[group]!r}, not {name!r}", name=name, obj=self
                )
    if value is PLACEHOLDER:  # an unset field gets its default on first read
        value = facts.default_gen[name]()
        _setattr(self, name, value)
    return value


_FIELDLESS: dict[type, bool] = {}  # by the type of a value set: is it a message class with no field


def _fieldless(cls: type) -> bool:
    # issubclass on an ABC costs microseconds: once per type.
    fieldless = _FIELDLESS[cls] = issubclass(cls, Message) and _facts(cls).fieldless
    return fieldless


def _set_attribute(self: Message, name: str, value: Any) -> None:
    fieldless = _FIELDLESS.get(type(value))
    if fieldless is None:
        fieldless = _fieldless(type(value))
    if fieldless:  # an empty message set as a field is sent (betterproto's rule)
        _getattribute(value, "__dict__")["_serialized_on_wire"] = True
    state = _getattribute(self, "__dict__")
    if name != "_serialized_on_wire":
        state["_serialized_on_wire"] = True
    group_current = state.get("_group_current")
    if group_current is not None:  # None while the dataclass __init__ runs
        facts = _FACTS.get(type(self)) or _facts(type(self))
        group = facts.oneof_group_by_field.get(name)
        if group is not None:
            for other in facts.oneof_field_names[group]:
                if other == name:
                    group_current[group] = name
                else:
                    _setattr(self, other, PLACEHOLDER)
    _setattr(self, name, value)


def _get_field_default(self: Message, field_name: str) -> Any:
    # betterproto silences DeprecationWarnings here; no aioray message has a deprecated field.
    return (_FACTS.get(type(self)) or _facts(type(self))).default_gen[field_name]()


def installed() -> bool:
    return Message.__getattribute__ is _get_attribute


def install() -> None:
    """Replaces the methods (once per process; a no-op for another betterproto version)."""
    if installed() or getattr(betterproto, "__version__", None) != PINNED_VERSION:
        return
    for name, method in REPLACEMENTS.items():
        setattr(Message, name, method)


REPLACEMENTS = {
    # betterproto's own, `super().__getattribute__(name)` in Python, called by the Rust codec for
    # every field it writes: object's is the same, in C.
    "_Message__raw_get": _getattribute,
    "__post_init__": _post_init,
    "__getattribute__": _get_attribute,
    "__setattr__": _set_attribute,
    "_get_field_default": _get_field_default,
}


__all__ = ["ORIGINAL_METHODS", "PINNED_VERSION", "REPLACEMENTS", "install", "installed"]
