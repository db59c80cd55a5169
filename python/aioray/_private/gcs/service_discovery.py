"""The cluster's Prometheus targets, in a file-based service discovery file, as Ray writes them.

The head's GCS keeps the file listing every live node's ``/metrics`` endpoint
up to date as nodes join and die; Prometheus reads it with a
``file_sd_configs`` entry and scrapes each node. The format is Prometheus's
(and Ray's ``prom_metrics_service_discovery.json``): a JSON list of target
groups, here one per node, ``{"labels": {...}, "targets": ["host:port"]}``.
The file is replaced atomically (Prometheus never reads half of one) and
removed when the GCS stops on purpose; a GCS restarted after a crash writes
it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable

from aioray._private.common import rpc
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.gcs")


def target_groups(nodes: Iterable[pb.NodeInfo]) -> list[dict[str, object]]:
    groups: list[dict[str, object]] = []
    for node in sorted(nodes, key=lambda n: (not n.is_head, n.node_id)):
        if not node.alive or not node.metrics_export_port or not node.address:
            continue
        host = rpc.split_address(node.address)[0]
        target = (
            f"[{host}]:{node.metrics_export_port}" if ":" in host else f"{host}:{node.metrics_export_port}"
        )
        groups.append(
            {
                "labels": {
                    "job": "aioray",
                    "aioray_node_id": node.node_id.hex(),
                    "aioray_is_head": "true" if node.is_head else "false",
                },
                "targets": [target],
            }
        )
    return groups


class ServiceDiscoveryFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._written: str | None = None

    def update(self, nodes: Iterable[pb.NodeInfo]) -> None:
        text = json.dumps(target_groups(nodes), indent=1)
        if text == self._written:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
            self._written = text
        except OSError as e:
            log.warning("cannot write the Prometheus service discovery file %s: %s", self.path, e)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._written = None


__all__ = ["ServiceDiscoveryFile", "target_groups"]
