"""Placement-group bundles as resources, as Ray names them.

A committed bundle adds, on its node, each of its resources twice: once for the bundle
(``CPU_group_<index>_<pg hex>``) and once for the group as a whole (``CPU_group_<pg hex>``), plus
``bundle_group_<index>_<pg hex>`` / ``bundle_group_<pg hex>`` (1000 each per bundle). A task in a
group asks for the group's (or one bundle's) names instead of the plain ones, and for 0.001 of the
bundle marker, so that also a task that needs no resources lands on a node holding the bundle.
Scheduling then needs nothing else: spillback, queueing and feasibility work on those names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aioray._private.common.resources import ResourceSet

BUNDLE_MARKER = "bundle"
BUNDLE_MARKER_TOTAL = 1000.0
BUNDLE_MARKER_PER_TASK = 0.001


def group_name(resource: str, pg_id: bytes, index: int = -1) -> str:
    """The name under which `resource` of a group (``index`` -1) or of one bundle appears."""
    if index < 0:
        return f"{resource}_group_{pg_id.hex()}"
    return f"{resource}_group_{index}_{pg_id.hex()}"


def committed_resources(pg_id: bytes, index: int, bundle: Mapping[str, float]) -> dict[str, float]:
    """What a committed bundle adds to its node's resources."""
    added: dict[str, float] = {}
    for name, amount in {**bundle, BUNDLE_MARKER: BUNDLE_MARKER_TOTAL}.items():
        added[group_name(name, pg_id, index)] = amount
        added[group_name(name, pg_id)] = amount
    return added


def shape_in_bundle(shape: ResourceSet, pg_id: bytes, index: int) -> ResourceSet:
    """The shape a task or actor asks for to run in bundle `index` of a group (-1: any bundle)."""
    amounts = {group_name(name, pg_id, index): amount for name, amount in shape.to_dict().items()}
    amounts[group_name(BUNDLE_MARKER, pg_id, index)] = BUNDLE_MARKER_PER_TASK
    return ResourceSet(amounts)


def is_group_resource(name: str, pg_id: bytes) -> bool:
    return name.endswith("_" + pg_id.hex()) and "_group_" in name


def group_of(names: Iterable[str]) -> bytes | None:
    """The placement group whose bundle a shape asks for (from its bundle marker), if any."""
    prefix = BUNDLE_MARKER + "_group_"
    for name in names:
        if name.startswith(prefix):
            return bytes.fromhex(name.rpartition("_")[2])
    return None


__all__ = [
    "BUNDLE_MARKER",
    "committed_resources",
    "group_name",
    "group_of",
    "is_group_resource",
    "shape_in_bundle",
]
