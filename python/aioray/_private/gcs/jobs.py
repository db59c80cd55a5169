"""The job table: each driver registers a job; when it finishes, its non-detached actors die.

Jobs and the job counter are stored before the driver hears back, so a
restarted GCS never hands out a job id twice and still knows each running
job's driver."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from aioray._private.common import jobs as job_records
from aioray._private.common import rpc, versions
from aioray._private.gcs.storage import Tables
from aioray._proto.aioray import v1 as pb

TABLE = "jobs"
META_TABLE = "meta"
COUNTER_KEY = b"job_counter"
MAX_FINISHED_JOBS = 1000  # finished jobs listed by ListJobs (in memory: a restarted GCS forgets them)


class JobTable(pb.JobInfoGcsServiceBase):
    def __init__(
        self,
        on_job_finished: Callable[[str], None],
        tables: Tables | None = None,
        on_job_id_finished: Callable[[bytes], None] | None = None,
        kv: Callable[[], dict[str, bytes]] | None = None,
    ) -> None:
        self._on_job_finished = on_job_finished
        self._on_job_id_finished = on_job_id_finished  # for what a job owns by id (placement groups)
        self._tables = tables if tables is not None else Tables()
        self._kv = kv  # where the job manager keeps submitted jobs' records (common/jobs.py)
        self.jobs: dict[bytes, pb.RegisterJobRequest] = {}
        self.start_times: dict[bytes, float] = {}
        self.finished: collections.OrderedDict[bytes, pb.JobInfo] = collections.OrderedDict()
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
        self.start_times[job_id] = time.time()
        self._tables.put(META_TABLE, COUNTER_KEY, self._counter.to_bytes(8, "little"))
        self._tables.put(TABLE, job_id, bytes(register_job_request))
        await self._tables.flush()
        return pb.RegisterJobReply(job_id=job_id)

    async def mark_job_finished(self, job_id: pb.JobId) -> pb.Empty:
        if self._finish(job_id.job_id):
            await self._tables.flush()
        return pb.Empty()

    def on_driver_death(self, address: str) -> None:
        """A driver's raylet saw its process end: a SIGKILLed driver never marks its job finished.
        The caller flushes the tables."""
        for job_id in [j for j, job in self.jobs.items() if address and job.driver_address == address]:
            self._finish(job_id)

    def on_node_death(self, node_id: bytes) -> None:
        """The driver's node died, and with it the raylet that would have seen the driver die (as
        in Ray, its jobs end). The caller flushes the tables."""
        for job_id in [j for j, job in self.jobs.items() if node_id and job.driver_node_id == node_id]:
            self._finish(job_id)

    def _finish(self, job_id: bytes) -> bool:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return False
        info = self._info(job_id, job)
        info.end_time, info.is_dead = time.time(), True
        self.start_times.pop(job_id, None)
        self.finished[job_id] = info
        while len(self.finished) > MAX_FINISHED_JOBS:
            self.finished.popitem(last=False)
        self._tables.delete(TABLE, job_id)
        if job.driver_address:
            self._on_job_finished(job.driver_address)
        if self._on_job_id_finished is not None:
            self._on_job_id_finished(job_id)
        return True

    def _info(self, job_id: bytes, job: pb.RegisterJobRequest) -> pb.JobInfo:
        return pb.JobInfo(
            job_id=job_id,
            driver_address=job.driver_address,
            driver_pid=job.driver_pid,
            namespace=job.namespace,
            start_time=self.start_times.get(job_id, 0.0),
            submission_id=job.submission_id,
        )

    async def list_jobs(self, empty: pb.Empty) -> pb.JobList:
        running = [self._info(job_id, job) for job_id, job in self.jobs.items()]
        prefix = job_records.INFO_KEY_PREFIX
        submissions = [
            pb.SubmissionJob(submission_id=key[len(prefix) :], info=value)
            for key, value in (self._kv() if self._kv is not None else {}).items()
            if key.startswith(prefix)
        ]
        return pb.JobList(jobs=[*self.finished.values(), *running], submissions=submissions)
