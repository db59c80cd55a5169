"""The CoreWorker gRPC service (seed 000, protocol a): what other processes ask of a worker or driver.

- Owners push tasks to a leased worker over its task channels (`core_worker.task_channel`, whose
  port `GetTaskPort` tells).
- Borrowers ask the owner for an object's value (`GetObject`) and register
  their borrows (`UpdateBorrowers`); a borrower that could not read a copy
  asks with ``lost=True`` and the owner rebuilds it from lineage if its node died.
- The GCS asks a leased worker to become an actor (`CreateActor`).
- Anyone may ask to cancel a task (`CancelTask`).
- The GCS asks an actor to exit gracefully once its last handle is gone (`ExitActor`).
- A generator task reports its items to their owner one by one (`ReportGeneratorItem`).
- The state API asks what objects the process holds (`GetObjectsInfo`, see `memory`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aioray._private.common import proto_enums, serialization, task_spec
from aioray._private.core_worker.borrowing import BorrowProtocol
from aioray._private.core_worker.executor import Executor
from aioray._private.core_worker.ownership import OwnershipTable
from aioray._private.core_worker.reader import ObjectReader
from aioray._private.core_worker.task_submitter import TaskSubmitter
from aioray._proto.aioray import v1 as pb
from aioray.exceptions import ObjectLostError


class CoreWorkerService(pb.CoreWorkerBase):
    def __init__(
        self,
        refs: OwnershipTable,
        reader: ObjectReader,
        borrows: BorrowProtocol,
        submitter: TaskSubmitter,
        executor: Executor | None,
        node_is_gone: Callable[[bytes], Awaitable[bool]],
        own_address: Callable[[], str],
        task_port: Callable[[], int] = lambda: 0,
        objects_info: Callable[[], bytes] = lambda: b"",
        flush_events: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._task_port = task_port
        self._objects_info = objects_info
        self._flush_events = flush_events
        self._refs = refs
        self._reader = reader
        self._borrows = borrows
        self._submitter = submitter
        self._executor = executor
        self._node_is_gone = node_is_gone
        self._own_address = own_address

    async def get_object(self, get_object_request: pb.GetObjectRequest) -> pb.GetObjectReply:
        oid = get_object_request.object_id
        if oid not in self._refs:
            return pb.GetObjectReply(status=proto_enums.OBJECT_FREED)
        timeout = get_object_request.timeout or None
        if get_object_request.lost:
            value = self._refs.value(oid)
            if value is not None and value.node_id and await self._node_is_gone(value.node_id):
                try:
                    await self._submitter.reconstruct(oid)
                except ObjectLostError as e:
                    return pb.GetObjectReply(status=proto_enums.OBJECT_LOST, message=str(e))
        try:
            value = await self._reader.wait_value(oid, self._own_address(), timeout)
        except TimeoutError:
            return pb.GetObjectReply(status=proto_enums.OBJECT_TIMEOUT)
        except ObjectLostError:
            return pb.GetObjectReply(status=proto_enums.OBJECT_FREED)
        if value.inline is not None:
            value.accessed = True
            return pb.GetObjectReply(status=proto_enums.OBJECT_READY, inline_value=value.inline)
        return pb.GetObjectReply(
            status=proto_enums.OBJECT_READY,
            node_id=value.node_id or b"",
            node_address=value.node_address or "",
            size=value.size,
        )

    async def update_borrowers(self, borrower_update: pb.BorrowerUpdate) -> pb.Empty:
        self._borrows.on_update(borrower_update)
        return pb.Empty()

    async def get_task_port(self, empty: pb.Empty) -> pb.TaskPort:
        if self._executor is None or not self._task_port():
            raise GRPCError(Status.FAILED_PRECONDITION, "a driver does not execute tasks")
        return pb.TaskPort(port=self._task_port())

    async def create_actor(self, actor_creation: pb.ActorCreation) -> pb.Blob:
        if self._executor is None:
            raise GRPCError(Status.FAILED_PRECONDITION, "a driver does not host actors")
        spec = task_spec.ActorCreationSpec.decode(actor_creation.spec)
        outcome = await self._executor.create_actor(spec, tuple(actor_creation.gpu_ids))
        if self._borrows.has_pending():
            await self._borrows.flush_registrations()
        return pb.Blob(data=outcome)

    async def cancel_task(self, cancel_request: pb.CancelRequest) -> pb.Empty:
        req = cancel_request
        # Running (or queued) here? Else it is one of ours, asked by a non-owner.
        if self._executor is None or not self._executor.cancel(req.task_id, req.force, req.recursive):
            self._submitter.cancel(req.task_id, req.force, req.recursive)
        return pb.Empty()

    async def report_generator_item(self, blob: pb.Blob) -> pb.Empty:
        task_id, batch = serialization.loads_plain(blob.data)
        for index, ret in batch:
            await self._submitter.on_generator_item(task_id, index, ret)
        return pb.Empty()

    async def exit_actor(self, exit_actor_request: pb.ExitActorRequest) -> pb.Empty:
        executor = self._executor
        if executor is None or executor.actor_id != exit_actor_request.actor_id:
            raise GRPCError(
                Status.NOT_FOUND, f"this worker hosts no actor {exit_actor_request.actor_id.hex()}"
            )
        # The GCS asked (it already holds the actor DEAD): no need to tell it back.
        executor.request_exit(exit_actor_request.reason, drain=True, report=False)
        return pb.Empty()

    async def get_objects_info(self, empty: pb.Empty) -> pb.Blob:
        return pb.Blob(data=self._objects_info())

    async def exit(self, empty: pb.Empty) -> pb.Empty:
        if self._flush_events is not None:  # the last tasks' events would die with the process
            await self._flush_events()
        asyncio.get_running_loop().call_later(0.05, _exit_process)
        return pb.Empty()


def _exit_process() -> None:
    os._exit(0)


__all__ = ["CoreWorkerService"]
