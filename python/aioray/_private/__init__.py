"""Internals of aioray: no stable API here; import from `aioray` instead."""
