"""The job manager's ties to its cluster: GCS stubs, the head's raylet, resource reservations."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aioray._private.common import proto_enums, rpc
from aioray._private.common.config import GCS_RECONNECT_TIMEOUT_S
from aioray._private.common.ids import random_id
from aioray._private.common.node_resources import NODE_ID_LABEL
from aioray._private.dashboard.job.manager import RPC_TIMEOUT_S
from aioray._proto.aioray import v1 as pb

RESERVE_POLL_S = 5.0


class HeadNode:
    """The head's raylet, found through the GCS (the job manager runs beside it)."""

    def __init__(self, channels: rpc.ChannelPool, gcs_address: str) -> None:
        self._channels = channels
        self._nodes = channels.gcs_stub(gcs_address, pb.NodeInfoGcsServiceStub, GCS_RECONNECT_TIMEOUT_S)
        self.node: pb.NodeInfo | None = None

    async def find(self) -> pb.NodeInfo:
        view = await self._nodes.get_cluster_view(pb.Empty(), timeout=RPC_TIMEOUT_S)
        heads = [n for n in view.nodes if n.alive and n.is_head]
        if not heads:
            raise RuntimeError("the cluster has no live head node to run the job on")
        self.node = heads[0]
        return self.node

    async def setup_runtime_env(self, request: pb.RuntimeEnvSetupRequest) -> pb.RuntimeEnvSetup:
        node = await self.find()
        stub = self._channels.stub(node.address, pb.NodeManagerStub)
        # The raylet bounds the set-up itself (the runtime_env's setup_timeout_seconds).
        return await stub.setup_runtime_env(request, timeout=None)


def reserver(
    channels: rpc.ChannelPool, gcs_address: str, head: HeadNode
) -> Callable[[str, dict[str, float]], Awaitable[Callable[[], Awaitable[None]]]]:
    """Holds an entrypoint's resources (entrypoint_num_cpus...) on the head as Ray's supervisor
    actor holds them: a one-bundle placement group there, waited for (the job stays PENDING)."""
    groups = channels.gcs_stub(gcs_address, pb.PlacementGroupGcsServiceStub, GCS_RECONNECT_TIMEOUT_S)

    async def reserve(sid: str, resources: dict[str, float]) -> Callable[[], Awaitable[None]]:
        node = await head.find()
        pg_id = random_id(16)
        await groups.create_placement_group(
            pb.CreatePlacementGroupRequest(
                placement_group_id=pg_id,
                name=f"_job_entrypoint_{sid}",
                namespace="_aioray_jobs",
                strategy=proto_enums.PG_STRICT_PACK,
                bundles=[pb.ResourceMap(amounts=resources)],
                detached=True,  # tied to the job's lifetime by the manager, not to a driver's
                bundle_label_selector=[
                    pb.LabelSelector(
                        constraints=[pb.LabelConstraint(key=NODE_ID_LABEL, values=[node.node_id.hex()])]
                    )
                ],
            ),
            timeout=RPC_TIMEOUT_S,
        )

        async def release() -> None:
            await groups.remove_placement_group(
                pb.PlacementGroupId(placement_group_id=pg_id), timeout=RPC_TIMEOUT_S
            )

        try:
            while True:
                info = await groups.wait_placement_group_ready(
                    pb.WaitPlacementGroupRequest(placement_group_id=pg_id, timeout_s=RESERVE_POLL_S),
                    timeout=RESERVE_POLL_S + RPC_TIMEOUT_S,
                )
                if info.state == proto_enums.PG_CREATED:
                    return release
                if info.state == proto_enums.PG_REMOVED:
                    raise RuntimeError(f"the reservation of {resources} on the head was removed")
        except BaseException:
            await asyncio.shield(release())
            raise

    return reserve


__all__ = ["HeadNode", "reserver"]
