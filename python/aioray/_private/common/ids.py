"""Identifiers. An object id names its owner and the task that made it:
``owner prefix (8 bytes) | task counter (8 bytes) | return index (4 bytes)``;
puts use index 0.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading

NODE_ID_LEN = 16
WORKER_ID_LEN = 16
TASK_ID_LEN = 16
OBJECT_ID_LEN = 20

_index = struct.Struct("<I")


def random_id(n: int = 16) -> bytes:
    return os.urandom(n)


class IdGenerator:
    """Task ids for one worker: its prefix plus a process-wide counter (thread-safe)."""

    def __init__(self, worker_id: bytes) -> None:
        self._prefix = worker_id[:8]
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def task_id(self) -> bytes:
        with self._lock:
            n = next(self._counter)
        return self._prefix + n.to_bytes(8, "little")

    def put_id(self) -> bytes:
        return object_id(self.task_id(), 0)


def object_id(task_id: bytes, index: int) -> bytes:
    return task_id + _index.pack(index)


def task_of(object_id_: bytes) -> bytes:
    return object_id_[:TASK_ID_LEN]
