"""A raylet's view of the cluster follows node joins and deaths and the totals placement groups change."""

from __future__ import annotations

from aioray._private.common import rpc
from aioray._private.common.pubsub import NODE_CHANNEL, NODE_TOTALS_CHANNEL
from aioray._private.raylet.cluster_view import ClusterView
from aioray._proto.aioray import v1 as pb


def node(node_id: bytes, total: dict[str, float], alive: bool = True) -> pb.NodeInfo:
    amounts = pb.ResourceMap(amounts=total)
    return pb.NodeInfo(node_id=node_id, address="127.0.0.1:1", alive=alive, total=amounts, available=amounts)


def test_totals_changed_by_bundles_reach_the_view_on_their_own_channel() -> None:
    view = ClusterView(rpc.ChannelPool("t"), "127.0.0.1:1")
    view.apply(pb.PubMessage(channel=NODE_CHANNEL, data=bytes(node(b"n1", {"CPU": 2.0}))))
    assert b"n1" in view.live
    # A committed bundle adds its group's resources to the node's totals.
    grown = node(b"n1", {"CPU": 2.0, "bundle_group_1_ab": 1.0})
    view.apply(pb.PubMessage(channel=NODE_TOTALS_CHANNEL, data=bytes(grown)))
    [only] = view.nodes
    assert dict(only.total.amounts) == {"CPU": 2.0, "bundle_group_1_ab": 1.0}
    view.apply(pb.PubMessage(channel=NODE_CHANNEL, data=bytes(node(b"n1", {"CPU": 2.0}, alive=False))))
    assert b"n1" not in view.live
