"""Merging environments, their wire form, and a package's way from the driver to a node's cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from aioray._private.common import packages
from aioray._private.raylet import runtime_env_agent as agent_mod
from aioray._private.runtime_env import packaging, resolver, upload
from aioray._proto.aioray import v1 as pb


def test_merge_replaces_fields_and_merges_env_vars() -> None:
    parent = {
        "env_vars": {"A": "p", "B": "p"},
        "working_dir": "gcs://_ray_pkg_p.zip",
        "pip": {"packages": ["six"]},
    }
    child = {"env_vars": {"B": "c", "C": "c"}, "working_dir": "gcs://_ray_pkg_c.zip"}
    assert resolver.merge(parent, child) == {
        "env_vars": {"A": "p", "B": "c", "C": "c"},
        "working_dir": "gcs://_ray_pkg_c.zip",
        "pip": {"packages": ["six"]},
    }
    assert resolver.merge(parent, None) == parent
    assert resolver.merge({}, {"py_modules": ["gcs://_ray_pkg_m.zip"]}) == {
        "py_modules": ["gcs://_ray_pkg_m.zip"]
    }


def test_wire_form_is_canonical() -> None:
    a = resolver.info_of({"env_vars": {"A": "1", "B": "2"}, "pip": {"packages": ["x"]}})
    b = resolver.info_of({"pip": {"packages": ["x"]}, "env_vars": {"B": "2", "A": "1"}})
    assert a.hash == b.hash and a.serialized == b.serialized and len(a.hash) == 32
    assert resolver.info_of({}) == pb.RuntimeEnvInfo()
    assert resolver.info_of({"env_vars": {"A": "2"}}).hash != resolver.info_of({"env_vars": {"A": "1"}}).hash


def test_both_sides_agree_on_the_names() -> None:
    """The raylet may not import the driver's package (layering): the shared names are copies."""
    assert agent_mod.ENV_VAR == resolver.ENV_VAR
    assert agent_mod.PACKAGE_KEY_PREFIX == upload.KEY_PREFIX
    assert upload.chunk_key("u", 3) == f"{agent_mod.PACKAGE_KEY_PREFIX}u#3"


class FakeKv:
    """The GCS key-value service's two calls that packages use, over a dict."""

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}

    async def kv_get(self, key: pb.KvKey, timeout: float) -> pb.KvGetReply:
        value = self.kv.get(key.key)
        return pb.KvGetReply(found=value is not None, value=value or b"")

    async def kv_put(self, request: pb.KvPutRequest, timeout: float) -> pb.KvPutReply:
        if request.key in self.kv and not request.overwrite:
            return pb.KvPutReply(added=False)
        self.kv[request.key] = request.value
        return pb.KvPutReply(added=True)


async def test_a_package_goes_up_in_chunks_and_comes_down_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packages, "CHUNK_BYTES", 1000)  # where the upload format lives
    src = tmp_path / "src"
    src.mkdir()
    (src / "mod.py").write_text("VALUE = 7\n" + f"NOISE = {os.urandom(3000).hex()!r}\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    entries = packaging.collect(src)
    uri = packaging.uri_for(packaging.content_hash(entries))
    kv: Any = FakeKv()
    assert not await upload.exists(kv, uri)
    await upload.upload(kv, uri, packaging.build_zip(entries, "test"))
    assert await upload.exists(kv, uri)
    assert json.loads(kv.kv[upload.manifest_key(uri)])["chunks"] > 1
    written = dict(kv.kv)
    await upload.upload(kv, uri, b"other bytes under the same name")  # a package never changes
    assert kv.kv == written

    async def kv_get(key: str) -> bytes | None:
        value: bytes | None = kv.kv.get(key)
        return value

    agent = agent_mod.RuntimeEnvAgent(str(tmp_path / "cache"), kv_get)
    info = resolver.info_of({"working_dir": uri, "env_vars": {"X": "${HOME}:x"}})
    env = await agent.ensure(info)
    assert env.cwd is not None and (Path(env.cwd) / "mod.py").read_text().startswith("VALUE = 7")
    assert (Path(env.cwd) / "run.sh").stat().st_mode & 0o111
    assert await agent.ensure(info) is env  # cached
    environ = env.environ({"HOME": "/h", "PYTHONPATH": "/old"})
    assert environ["X"] == "/h:x"
    assert environ["PYTHONPATH"] == f"{env.cwd}:/old"
    assert json.loads(environ[agent_mod.ENV_VAR]) == json.loads(info.serialized)

    # A package the GCS does not have, or one whose bytes changed, fails with the reason.
    missing = resolver.info_of({"working_dir": "gcs://_ray_pkg_missing.zip"})
    with pytest.raises(agent_mod.RuntimeEnvSetupFailed, match="not in the cluster's GCS"):
        await agent.ensure(missing)
    kv.kv[upload.chunk_key(uri, 0)] = b"x" * 1000
    (tmp_path / "cache" / "pkgs").rename(tmp_path / "moved")
    agent2 = agent_mod.RuntimeEnvAgent(str(tmp_path / "cache2"), kv_get)
    with pytest.raises(agent_mod.RuntimeEnvSetupFailed, match="corrupt"):
        await agent2.ensure(info)
    await agent.stop()
    await agent2.stop()
    assert not (tmp_path / "cache").exists() and not (tmp_path / "cache2").exists()


def test_an_unsafe_package_is_refused(tmp_path: Path) -> None:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(agent_mod.RuntimeEnvSetupFailed, match="outside"):
        agent_mod._unpack(buf.getvalue(), tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists() and list(tmp_path.iterdir()) == []
