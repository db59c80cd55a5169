"""Entry point of a worker process, started by its node's raylet."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

from aioray._private.common import process, rpc
from aioray._private.common.worker_logs import TaggedStream
from aioray._private.core_worker.worker import CoreWorker, connect
from aioray._proto.aioray import v1 as pb


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
    # Its stdout and stderr are files its raylet reads (raylet/log_monitor.py): marked with whose
    # output follows, for the driver that owns it to print with Ray's "(name pid=N)" prefix.
    sys.stdout = TaggedStream(sys.__stdout__, core.executor.whose)
    sys.stderr = TaggedStream(sys.__stderr__, core.executor.whose)
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
