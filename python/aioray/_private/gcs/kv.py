"""The GCS key-value store, which is also the function table (key ``fn:<function id>``)."""

from __future__ import annotations

from aioray._proto.aioray import v1 as pb


class InternalKv(pb.InternalKvGcsServiceBase):
    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}

    async def kv_put(self, kv_put_request: pb.KvPutRequest) -> pb.KvPutReply:
        key = kv_put_request.key
        if key in self.kv and not kv_put_request.overwrite:
            return pb.KvPutReply(added=False)
        self.kv[key] = kv_put_request.value
        return pb.KvPutReply(added=True)

    async def kv_get(self, kv_key: pb.KvKey) -> pb.KvGetReply:
        value = self.kv.get(kv_key.key)
        return pb.KvGetReply(found=value is not None, value=value or b"")

    async def kv_del(self, kv_key: pb.KvKey) -> pb.KvDelReply:
        return pb.KvDelReply(deleted=self.kv.pop(kv_key.key, None) is not None)

    async def kv_keys(self, kv_key: pb.KvKey) -> pb.KvKeysReply:
        return pb.KvKeysReply(keys=[k for k in self.kv if k.startswith(kv_key.key)])
