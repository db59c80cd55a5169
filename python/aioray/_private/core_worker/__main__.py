"""Entry point of a worker process, started by its node's raylet."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
from typing import Any

from aioray._private.common import process, rpc
from aioray._private.core_worker.executor import TaskContext
from aioray._private.core_worker.worker import CoreWorker, connect
from aioray._proto.aioray import v1 as pb


class PrefixedStream(io.TextIOBase):
    """Prefixes each line a task prints with ``(task name pid=N)``, as Ray does, so the
    driver's terminal shows which task and process it came from."""

    def __init__(self, target: Any, context: TaskContext) -> None:
        self._target = target
        self._context = context
        self._pid = os.getpid()
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        data = self._partial + text
        lines = data.split("\n")
        self._partial = lines.pop()
        if lines:
            name = self._context.task_name or "worker"
            prefix = f"({name} pid={self._pid}) "
            self._target.write("".join(prefix + line + "\n" for line in lines))
            self._target.flush()
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.write("\n")
        self._target.flush()


async def start(loop: asyncio.AbstractEventLoop) -> CoreWorker:
    env = os.environ
    token = env.pop(process.TOKEN_ENV, "")
    worker_id = bytes.fromhex(env["AIORAY_WORKER_ID"])
    node = pb.NodeInfo(
        node_id=bytes.fromhex(env["AIORAY_NODE_ID"]),
        address=env["AIORAY_RAYLET_ADDRESS"],
        store_name=env["AIORAY_STORE_NAME"],
    )
    core = CoreWorker(
        is_driver=False,
        worker_id=worker_id,
        node=node,
        gcs_address=env["AIORAY_GCS_ADDRESS"],
        token=token,
        job_id=b"",
        loop=loop,
    )
    await core.start(rpc.split_address(node.address)[0])  # the node's own address, reachable by other nodes
    connect(core)
    assert core.executor is not None
    sys.stdout = PrefixedStream(sys.__stdout__, core.executor.context)
    sys.stderr = PrefixedStream(sys.__stderr__, core.executor.context)
    process.watch_lifeline(loop, _exit_process)
    stub = core.channels.stub(node.address, pb.NodeManagerStub)
    reply = await stub.register_worker(
        pb.RegisterWorkerRequest(worker_id=worker_id, address=core.address, pid=os.getpid()), timeout=30
    )
    core.spill_dir = reply.node.spill_dir
    return core


def _exit_process() -> None:
    os._exit(0)


def main() -> None:
    """The core loop runs on a thread of its own; tasks run on the main thread (see `Executor.serve`)."""
    process.install_uvloop()
    loop = process.new_event_loop()

    def run_loop() -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    threading.Thread(target=run_loop, name="aioray-core", daemon=True).start()
    core = asyncio.run_coroutine_threadsafe(start(loop), loop).result()
    assert core.executor is not None
    core.executor.serve()


if __name__ == "__main__":
    main()
