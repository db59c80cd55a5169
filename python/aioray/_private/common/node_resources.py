"""What a node offers: its resources (CPUs, GPUs, memory, custom) and its labels, as in Ray.

GPUs are found at start from ``CUDA_VISIBLE_DEVICES`` (the devices it names) or else ``nvidia-smi``;
``num_gpus`` overrides the count. The ``memory`` resource is what tasks and actors may reserve with
``memory=``: the memory available at start less the object store (Ray's rule), unless given.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

CUDA_DEVICES = "CUDA_VISIBLE_DEVICES"
NODE_ID_LABEL = "ray.io/node-id"  # Ray's name, so that Ray scripts' label selectors work unchanged
_RESERVED_LABEL_PREFIX = "ray.io/"
_LABEL_VALUE = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?)?$")
_LABEL_NAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?$")
_NVIDIA_SMI_TIMEOUT_S = 10


def visible_gpu_ids(environ: dict[str, str] | None = None) -> list[int] | None:
    """The devices CUDA_VISIBLE_DEVICES names (None when it is unset)."""
    value = (environ if environ is not None else os.environ).get(CUDA_DEVICES)
    if value is None:
        return None
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():  # a UUID ("GPU-…") or "-1": counts as a device only if numeric
            continue
        ids.append(int(part))
    return ids


def detect_gpus() -> list[int]:
    """The node's GPU device ids: from CUDA_VISIBLE_DEVICES if set, else from nvidia-smi."""
    visible = visible_gpu_ids()
    if visible is not None:
        return visible
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=_NVIDIA_SMI_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(line) for line in out.split() if line.strip().isdigit()]


def gpu_ids_for(num_gpus: float, environ: dict[str, str] | None = None) -> list[int]:
    """The device ids a node with `num_gpus` GPUs hands out: the visible devices first, then 0, 1, …"""
    count = int(num_gpus)
    visible = visible_gpu_ids(environ)
    if visible is not None and len(visible) >= count:
        return visible[:count]
    return list(range(count))


def available_memory() -> int:
    """MemAvailable of /proc/meminfo (the machine's memory where that is unreadable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def node_resources(
    num_cpus: float | None,
    num_gpus: float | None,
    resources: dict[str, float] | None,
    memory: float | None = None,
    object_store_memory: int = 0,
) -> dict[str, float]:
    amounts = dict(resources or {})
    for reserved in ("CPU", "GPU"):
        if reserved in amounts:
            raise ValueError(f"use num_{reserved.lower()}s=..., not resources={{'{reserved}': ...}}")
    if "memory" in amounts:
        raise ValueError("use memory=..., not resources={'memory': ...}")
    amounts["CPU"] = float(os.cpu_count() or 1) if num_cpus is None else float(num_cpus)
    gpus = float(len(detect_gpus())) if num_gpus is None else float(num_gpus)
    if gpus < 0 or (num_cpus is not None and num_cpus < 0):
        raise ValueError("num_cpus and num_gpus must not be negative")
    if gpus:
        amounts["GPU"] = gpus
    if memory is None:
        memory = max(0, available_memory() - object_store_memory)
    elif memory < 0:
        raise ValueError(f"memory must not be negative, got {memory}")
    if memory:
        amounts["memory"] = float(int(memory))
    return amounts


def parse_labels(labels: str | dict[str, str] | None) -> dict[str, str]:
    """Node labels from a dict, a JSON object or ``"key1=value1,key2=value2"`` (Ray's forms)."""
    if labels is None or labels == "":
        return {}
    if isinstance(labels, str):
        text = labels.strip()
        if text.startswith("{"):
            parsed = json.loads(text)
            if not isinstance(parsed, dict):
                raise ValueError("--labels JSON must be an object of names to values")
            labels = parsed
        else:
            labels = {}
            for pair in text.split(","):
                key, sep, value = pair.partition("=")
                if not sep:
                    raise ValueError(f"label {pair!r} is not key=value")
                labels[key.strip()] = value.strip()
    out: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"labels must map strings to strings, got {key!r}: {value!r}")
        name = key.rsplit("/", 1)[-1]
        if not _LABEL_NAME.match(name) or len(key) > 253:
            raise ValueError(f"invalid label name {key!r}: letters, digits, '-', '_' and '.', at most 63")
        if not _LABEL_VALUE.match(value):
            raise ValueError(f"invalid value {value!r} of label {key!r}: letters, digits, '-', '_' and '.'")
        if key.startswith(_RESERVED_LABEL_PREFIX):
            raise ValueError(
                f"label {key!r}: the prefix {_RESERVED_LABEL_PREFIX!r} is reserved for aioray's own"
            )
        out[key] = value
    return out


__all__ = ["NODE_ID_LABEL", "detect_gpus", "gpu_ids_for", "node_resources", "parse_labels"]
