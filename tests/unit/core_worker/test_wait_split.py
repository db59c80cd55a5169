"""`wait`'s split of its refs into (ready, the rest), both in input order (core_worker/reader.py)."""

from __future__ import annotations

from aioray._private.core_worker import reader


def test_split_keeps_input_order_on_both_sides() -> None:
    refs = list(range(10))
    assert reader._split(refs, [0]) == ([0], list(range(1, 10)))  # type: ignore[arg-type]
    assert reader._split(refs, [2, 5, 9]) == ([2, 5, 9], [0, 1, 3, 4, 6, 7, 8])  # type: ignore[arg-type]
    assert reader._split(refs, []) == ([], refs)  # type: ignore[arg-type]
    assert reader._split(refs, list(range(10))) == (refs, [])  # type: ignore[arg-type]
