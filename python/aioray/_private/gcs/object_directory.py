"""The object directory: which nodes hold a copy of an object.

Raylets record the secondary copies they pull; when an owner frees an object,
the raylet holding its primary copy looks up the others here and frees them.

Changes go to the storage behind the reply (written within milliseconds, not
awaited: this is on the path of every pull). A GCS killed in that window
forgets the newest copies, which are then only evicted, not freed at once.
"""

from __future__ import annotations

from aioray._private.gcs.storage import Tables
from aioray._proto.aioray import v1 as pb

TABLE = "objects"


class ObjectDirectory(pb.ObjectDirectoryGcsServiceBase):
    def __init__(self, tables: Tables | None = None) -> None:
        self.locations: dict[bytes, set[bytes]] = {}
        self._tables = tables if tables is not None else Tables()

    async def recover(self) -> int:
        self.locations = {
            oid: set(pb.ObjectLocation().parse(v).node_ids)
            for oid, v in (await self._tables.load(TABLE)).items()
        }
        return len(self.locations)

    def _save(self, oid: bytes) -> None:
        nodes = self.locations.get(oid)
        if nodes:
            self._tables.put(TABLE, oid, bytes(pb.ObjectLocation(node_ids=sorted(nodes))))
        else:
            self._tables.delete(TABLE, oid)

    async def add_object_locations(self, object_location_update: pb.ObjectLocationUpdate) -> pb.Empty:
        node = object_location_update.node_id
        for oid in object_location_update.object_ids:
            nodes = self.locations.setdefault(oid, set())
            if node not in nodes:
                nodes.add(node)
                self._save(oid)
        return pb.Empty()

    async def remove_object_locations(self, object_location_update: pb.ObjectLocationUpdate) -> pb.Empty:
        node = object_location_update.node_id
        for oid in object_location_update.object_ids:
            nodes = self.locations.get(oid)
            if nodes is not None and node in nodes:
                nodes.discard(node)
                if not nodes:
                    del self.locations[oid]
                self._save(oid)
        return pb.Empty()

    async def get_object_locations(self, object_ids: pb.ObjectIds) -> pb.ObjectLocations:
        return pb.ObjectLocations(
            locations=[
                pb.ObjectLocation(object_id=oid, node_ids=sorted(self.locations.get(oid, ())))
                for oid in object_ids.ids
            ]
        )
