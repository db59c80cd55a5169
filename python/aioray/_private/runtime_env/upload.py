"""The package format and upload, shared with the job manager (which takes uploads over HTTP)."""

from aioray._private.common.packages import (
    CHUNK_BYTES,
    KEY_PREFIX,
    chunk_key,
    exists,
    manifest,
    manifest_key,
    upload,
)

__all__ = ["CHUNK_BYTES", "KEY_PREFIX", "chunk_key", "exists", "manifest", "manifest_key", "upload"]
