"""Placement groups, as ``ray.util.placement_group``: resources reserved together across nodes.

``placement_group(bundles, strategy)`` asks the GCS to reserve each bundle (a resource dict) on
some node, as the strategy says (``PACK``, ``SPREAD``, ``STRICT_PACK``, ``STRICT_SPREAD``), and
returns at once; ``pg.ready()`` (an ObjectRef) or ``pg.wait(timeout)`` tell when it is placed.
Tasks and actors run in it with
``scheduling_strategy=PlacementGroupSchedulingStrategy(pg, bundle_index)``, using the bundle's
resources instead of the node's. A group stays pending while it does not fit, and is placed as
soon as nodes join or resources free up; bundles on a node that dies are placed again elsewhere.
``remove_placement_group`` releases it and kills the tasks and actors running in it; a group that
is not ``lifetime="detached"`` is removed when its job ends.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aioray._private import api
from aioray._private.actor import DEFAULT_NAMESPACE
from aioray._private.common import proto_enums, rpc
from aioray._private.common.resources import ResourceSet
from aioray._private.core_worker.object_ref import ObjectRef, current_worker, global_worker
from aioray._private.placement import parse_label_selector
from aioray._private.strategies import PlacementGroupSchedulingStrategy
from aioray._proto.aioray import v1 as pb

__all__ = [
    "PlacementGroup",
    "PlacementGroupID",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]

_T = TypeVar("_T")
VALID_PLACEMENT_GROUP_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_STRATEGIES = {
    "PACK": proto_enums.PG_PACK,
    "SPREAD": proto_enums.PG_SPREAD,
    "STRICT_PACK": proto_enums.PG_STRICT_PACK,
    "STRICT_SPREAD": proto_enums.PG_STRICT_SPREAD,
}
_STRATEGY_NAMES = {int(v): k for k, v in _STRATEGIES.items()}
_STATE_NAMES = {
    int(proto_enums.PG_PENDING): "PENDING",
    int(proto_enums.PG_CREATED): "CREATED",
    int(proto_enums.PG_REMOVED): "REMOVED",
    int(proto_enums.PG_RESCHEDULING): "RESCHEDULING",
}
CALL_TIMEOUT_S = 30.0
# Removal waits for a placement round in flight and for every raylet holding bundles to cancel.
REMOVE_TIMEOUT_S = 60.0


class PlacementGroupID:
    """A placement group's id (18 bytes, as Ray's)."""

    SIZE = 18

    __slots__ = ("_id",)

    def __init__(self, id: bytes) -> None:
        if not isinstance(id, bytes) or len(id) != self.SIZE:
            raise ValueError(f"a PlacementGroupID is {self.SIZE} bytes, got {id!r}")
        self._id = id

    @classmethod
    def from_random(cls) -> PlacementGroupID:
        return cls(os.urandom(cls.SIZE))

    @classmethod
    def from_hex(cls, hex_id: str) -> PlacementGroupID:
        return cls(bytes.fromhex(hex_id))

    @classmethod
    def nil(cls) -> PlacementGroupID:
        return cls(b"\xff" * cls.SIZE)

    @classmethod
    def size(cls) -> int:
        return cls.SIZE

    def is_nil(self) -> bool:
        return self._id == b"\xff" * self.SIZE

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self.hex()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return PlacementGroupID, (self._id,)


GcsCall = Callable[[pb.PlacementGroupGcsServiceStub], Coroutine[Any, Any, _T]]


def _gcs_call(call: GcsCall[_T], timeout: float, group: bytes | None = None) -> _T:
    """Runs one call of the GCS's placement group service from a blocking API call, once the
    changes this process sent about `group` (or, without one, about any group) ended; see
    `core_worker.ordered_calls`."""
    core = global_worker()

    async def run() -> _T:
        if group is None:
            await core.group_changes.all_settled()
        else:
            await core.group_changes.settled(group)
        return await call(core.gcs(pb.PlacementGroupGcsServiceStub, reconnect_timeout_s=timeout))

    return core.run_sync(run(), timeout=timeout + 5)


def _send_gcs_call(call: GcsCall[Any], timeout: float, group: bytes, what: str) -> None:
    """Sends a change of `group` (its creation, its removal) after the ones before it, without
    waiting for it."""
    core = global_worker()

    async def run() -> None:
        await call(core.gcs(pb.PlacementGroupGcsServiceStub, reconnect_timeout_s=timeout))

    core.group_changes.send(group, run, what)


def _bundle_reservation_check(placement_group: PlacementGroup) -> PlacementGroup:
    """Runs in bundle 0 of a group, asking for no resources: it can only run once the group is placed."""
    return placement_group


_ready_task = api.remote(num_cpus=0, max_retries=0)(_bundle_reservation_check)


class PlacementGroup:
    """A handle to a placement group: picklable, so tasks and actors can be given it."""

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict[str, float]] | None = None) -> None:
        self.id = id
        self.bundle_cache = bundle_cache

    @staticmethod
    def empty() -> PlacementGroup:
        return PlacementGroup(PlacementGroupID.nil())

    @property
    def is_empty(self) -> bool:
        return self.id.is_nil()

    def ready(self) -> ObjectRef[PlacementGroup]:
        """An ObjectRef that resolves (to this group) once the group is placed.

        It is a task with no resources in bundle 0: if the group is removed first, getting it
        raises (TaskUnschedulableError)."""
        if self.is_empty:
            return api.put(self)
        strategy = PlacementGroupSchedulingStrategy(self, placement_group_bundle_index=0)
        ref: ObjectRef[PlacementGroup] = _ready_task.options(scheduling_strategy=strategy).remote(self)
        return ref

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Whether the group is placed within `timeout_seconds` (False if not, or if it was removed)."""
        if not isinstance(timeout_seconds, int | float) or timeout_seconds < 0:
            raise ValueError(f"timeout_seconds must be a non-negative number, got {timeout_seconds!r}")
        core = global_worker()
        group = self.id.binary()

        async def wait() -> bool:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_seconds
            if core.group_changes.pending(group):
                try:  # the creation this process sent, within the same timeout
                    await asyncio.wait_for(core.group_changes.settled(group), timeout_seconds)
                except TimeoutError:
                    return False
            else:
                await core.group_changes.settled(group)  # raises a failed creation's error
            remaining = max(0.0, deadline - loop.time())
            request = pb.WaitPlacementGroupRequest(placement_group_id=group, timeout_s=remaining)
            gcs = core.gcs(pb.PlacementGroupGcsServiceStub, reconnect_timeout_s=remaining + CALL_TIMEOUT_S)
            info = await gcs.wait_placement_group_ready(request, timeout=remaining + CALL_TIMEOUT_S)
            return info.state == proto_enums.PG_CREATED

        return core.run_sync(wait(), timeout=timeout_seconds + CALL_TIMEOUT_S + 5)

    def _wait_for_own_changes(self) -> None:
        """Before this group is used to place work or handed to another process: the changes
        this process sent about it ended (a failed creation's error is raised here)."""
        core = current_worker()
        group = self.id.binary()
        if core is not None and core.group_changes.pending(group) and not core.runtime.in_loop_thread():
            core.run_sync(core.group_changes.settled(group), timeout=CALL_TIMEOUT_S + 5)

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        """The bundles (resource dicts), in order."""
        self._fill_bundle_cache_if_needed()
        assert self.bundle_cache is not None
        return self.bundle_cache

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def _fill_bundle_cache_if_needed(self) -> None:
        if not self.bundle_cache:
            info = _get_info(self.id)
            if info is None:
                raise ValueError(f"placement group {self.id.hex()} does not exist")
            self.bundle_cache = [dict(b.resources.amounts) for b in info.bundles]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and self.id == other.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()}, bundles={self.bundle_cache})"

    def __getstate__(self) -> dict[str, Any]:
        # Another process given the handle may ask the GCS about it at once: it exists by then.
        self._wait_for_own_changes()
        return {"id": self.id, "bundle_cache": self.bundle_cache}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.id = state["id"]
        self.bundle_cache = state["bundle_cache"]


def _get_info(pg_id: PlacementGroupID) -> pb.PlacementGroupInfo | None:
    request = pb.GetPlacementGroupRequest(placement_group_id=pg_id.binary())
    try:
        return _gcs_call(
            lambda gcs: gcs.get_placement_group(request, timeout=CALL_TIMEOUT_S),
            CALL_TIMEOUT_S,
            pg_id.binary(),
        )
    except rpc.GRPCError as e:
        if e.status == rpc.Status.NOT_FOUND:
            return None
        raise


def _validate_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, list):
        raise ValueError(f"Placement group bundles must be a list, got {type(bundles)}.")
    if not bundles:
        raise ValueError(
            "Bundles must be a non-empty list of resource dictionaries. For example: "
            '`[{"CPU": 1.0}, {"GPU": 1.0}]`. Got empty list instead.'
        )
    out = []
    for bundle in bundles:
        if (
            not isinstance(bundle, dict)
            or not all(isinstance(k, str) for k in bundle)
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bundle.values())
        ):
            raise ValueError(
                'Bundles must be a non-empty list of resource dictionaries. For example: `[{"CPU": 1.0}, {"GPU": 1.0}]`.'
            )
        negative = [k for k, v in bundle.items() if v < 0]
        if negative:
            raise ValueError(
                f"Bundle resources must not be negative, got {negative[0]!r}: {bundle[negative[0]]}"
            )
        # ResourceSet keeps 1/10000 of a unit: what rounds to nothing is nothing, as the GCS sees it.
        if not bundle or not ResourceSet(bundle).to_dict():
            raise ValueError(
                f"Bundles cannot be an empty dictionary or resources with only 0 values. Bundles: {bundles}"
            )
        if "object_store_memory" in bundle:
            # Ray only warns (it reserves nothing); no resource is silently ignored here.
            raise ValueError(
                "object_store_memory cannot be reserved in a bundle (Ray deprecated it: it reserved "
                "nothing); the object store spills to disk when it fills up"
            )
        out.append({k: float(v) for k, v in bundle.items()})
    return out


def placement_group(
    bundles: list[dict[str, float]],
    strategy: str | None = "PACK",
    name: str = "",
    lifetime: str | None = None,
    _soft_target_node_id: str | None = None,
    bundle_label_selector: list[dict[str, str]] | None = None,
    topology_strategy: dict[str, str] | None = None,
) -> PlacementGroup:
    """Asks the GCS to reserve `bundles` as `strategy` says and returns the group at once.

    ``strategy``: ``"PACK"`` (as few nodes as possible), ``"SPREAD"`` (distinct nodes as far as
    possible), ``"STRICT_PACK"`` (one node) or ``"STRICT_SPREAD"`` (a node per bundle). ``name``
    makes it findable with ``get_placement_group`` in this namespace. ``lifetime="detached"``
    keeps it after its job ends. ``bundle_label_selector``: per bundle, the node labels it needs
    (as ``label_selector``)."""
    if topology_strategy is not None:
        raise ValueError("topology_strategy is not supported by aioray; use strategy=")
    if _soft_target_node_id is not None:
        raise ValueError("_soft_target_node_id is not supported by aioray")
    if strategy is None:
        strategy = "PACK"
    if strategy not in _STRATEGIES:
        raise ValueError(
            f"Invalid placement group strategy {strategy}. Supported strategies are: "
            f"{set(VALID_PLACEMENT_GROUP_STRATEGIES)}."
        )
    specs = _validate_bundles(bundles)
    selectors: list[pb.LabelSelector] = []
    if bundle_label_selector is not None:
        if not isinstance(bundle_label_selector, list):
            raise ValueError(
                f"Placement group bundle_label_selector must be a list, got {type(bundle_label_selector)}."
            )
        if bundle_label_selector and len(bundle_label_selector) != len(specs):
            raise ValueError(
                f"Invalid bundle label selector {bundle_label_selector}. The length of "
                "`bundle_label_selector` should equal the length of `bundles`."
            )
        selectors = [pb.LabelSelector(constraints=parse_label_selector(s)) for s in bundle_label_selector]
    if lifetime not in (None, "detached"):
        raise ValueError(
            f"Placement group `lifetime` argument must be either `None` or 'detached'. Got {lifetime}."
        )
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}")
    core = global_worker()
    pg_id = PlacementGroupID.from_random()
    request = pb.CreatePlacementGroupRequest(
        placement_group_id=pg_id.binary(),
        name=name,
        namespace=core.namespace or DEFAULT_NAMESPACE,
        strategy=_STRATEGIES[strategy],
        bundles=[pb.ResourceMap(amounts=b) for b in specs],
        detached=lifetime == "detached",
        job_id=core.job_id,
        creator_address=core.address,
        bundle_label_selector=selectors,
    )

    def create(gcs: pb.PlacementGroupGcsServiceStub) -> Coroutine[Any, Any, pb.Empty]:
        return gcs.create_placement_group(request, timeout=CALL_TIMEOUT_S)

    if not name:
        # What the GCS checks of it was checked here: not waited for.
        _send_gcs_call(create, CALL_TIMEOUT_S, pg_id.binary(), f"creating placement group {pg_id.hex()}")
        return PlacementGroup(pg_id, bundle_cache=specs)
    try:  # after every change under way: a group of this name being removed frees the name first
        _gcs_call(create, CALL_TIMEOUT_S)
    except rpc.GRPCError as e:
        if e.status in (rpc.Status.ALREADY_EXISTS, rpc.Status.INVALID_ARGUMENT):
            raise ValueError(e.message) from None
        raise
    return PlacementGroup(pg_id, bundle_cache=specs)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Asks the GCS to release the group's bundles (the tasks and actors running in it are
    killed) and returns without waiting for its answer; this process's later calls about the
    group see the removal (``pg.wait()`` is then False, the table says REMOVED). Removing a group
    twice, or one that is still pending, is fine."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group takes a PlacementGroup, got {placement_group!r}")
    request = pb.PlacementGroupId(placement_group_id=placement_group.id.binary())
    core = global_worker()

    async def remove(gcs: pb.PlacementGroupGcsServiceStub) -> None:
        await gcs.remove_placement_group(request, timeout=REMOVE_TIMEOUT_S)
        core.submitter.release_group_leases(request.placement_group_id)

    _send_gcs_call(
        remove,
        REMOVE_TIMEOUT_S,
        placement_group.id.binary(),
        f"removing placement group {placement_group.id.hex()}",
    )


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group named so in this job's namespace; ValueError if there is none."""
    if not placement_group_name:
        raise ValueError("Please supply a non-empty value to get_placement_group")
    core = global_worker()
    request = pb.GetPlacementGroupRequest(
        name=placement_group_name, namespace=core.namespace or DEFAULT_NAMESPACE
    )
    try:
        info = _gcs_call(lambda gcs: gcs.get_placement_group(request, timeout=CALL_TIMEOUT_S), CALL_TIMEOUT_S)
    except rpc.GRPCError as e:
        if e.status == rpc.Status.NOT_FOUND:
            raise ValueError(f"Failed to look up placement group with name: {placement_group_name}") from None
        raise
    return PlacementGroup(
        PlacementGroupID(info.placement_group_id), [dict(b.resources.amounts) for b in info.bundles]
    )


def _as_dict(info: pb.PlacementGroupInfo) -> dict[str, Any]:
    stats = info.stats
    return {
        "placement_group_id": info.placement_group_id.hex(),
        "name": info.name,
        "bundles": {b.bundle_index: dict(b.resources.amounts) for b in info.bundles},
        "bundles_to_node_id": {b.bundle_index: b.node_id.hex() for b in info.bundles},
        "strategy": _STRATEGY_NAMES[int(info.strategy)],
        "state": _STATE_NAMES[int(info.state)],
        "stats": {
            "end_to_end_creation_latency_ms": stats.creation_latency_s * 1000.0,
            "scheduling_latency_ms": stats.scheduling_latency_s * 1000.0,
            "scheduling_attempt": stats.scheduling_attempts,
            "highest_retry_delay_ms": stats.highest_retry_delay_s * 1000.0,
            "scheduling_state": stats.scheduling_state or "QUEUED",
        },
        # Not in Ray: why a group is still pending (no node fits it, resources busy, a node died).
        "message": info.message,
    }


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """The state of one group (``{}`` if unknown), or of every group by hex id, in Ray's shape."""
    if placement_group is not None:
        info = _get_info(placement_group.id)
        return {} if info is None else _as_dict(info)
    groups = _gcs_call(
        lambda gcs: gcs.list_placement_groups(pb.Empty(), timeout=CALL_TIMEOUT_S), CALL_TIMEOUT_S
    )
    return {g.placement_group_id.hex(): _as_dict(g) for g in groups.groups}


def get_current_placement_group() -> PlacementGroup | None:
    """The group the calling task or actor runs in; None in a driver or outside any group."""
    current = global_worker().current_placement_group()
    if current is None:
        return None
    return PlacementGroup(PlacementGroupID(current[0]))
