"""runtime_env across nodes started with the CLI: a working_dir packaged here is imported on another node."""

from __future__ import annotations

import uuid
from pathlib import Path

import aioray

from .multinode import connected, node_ids_by_resource


def test_working_dir_import_on_a_remote_node(tmp_path: Path) -> None:
    name = f"remote_wd_{uuid.uuid4().hex[:8]}"
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / f"{name}.py").write_text("VALUE = 7\n")

    @aioray.remote(resources={"remote": 1}, runtime_env={"working_dir": str(wd)})
    def use() -> tuple[int, str]:
        import importlib

        return importlib.import_module(name).VALUE, aioray.get_runtime_context().get_node_id()

    with connected(head={}, workers={"second": {"remote": 1}}):
        value, node = aioray.get(use.remote(), timeout=90)
        assert value == 7
        assert node == node_ids_by_resource()["remote"]
