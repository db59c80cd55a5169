"""Filters and limits of the state API (Ray's ``list_*`` semantics), shared by the GCS and the client.

A filter is ``(column, predicate, value)`` with predicate ``=`` or ``!=``; several filters all must
hold. As in Ray, column names are case-insensitive, only filterable columns may be named, string
values compare case-insensitively, and a string value given for a bool or int column is converted
(the CLI's ``--filter state=RUNNING`` and ``--filter attempt_number=1`` give strings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Filter = tuple[str, str, Any]
PREDICATES = ("=", "!=")
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000  # Ray's RAY_MAX_LIMIT_FROM_API_SERVER


def check_filters(filters: Sequence[Filter] | None, filterable: Iterable[str], what: str) -> list[Filter]:
    """The filters, validated: each a triple with a known predicate on a filterable column."""
    out: list[Filter] = []
    allowed = set(filterable)
    for f in filters or ():
        if not isinstance(f, tuple | list) or len(f) != 3:
            raise ValueError(f"a filter is (column, predicate, value), got {f!r}")
        column, predicate, value = str(f[0]).lower(), f[1], f[2]
        if predicate not in PREDICATES:
            raise ValueError(
                f"Unsupported filter predicate {predicate} is given. Available predicates: =, !=."
            )
        if column not in allowed:
            raise ValueError(
                f"The given filter column {column} is not supported for {what}. "
                f"Supported filter columns: {sorted(allowed)}"
            )
        out.append((column, predicate, value))
    return out


def _convert(value: Any, like: Any) -> Any:
    if isinstance(value, str) and isinstance(like, bool):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        return value
    if isinstance(value, str) and isinstance(like, int) and not isinstance(like, bool):
        try:
            return int(value)
        except ValueError:
            return value
    if isinstance(value, str) and isinstance(like, float):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def matches(row: Mapping[str, Any], filters: Sequence[Filter]) -> bool:
    for column, predicate, value in filters:
        if column not in row:
            return False
        have = row[column]
        if isinstance(have, str) and isinstance(value, str):
            equal = have.lower() == value.lower()
        else:
            equal = have == _convert(value, have)
        if equal != (predicate == "="):
            return False
    return True


def check_limit(limit: Any) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return min(limit, MAX_LIMIT)


def select(
    rows: Iterable[Mapping[str, Any]], filters: Sequence[Filter], limit: int
) -> tuple[list[Mapping[str, Any]], int]:
    """The first `limit` rows matching every filter, and how many matched in all."""
    kept: list[Mapping[str, Any]] = []
    matched = 0
    for row in rows:
        if matches(row, filters):
            matched += 1
            if len(kept) < limit:
                kept.append(row)
    return kept, matched


def shape(row: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """The row with exactly `columns` (missing ones None), as Ray's ``filter_fields``."""
    return {c: row.get(c) for c in columns}


__all__ = ["DEFAULT_LIMIT", "Filter", "check_filters", "check_limit", "matches", "select", "shape"]
