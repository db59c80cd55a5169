"""The object directory: which nodes hold a copy of an object.

Raylets record the secondary copies they pull; when an owner frees an object,
the raylet holding its primary copy looks up the others here and frees them.
"""

from __future__ import annotations

from aioray._proto.aioray import v1 as pb


class ObjectDirectory(pb.ObjectDirectoryGcsServiceBase):
    def __init__(self) -> None:
        self.locations: dict[bytes, set[bytes]] = {}

    async def add_object_locations(self, object_location_update: pb.ObjectLocationUpdate) -> pb.Empty:
        node = object_location_update.node_id
        for oid in object_location_update.object_ids:
            self.locations.setdefault(oid, set()).add(node)
        return pb.Empty()

    async def remove_object_locations(self, object_location_update: pb.ObjectLocationUpdate) -> pb.Empty:
        node = object_location_update.node_id
        for oid in object_location_update.object_ids:
            nodes = self.locations.get(oid)
            if nodes is not None:
                nodes.discard(node)
                if not nodes:
                    del self.locations[oid]
        return pb.Empty()

    async def get_object_locations(self, object_ids: pb.ObjectIds) -> pb.ObjectLocations:
        return pb.ObjectLocations(
            locations=[
                pb.ObjectLocation(object_id=oid, node_ids=sorted(self.locations.get(oid, ())))
                for oid in object_ids.ids
            ]
        )
