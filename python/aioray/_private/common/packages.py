"""Packages in the GCS key-value store: how they are written (the raylets' runtime env agent reads them;
the driver and the job manager upload them).

A package of URI ``U`` is stored as chunks ``runtime_env:pkg:U#0``, ``#1``... of at most
`CHUNK_BYTES` each (every RPC and storage write stays small, whatever the package's size), then a
manifest ``runtime_env:pkg:U`` = ``{"size", "sha256", "chunks"}``. The manifest goes last, so a
package whose manifest exists is complete; the reader checks the digest. Concurrent uploads of one
URI write the same bytes (the name is the content's hash), so they need no coordination.
"""

from __future__ import annotations

import hashlib
import json

from aioray._proto.aioray import v1 as pb

KEY_PREFIX = "runtime_env:pkg:"
CHUNK_BYTES = 4 << 20
KV_TIMEOUT_S = 60.0


def manifest_key(uri: str) -> str:
    return KEY_PREFIX + uri


def chunk_key(uri: str, index: int) -> str:
    return f"{KEY_PREFIX}{uri}#{index}"


def manifest(data: bytes) -> bytes:
    chunks = max(1, -(-len(data) // CHUNK_BYTES))
    return json.dumps(
        {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "chunks": chunks}
    ).encode()


async def exists(kv: pb.InternalKvGcsServiceStub, uri: str) -> bool:
    reply = await kv.kv_get(pb.KvKey(key=manifest_key(uri)), timeout=KV_TIMEOUT_S)
    return bool(reply.found)


async def upload(kv: pb.InternalKvGcsServiceStub, uri: str, data: bytes) -> None:
    """Stores `data` under `uri` unless a complete package is there already: a package never changes
    once written (other bytes sent under its name must not overwrite the chunks its readers check)."""
    if await exists(kv, uri):
        return
    meta = manifest(data)
    for i in range(json.loads(meta)["chunks"]):
        chunk = data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]
        await kv.kv_put(
            pb.KvPutRequest(key=chunk_key(uri, i), value=chunk, overwrite=True), timeout=KV_TIMEOUT_S
        )
    await kv.kv_put(pb.KvPutRequest(key=manifest_key(uri), value=meta, overwrite=False), timeout=KV_TIMEOUT_S)


__all__ = ["CHUNK_BYTES", "KEY_PREFIX", "chunk_key", "exists", "manifest", "manifest_key", "upload"]
