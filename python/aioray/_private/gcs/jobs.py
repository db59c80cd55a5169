"""The job table: each driver registers a job; when it finishes, its non-detached actors die.

Jobs and the job counter are stored before the driver hears back, so a
restarted GCS never hands out a job id twice and still knows each running
job's driver."""

from __future__ import annotations

from collections.abc import Callable

from aioray._private.common import rpc, versions
from aioray._private.gcs.storage import Tables
from aioray._proto.aioray import v1 as pb

TABLE = "jobs"
META_TABLE = "meta"
COUNTER_KEY = b"job_counter"


class JobTable(pb.JobInfoGcsServiceBase):
    def __init__(
        self,
        on_job_finished: Callable[[str], None],
        tables: Tables | None = None,
        on_job_id_finished: Callable[[bytes], None] | None = None,
    ) -> None:
        self._on_job_finished = on_job_finished
        self._on_job_id_finished = on_job_id_finished  # for what a job owns by id (placement groups)
        self._tables = tables if tables is not None else Tables()
        self.jobs: dict[bytes, pb.RegisterJobRequest] = {}
        self._counter = 0

    async def recover(self) -> int:
        self.jobs = {k: pb.RegisterJobRequest().parse(v) for k, v in (await self._tables.load(TABLE)).items()}
        stored = (await self._tables.load(META_TABLE)).get(COUNTER_KEY, b"")
        self._counter = max(
            [int.from_bytes(stored, "little"), *(int.from_bytes(j, "little") for j in self.jobs)]
        )
        return len(self.jobs)

    async def register_job(self, register_job_request: pb.RegisterJobRequest) -> pb.RegisterJobReply:
        ours = versions.build_version()
        if register_job_request.version != ours:
            raise rpc.GRPCError(
                rpc.Status.FAILED_PRECONDITION,
                f"version mismatch: the cluster runs {ours}, this driver {register_job_request.version or 'an unknown version'}; "
                "use the same aioray and Python versions on the driver and the cluster",
            )
        self._counter += 1
        job_id = self._counter.to_bytes(4, "little")
        self.jobs[job_id] = register_job_request
        self._tables.put(META_TABLE, COUNTER_KEY, self._counter.to_bytes(8, "little"))
        self._tables.put(TABLE, job_id, bytes(register_job_request))
        await self._tables.flush()
        return pb.RegisterJobReply(job_id=job_id)

    async def mark_job_finished(self, job_id: pb.JobId) -> pb.Empty:
        job = self.jobs.pop(job_id.job_id, None)
        if job is not None:
            self._tables.delete(TABLE, job_id.job_id)
            if job.driver_address:
                self._on_job_finished(job.driver_address)
            if self._on_job_id_finished is not None:
                self._on_job_id_finished(job_id.job_id)
            await self._tables.flush()
        return pb.Empty()
