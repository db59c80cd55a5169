"""The wire form of a resolved runtime_env (`RuntimeEnvInfo`): one function for every process that
sends one, since a raylet shares a set-up between requests whose hashes are equal."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from aioray._proto.aioray import v1 as pb


def canonical(env: Mapping[str, Any]) -> str:
    return json.dumps(env, sort_keys=True, separators=(",", ":"))


def info_of(env: Mapping[str, Any]) -> pb.RuntimeEnvInfo:
    """The wire form of a resolved environment; an empty one for none."""
    if not env:
        return pb.RuntimeEnvInfo()
    serialized = canonical(env)
    return pb.RuntimeEnvInfo(hash=hashlib.sha256(serialized.encode()).hexdigest()[:32], serialized=serialized)


__all__ = ["canonical", "info_of"]
