"""The job table: each driver registers a job; when it finishes, its non-detached actors die."""

from __future__ import annotations

from collections.abc import Callable

from aioray._proto.aioray import v1 as pb


class JobTable(pb.JobInfoGcsServiceBase):
    def __init__(self, on_job_finished: Callable[[str], None]) -> None:
        self._on_job_finished = on_job_finished
        self.jobs: dict[bytes, pb.RegisterJobRequest] = {}
        self._counter = 0

    async def register_job(self, register_job_request: pb.RegisterJobRequest) -> pb.RegisterJobReply:
        self._counter += 1
        job_id = self._counter.to_bytes(4, "little")
        self.jobs[job_id] = register_job_request
        return pb.RegisterJobReply(job_id=job_id)

    async def mark_job_finished(self, job_id: pb.JobId) -> pb.Empty:
        job = self.jobs.pop(job_id.job_id, None)
        if job is not None and job.driver_address:
            self._on_job_finished(job.driver_address)
        return pb.Empty()
