"""The raylet's side of placement groups: the bundles reserved on this node (seed 002, two phases).

The GCS prepares bundles on every node it chose (their resources leave the node's free
resources, so nothing else takes them), then commits them: a committed bundle adds its group
resources (`common.bundles.committed_resources`) to the node's total and free resources, which is
what tasks and actors in the group ask for. Cancelling a bundle (the group was removed, or a
prepare elsewhere failed) gives the set-aside resources back; for a committed one it first kills
the workers leased under the group's resources on this node and turns away queued requests for
them, as Ray does. Every call is idempotent: the GCS may repeat one whose answer it lost.

A lease request for a group that the GCS has not placed yet would look infeasible: it waits here
(`wait_for_group`) until the group is placed, as Ray keeps such work pending; work for a removed
group, or larger than its bundle, is infeasible.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aioray._private.common import bundles, proto_enums, rpc
from aioray._private.common.resources import ResourceSet
from aioray._proto.aioray import v1 as pb

if TYPE_CHECKING:
    from aioray._private.raylet.node_manager import NodeManager

log = logging.getLogger("aioray.raylet")

Key = tuple[bytes, int]  # (placement group id, bundle index)
WAIT_ROUND_S = 30.0  # one WaitPlacementGroupReady call; a group may stay pending much longer
GCS_RETRY_S = 1.0
GCS_GONE: tuple[type[BaseException], ...] = (*rpc.CONNECTION_ERRORS, TimeoutError)


def _clean(resources: ResourceSet) -> ResourceSet:
    """Without the zero entries that subtracting a bundle's names leaves behind."""
    return ResourceSet.from_wire(resources.to_dict())


class BundleTable:
    def __init__(self, node_manager: NodeManager) -> None:
        self._nm = node_manager
        self.prepared: dict[Key, ResourceSet] = {}  # set aside, not usable yet
        self.committed: dict[Key, ResourceSet] = {}  # the bundle's own shape; its group names are live

    @staticmethod
    def _key(bundle: pb.Bundle) -> Key:
        return bundle.placement_group_id, bundle.bundle_index

    # -- the two phases --------------------------------------------------------------------------
    def prepare(self, request: Sequence[pb.Bundle]) -> pb.BundleReply:
        """Sets aside the resources of every bundle of `request`, or of none."""
        nm = self._nm
        new = {
            self._key(b): ResourceSet(b.resources.amounts)
            for b in request
            if self._key(b) not in self.prepared and self._key(b) not in self.committed
        }
        need = ResourceSet()
        for shape in new.values():
            need = need + shape
        if nm.stopping:
            return pb.BundleReply(success=False, message="the raylet is shutting down")
        if not need.fits_in(nm.available):
            return pb.BundleReply(
                success=False,
                message=f"node {nm.node_id.hex()[:12]} has {_clean(nm.available).to_dict()} free, "
                f"the bundles need {need.to_dict()}",
            )
        nm.available = nm.available - need
        self.prepared.update(new)
        nm._resources_changed()
        return pb.BundleReply(success=True)

    def commit(self, request: Sequence[pb.Bundle]) -> pb.BundleReply:
        """Makes prepared bundles usable: their group resources join the node's."""
        nm = self._nm
        keys = [self._key(b) for b in request]
        missing = [k for k in keys if k not in self.prepared and k not in self.committed]
        if missing:
            pg_id, index = missing[0]
            return pb.BundleReply(
                success=False, message=f"bundle {index} of group {pg_id.hex()} was not prepared here"
            )
        for key in keys:
            base = self.prepared.pop(key, None)
            if base is None:
                continue  # committed already: a repeated call
            added = ResourceSet(bundles.committed_resources(key[0], key[1], base.to_dict()))
            nm.total = nm.total + added
            nm.available = nm.available + added
            self.committed[key] = base
        nm.dispatch()
        return pb.BundleReply(success=True)

    def cancel(self, request: Sequence[pb.Bundle]) -> None:
        """Releases prepared or committed bundles; unknown ones are ignored."""
        nm = self._nm
        changed = False
        for b in request:
            key = self._key(b)
            base = self.prepared.pop(key, None)
            if base is not None:
                nm.available = nm.available + base
                changed = True
            base = self.committed.pop(key, None)
            if base is not None:
                self._release_committed(key, base)
                changed = True
        if changed:
            nm.dispatch()

    def _release_committed(self, key: Key, base: ResourceSet) -> None:
        nm = self._nm
        pg_id, index = key
        added = ResourceSet(bundles.committed_resources(pg_id, index, base.to_dict()))
        # Work under the group-wide names may be using this bundle's share: it goes too.
        names = set(added.to_dict())
        why = f"its placement group {pg_id.hex()} was removed"
        # Queued requests first, so that the resources the killed leases free are granted to none.
        for waiter in [w for w in nm.waiting if not names.isdisjoint(w.resources.to_dict())]:
            nm.waiting.remove(waiter)
            if not waiter.future.done():
                # The owner asks again and learns whether the group still exists elsewhere.
                waiter.future.set_result(
                    pb.LeaseReply(status=proto_enums.LEASE_REJECTED, message=f"the bundle is gone: {why}")
                )
        for lease in [ls for ls in nm.leases.values() if not names.isdisjoint(ls.resources.to_dict())]:
            worker = lease.worker
            nm._record(
                worker,
                pb.WorkerFailureCause(
                    kind=pb.WorkerFailureCauseKind(pb.WorkerFailureCauseKind.KILLED),
                    message=f"worker {worker.worker_id.hex()[:12]} was killed: {why}",
                    worker_id=worker.worker_id,
                ),
            )
            nm.leases.pop(lease.lease_id, None)
            nm._release(lease)
            nm.pool.give_back(worker, failed=True)
        nm.total = _clean(nm.total - added)
        nm.available = _clean(nm.available - added + base)

    def bundles(self) -> pb.BundleRequest:
        """Every bundle held here, prepared or committed."""
        out = []
        for key, shape in [*self.prepared.items(), *self.committed.items()]:
            out.append(
                pb.Bundle(
                    placement_group_id=key[0],
                    bundle_index=key[1],
                    resources=pb.ResourceMap(amounts=shape.to_dict()),
                    node_id=self._nm.node_id,
                )
            )
        return pb.BundleRequest(bundles=out)

    # -- work for groups not placed yet ----------------------------------------------------------
    async def wait_for_group(self, shape: ResourceSet) -> str | None:
        """For a lease request: None at once for a shape in no placement group, or one that some
        live node has in total; else waits until the GCS has placed the group (and refreshes the
        view), or says why the work can never run (the group was removed or never existed)."""
        pg_id = bundles.group_of(shape.to_dict())
        nm = self._nm
        if pg_id is None or self._known_feasible(shape):
            return None
        stub = nm.view._channels.gcs_stub(nm._gcs_address, pb.PlacementGroupGcsServiceStub, WAIT_ROUND_S)
        request = pb.WaitPlacementGroupRequest(placement_group_id=pg_id, timeout_s=WAIT_ROUND_S)
        while not nm.stopping:
            try:
                info = await stub.wait_placement_group_ready(request, timeout=WAIT_ROUND_S + 10)
            except rpc.GRPCError as e:
                if e.status == rpc.Status.NOT_FOUND:
                    return f"placement group {pg_id.hex()} does not exist"
                log.info("waiting for placement group %s: %s", pg_id.hex(), e)
                await asyncio.sleep(GCS_RETRY_S)
                continue
            except GCS_GONE as e:
                log.info("waiting for placement group %s: the GCS does not answer (%r)", pg_id.hex(), e)
                await asyncio.sleep(GCS_RETRY_S)
                continue
            if info.state == proto_enums.PG_REMOVED:
                return f"placement group {pg_id.hex()} was removed"
            if info.state == proto_enums.PG_CREATED:
                # Its nodes' new totals reached the GCS before it said CREATED.
                await nm.view.refresh_now()
                if self._known_feasible(shape):
                    return None
                wanted = {k: v for k, v in shape.to_dict().items() if not k.startswith(bundles.BUNDLE_MARKER)}
                return f"{wanted} does not fit in the bundle(s) of placement group {pg_id.hex()} it asks for"
        return None  # shutting down: the request is turned away as usual

    def _known_feasible(self, shape: ResourceSet) -> bool:
        nm = self._nm
        if shape.fits_in(nm.total):
            return True
        # This node's own entry in the view may lag behind its totals (a removal just cancelled here).
        return any(
            n.alive and n.node_id != nm.node_id and shape.fits_in(ResourceSet.from_wire(n.total.amounts))
            for n in nm.view.nodes
        )


__all__ = ["BundleTable"]
