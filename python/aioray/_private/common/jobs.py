"""Submitted jobs as every party sees them: the job manager writes them, the GCS lists them with
its driver jobs, the SDK, the CLI and the state API read them (Ray's ``JobStatus``, ``JobInfo``
and ``JobDetails``, re-exported by `aioray.job_submission`).

A submitted job's record is JSON in the GCS key-value store under `INFO_KEY_PREFIX` + its
submission id, as Ray keeps it in its internal KV: it outlives the job manager and is readable
from any client. The entrypoint's driver registers with the job table under the same submission
id (`SUBMISSION_ID_ENV`), which links the two.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, Self

from aioray._proto.aioray import v1 as pb

INFO_KEY_PREFIX = "job_submission:info:"
# What the job manager hands the entrypoint, read by `init()` in the entrypoint's driver.
ADDRESS_ENV = "AIORAY_ADDRESS"  # the GCS to connect to (Ray: RAY_ADDRESS)
SUBMISSION_ID_ENV = "AIORAY_JOB_SUBMISSION_ID"
JOB_RUNTIME_ENV_ENV = "AIORAY_JOB_RUNTIME_ENV"  # the job-level runtime_env, already uploaded (JSON)


def info_key(submission_id: str) -> str:
    return INFO_KEY_PREFIX + submission_id


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"  # not started: its runtime environment is being set up
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"  # stopped by a user
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobType(enum.StrEnum):
    SUBMISSION = "SUBMISSION"
    DRIVER = "DRIVER"

    def __str__(self) -> str:
        return self.value


_DEFAULT_MESSAGES = {
    JobStatus.PENDING: "Job has not started yet.",
    JobStatus.RUNNING: "Job is currently running.",
    JobStatus.STOPPED: "Job was intentionally stopped.",
    JobStatus.SUCCEEDED: "Job finished successfully.",
    JobStatus.FAILED: "Job failed.",
}


@dataclasses.dataclass
class JobInfo:
    """A submitted job's record; times are Unix milliseconds, as in Ray."""

    status: JobStatus
    entrypoint: str
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    metadata: dict[str, str] | None = None
    runtime_env: dict[str, Any] | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    entrypoint_resources: dict[str, float] | None = None
    driver_agent_http_address: str | None = None
    driver_node_id: str | None = None
    driver_exit_code: int | None = None

    def __post_init__(self) -> None:
        self.status = JobStatus(self.status)
        if self.message is None:
            self.message = _DEFAULT_MESSAGES[self.status]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def dump(self) -> bytes:
        return json.dumps(self.to_json()).encode()

    @classmethod
    def load(cls, raw: bytes) -> Self:
        return cls.from_json(json.loads(raw))


@dataclasses.dataclass
class DriverInfo:
    id: str
    node_ip_address: str
    pid: str


@dataclasses.dataclass
class JobDetails(JobInfo):
    """A job as `list_jobs`/`get_job_info` return it: a submitted one, or a driver that connected
    by itself (type DRIVER), as in Ray."""

    type: JobType = JobType.SUBMISSION
    job_id: str | None = None  # the driver's job id (hex), once its entrypoint connected
    submission_id: str | None = None
    driver_info: DriverInfo | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.type = JobType(self.type)
        if isinstance(self.driver_info, dict):
            self.driver_info = DriverInfo(**self.driver_info)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["type"] = self.type.value
        return out

    def dict(self) -> dict[str, Any]:  # pydantic's name, which Ray's JobDetails has
        return self.to_json()


def _host(address: str) -> str:
    return address.rpartition(":")[0] if ":" in address else address


def _driver_info(j: pb.JobInfo) -> DriverInfo:
    return DriverInfo(id=j.job_id.hex(), node_ip_address=_host(j.driver_address), pid=str(j.driver_pid))


def job_details(reply: pb.JobList) -> list[JobDetails]:
    """Ray's list of jobs from the GCS's answer: each submitted job (with the driver its entrypoint
    registered, the newest if it connected more than once), then each driver of no submission."""
    drivers: dict[str, pb.JobInfo] = {}
    for j in sorted(reply.jobs, key=lambda j: j.start_time):
        if j.submission_id:
            drivers[j.submission_id] = j
    out = []
    for s in reply.submissions:
        try:
            info = JobInfo.load(s.info)
        except (ValueError, TypeError, KeyError):
            continue  # a record being rewritten by a newer manager, or damaged: not a job to show
        driver = drivers.get(s.submission_id)
        out.append(
            JobDetails(
                **dataclasses.asdict(info),
                type=JobType.SUBMISSION,
                job_id=driver.job_id.hex() if driver is not None else None,
                submission_id=s.submission_id,
                driver_info=_driver_info(driver) if driver is not None else None,
            )
        )
    for j in reply.jobs:
        if j.submission_id:
            continue
        out.append(
            JobDetails(
                # A driver's job, as Ray reports one: it runs until its driver disconnects.
                status=JobStatus.SUCCEEDED if j.is_dead else JobStatus.RUNNING,
                entrypoint="",
                start_time=int(j.start_time * 1000) or None,
                end_time=int(j.end_time * 1000) or None,
                metadata={},
                runtime_env={},
                type=JobType.DRIVER,
                job_id=j.job_id.hex(),
                driver_info=_driver_info(j),
            )
        )
    return out


__all__ = [
    "ADDRESS_ENV",
    "INFO_KEY_PREFIX",
    "JOB_RUNTIME_ENV_ENV",
    "SUBMISSION_ID_ENV",
    "DriverInfo",
    "JobDetails",
    "JobInfo",
    "JobStatus",
    "JobType",
    "info_key",
    "job_details",
]
