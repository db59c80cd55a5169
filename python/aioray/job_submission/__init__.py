"""Ray's job submission API: run a shell command on a cluster's head as a driver of the cluster.

    from aioray.job_submission import JobSubmissionClient, JobStatus

    client = JobSubmissionClient("http://127.0.0.1:8265")
    job = client.submit_job(entrypoint="python script.py", runtime_env={"working_dir": "."})
    client.get_job_status(job)  # JobStatus.PENDING, RUNNING, then SUCCEEDED, FAILED or STOPPED
    print(client.get_job_logs(job))

The same from a shell: ``aioray job submit --address http://127.0.0.1:8265 -- python script.py``.
"""

from aioray._private.common.jobs import DriverInfo, JobDetails, JobInfo, JobStatus, JobType
from aioray.job_submission._http import JobServerError
from aioray.job_submission.sdk import JobSubmissionClient

__all__ = [
    "DriverInfo",
    "JobDetails",
    "JobInfo",
    "JobServerError",
    "JobStatus",
    "JobSubmissionClient",
    "JobType",
]
