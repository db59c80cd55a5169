"""The head's Prometheus service discovery file: one target group per live node, kept current."""

from __future__ import annotations

import json
from pathlib import Path

from aioray._private.gcs.service_discovery import ServiceDiscoveryFile
from aioray._proto.aioray import v1 as pb


def node(n: int, alive: bool = True, head: bool = False, port: int = 9000) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=bytes([n]) * 4,
        address=f"10.0.0.{n}:700{n}",
        alive=alive,
        is_head=head,
        metrics_export_port=port + n if port else 0,
    )


def test_the_file_lists_live_nodes_and_follows_joins_and_deaths(tmp_path: Path) -> None:
    path = tmp_path / "sd" / "prom.json"
    sd = ServiceDiscoveryFile(str(path))
    sd.update([node(2), node(1, head=True)])
    assert json.loads(path.read_text()) == [
        {
            "labels": {"job": "aioray", "aioray_node_id": "01010101", "aioray_is_head": "true"},
            "targets": ["10.0.0.1:9001"],
        },
        {
            "labels": {"job": "aioray", "aioray_node_id": "02020202", "aioray_is_head": "false"},
            "targets": ["10.0.0.2:9002"],
        },
    ]
    sd.update([node(1, head=True), node(2, alive=False), node(3, port=0)])  # dead; no endpoint yet
    assert [g["targets"] for g in json.loads(path.read_text())] == [["10.0.0.1:9001"]]
    assert [p.name for p in path.parent.iterdir()] == ["prom.json"]  # replaced, no temporary left
    sd.remove()
    assert not path.exists()
    sd.remove()  # twice is fine
