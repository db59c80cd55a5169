"""What a process knows of its objects, for the state API's ``list_objects`` and ``aioray memory``.

`GetObjectsInfo` answers ``pickle([row...])``: one row per object id in this process's ownership
table, owned or borrowed, with the columns of Ray's ``ObjectState`` and aioray's own:

- ``object_id``, ``object_size`` (bytes, -1 while unknown), ``task_status`` and
  ``attempt_number`` of the task that makes it (as the owner knows it), ``reference_type`` (Ray's
  names: the strongest reason this process keeps it; BORROWED, aioray's own, for an owned object
  that only other processes hold), ``call_site`` ("disabled": not recorded),
  ``type`` (DRIVER or WORKER), ``pid``, ``ip``;
- ``owner_address``, ``is_owner``, ``node_id`` (the store holding the primary copy; None inline
  or unknown), ``storage`` (INLINE, STORE, or PENDING while it is being made; the client tells
  pinned copies from spilled ones with the raylets), ``local_refs``, ``submitted_refs``,
  ``contained_in`` and ``borrowers``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from aioray._private.common.ids import TASK_ID_LEN
from aioray._private.core_worker.lease_pool import PendingTask
from aioray._private.core_worker.ownership import Entry


def reference_type(oid: bytes, e: Entry, actor_lifetimes: Collection[bytes]) -> str:
    if oid in actor_lifetimes:
        return "ACTOR_HANDLE"
    if e.local:
        return "LOCAL_REFERENCE"
    if e.submitted:
        return "USED_BY_PENDING_TASK"
    if e.contained:
        return "CAPTURED_IN_OBJECT"
    if e.borrowers:
        return "BORROWED"
    return "UNKNOWN_STATUS"


def task_status(oid: bytes, e: Entry, pending: Mapping[bytes, PendingTask]) -> tuple[str, int]:
    """(state, attempt number counted from 1) of the task making `oid`, as this owner knows it."""
    p = pending.get(oid[:TASK_ID_LEN]) if e.owned else None
    if p is not None:
        state = "RUNNING" if p.worker is not None else "PENDING_NODE_ASSIGNMENT"
        return state, p.spec.attempt + 1
    if e.value is not None:
        return "FINISHED", 1
    return "NIL", 0


def rows(
    entries: list[tuple[bytes, Entry]],
    pending: Mapping[bytes, PendingTask],
    actor_lifetimes: Collection[bytes],
    process: Mapping[str, Any],
) -> list[dict[str, Any]]:
    out = []
    for oid, e in entries:
        value = e.value
        if value is None:
            size, storage, node = -1, "PENDING", None
        elif value.inline is not None:
            size, storage, node = len(value.inline), "INLINE", None
        else:
            size, storage, node = value.size, "STORE", value.node_id.hex() if value.node_id else None
        state, attempt = task_status(oid, e, pending)
        out.append(
            {
                "object_id": oid.hex(),
                "object_size": size,
                "task_status": state,
                "attempt_number": attempt,
                "reference_type": reference_type(oid, e, actor_lifetimes),
                "call_site": "disabled",
                **process,
                "owner_address": e.owner,
                "is_owner": e.owned,
                "node_id": node,
                "storage": storage,
                "local_refs": e.local,
                "submitted_refs": e.submitted,
                "contained_in": e.contained,
                "borrowers": len(e.borrowers or ()),
            }
        )
    return out


__all__ = ["reference_type", "rows", "task_status"]
