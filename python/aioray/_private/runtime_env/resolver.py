"""From a task's or actor's ``runtime_env`` to the `pb.RuntimeEnvInfo` its leases carry.

Resolving replaces local paths by the content-addressed URIs of their packages, uploading those the
cluster lacks through the GCS key-value store (`upload`), and drops ``excludes`` (applied while
packaging). The resolved environment is merged over the parent's as Ray merges them: a task's own
fields replace its parent's and ``env_vars`` merge key by key, the task's winning. The parent is the
job's environment (``init(runtime_env=...)``) in a driver, and in a worker the environment the
worker was started in, which its raylet hands it in ``AIORAY_RUNTIME_ENV`` (so children inherit).

The result is canonical JSON (sorted keys), hashed: equal environments get equal hashes, which is
what raylets pool workers by. Resolution runs once per process for a given ``runtime_env`` (its
packages are not looked at again), and `RemoteFunction`/`ActorClass` keep its outcome, so a hot
``.remote()`` pays a comparison.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aioray._private.common.runtime_env_info import canonical, info_of
from aioray._private.runtime_env import packaging, upload
from aioray._proto.aioray import v1 as pb

ENV_VAR = "AIORAY_RUNTIME_ENV"  # the resolved environment a worker runs in (set by its raylet)
RESOLVE_TIMEOUT_S = 600.0


def merge(parent: Mapping[str, Any], child: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ray's merge of a child's runtime_env over its parent's: fields replaced, env_vars merged."""
    out = dict(parent)
    if not child:
        return out
    env_vars = {**parent.get("env_vars", {}), **child.get("env_vars", {})}
    out.update({k: v for k, v in child.items() if k != "env_vars"})
    if env_vars:
        out["env_vars"] = env_vars
    return out


class Packager:
    """Packages and uploads local paths: `package(path, ...)` gives its URI."""

    def __init__(self, core: Any) -> None:
        self._core = core

    def _exists(self, uri: str) -> bool:
        async def run() -> bool:
            return await upload.exists(self._core.gcs(pb.InternalKvGcsServiceStub), uri)

        result: bool = self._core.run_sync(run(), RESOLVE_TIMEOUT_S)
        return result

    def _upload(self, uri: str, data: bytes) -> None:
        async def run() -> None:
            await upload.upload(self._core.gcs(pb.InternalKvGcsServiceStub), uri, data)

        self._core.run_sync(run(), RESOLVE_TIMEOUT_S)

    def package(self, path: str, what: str, excludes: list[str], module: bool) -> str:
        local = Path(path)
        if local.is_file() and local.suffix == ".zip" and not module:
            uri, data = packaging.zip_file_package(local, what)
            if not self._exists(uri):
                self._upload(uri, data)
            return uri
        if local.is_file():
            entries = packaging.single_file(local)
        elif local.is_dir():
            entries = packaging.collect(local, excludes, include_parent_dir=module)
        else:
            raise ValueError(f"{what}: {path!r} does not exist any more")
        uri = packaging.uri_for(packaging.content_hash(entries))
        if not self._exists(uri):
            self._upload(uri, packaging.build_zip(entries, what))
        return uri


def resolve(env: Mapping[str, Any], packager: Packager) -> dict[str, Any]:
    """`env` (parsed) with its local paths uploaded and replaced by URIs, and without ``excludes``."""
    out = {k: v for k, v in env.items() if k != "excludes"}
    excludes = list(env.get("excludes") or [])
    working_dir = env.get("working_dir")
    if working_dir is not None and not working_dir.startswith("gcs://"):
        out["working_dir"] = packager.package(
            working_dir,
            f"working_dir {working_dir}",
            [*packaging.default_excludes(), *excludes],
            module=False,
        )
    modules = env.get("py_modules")
    if modules:
        out["py_modules"] = [
            m
            if m.startswith("gcs://")
            else packager.package(m, f"py_modules entry {m}", excludes, module=True)
            for m in modules
        ]
    return out


class Resolver:
    """One per core worker: its parent environment, and what it resolved already."""

    def __init__(self, core: Any, parent: dict[str, Any]) -> None:
        self.parent = parent
        self._packager = Packager(core)
        self._lock = threading.Lock()
        self._resolved: dict[str, dict[str, Any]] = {}
        self._wire: dict[str, bytes] = {}
        self._inherited = bytes(info_of(parent))

    def resolve(self, env: Mapping[str, Any]) -> dict[str, Any]:
        key = canonical(env)
        with self._lock:
            done = self._resolved.get(key)
        if done is None:
            done = resolve(env, self._packager)  # outside the lock: it may upload for a while
            with self._lock:
                self._resolved[key] = done
        return done

    def wire(self, own: Mapping[str, Any] | None) -> bytes:
        """The serialized `pb.RuntimeEnvInfo` of work whose own runtime_env is `own` (None: none)."""
        if not own:
            return self._inherited
        key = canonical(own)
        wire = self._wire.get(key)
        if wire is None:
            wire = bytes(info_of(merge(self.parent, self.resolve(own))))
            self._wire[key] = wire
        return wire


_resolvers: weakref.WeakKeyDictionary[Any, Resolver] = weakref.WeakKeyDictionary()
_resolvers_lock = threading.Lock()


def _worker_parent() -> dict[str, Any]:
    raw = os.environ.get(ENV_VAR, "")
    if not raw:
        return {}
    parent: dict[str, Any] = json.loads(raw)
    return parent


def resolver_for(core: Any) -> Resolver:
    with _resolvers_lock:
        r = _resolvers.get(core)
        if r is None:
            # A driver's parent is set by `set_job_env` at init; a worker's is the one it runs in.
            r = _resolvers[core] = Resolver(core, {} if core.is_driver else _worker_parent())
        return r


def set_job_env(core: Any, env: Mapping[str, Any] | None) -> dict[str, Any]:
    """Resolves the job's runtime_env (uploading its packages) and makes it the driver's default."""
    with _resolvers_lock:
        r = _resolvers[core] = Resolver(core, {})
    resolved = r.resolve(env) if env else {}
    with _resolvers_lock:
        _resolvers[core] = Resolver(core, resolved)
    return resolved


def current_runtime_env(core: Any) -> dict[str, Any]:
    """The resolved environment that work submitted from here inherits."""
    return dict(resolver_for(core).parent)


def wire_for(core: Any, own: Mapping[str, Any] | None) -> bytes:
    return resolver_for(core).wire(own)


__all__ = ["ENV_VAR", "current_runtime_env", "info_of", "merge", "resolve", "set_job_env", "wire_for"]
