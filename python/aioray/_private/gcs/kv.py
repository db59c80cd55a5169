"""The GCS key-value store, which is also the function table (key ``fn:<function id>``).

Every change is in the storage before the caller hears back: a restarted GCS
still has every function a worker may need to load."""

from __future__ import annotations

from aioray._private.gcs.storage import Tables
from aioray._proto.aioray import v1 as pb

TABLE = "kv"


class InternalKv(pb.InternalKvGcsServiceBase):
    def __init__(self, tables: Tables | None = None) -> None:
        self.kv: dict[str, bytes] = {}
        self._tables = tables if tables is not None else Tables()

    async def recover(self) -> int:
        self.kv = {k.decode(): v for k, v in (await self._tables.load(TABLE)).items()}
        return len(self.kv)

    async def kv_put(self, kv_put_request: pb.KvPutRequest) -> pb.KvPutReply:
        key = kv_put_request.key
        if key in self.kv and not kv_put_request.overwrite:
            return pb.KvPutReply(added=False)
        self.kv[key] = kv_put_request.value
        self._tables.put(TABLE, key.encode(), kv_put_request.value)
        await self._tables.flush()
        return pb.KvPutReply(added=True)

    async def kv_get(self, kv_key: pb.KvKey) -> pb.KvGetReply:
        value = self.kv.get(kv_key.key)
        return pb.KvGetReply(found=value is not None, value=value or b"")

    async def kv_del(self, kv_key: pb.KvKey) -> pb.KvDelReply:
        deleted = self.kv.pop(kv_key.key, None) is not None
        if deleted:
            self._tables.delete(TABLE, kv_key.key.encode())
            await self._tables.flush()
        return pb.KvDelReply(deleted=deleted)

    async def kv_keys(self, kv_key: pb.KvKey) -> pb.KvKeysReply:
        return pb.KvKeysReply(keys=[k for k in self.kv if k.startswith(kv_key.key)])
