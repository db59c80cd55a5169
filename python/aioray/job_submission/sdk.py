"""`JobSubmissionClient`: Ray's job SDK, against the dashboard of an aioray head."""

from __future__ import annotations

import codecs
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aioray._private import worker_api
from aioray._private.common import process
from aioray._private.common.jobs import JobDetails, JobStatus
from aioray._private.runtime_env import parse_runtime_env
from aioray._private.runtime_env.resolver import Packager, resolve
from aioray.job_submission import _http

DEFAULT_TIMEOUT_S = 30.0
UPLOAD_TIMEOUT_S = 600.0
ADDRESS_ENV = "AIORAY_API_SERVER_ADDRESS"  # Ray: RAY_API_SERVER_ADDRESS


def resolve_address(address: str | None) -> str:
    """The dashboard's URL: `address` ("http(s)://HOST:PORT", "HOST:PORT", or "auto" for the cluster
    `aioray start --head` started on this machine), else $AIORAY_API_SERVER_ADDRESS, else "auto"."""
    address = address or os.environ.get(ADDRESS_ENV) or "auto"
    if address == "auto":
        info = worker_api.read_cluster_file() or {}
        url = info.get("dashboard_url")
        if not url:
            raise ConnectionError(
                "no job server address: pass address='http://HEAD:DASHBOARD_PORT' (or set "
                f"{ADDRESS_ENV}); no cluster with a dashboard was started on this machine"
            )
        return str(url).rstrip("/")
    if "://" not in address:
        address = "http://" + address
    scheme = address.split("://", 1)[0]
    if scheme not in ("http", "https"):
        raise ValueError(f"the job server address must be http(s)://HOST:PORT, got {address!r}")
    return address.rstrip("/")


def default_token(address: str) -> str:
    """The cluster token: $AIORAY_AUTH_TOKEN, else that of the cluster started on this machine, if
    `address` is its dashboard's (the local token is for the local cluster, not any server named)."""
    token = os.environ.get(process.TOKEN_ENV)
    if token:
        return token
    info = worker_api.read_cluster_file() or {}
    if str(info.get("dashboard_url", "")).rstrip("/") == address:
        return str(info.get("token", ""))
    return ""


class _HttpPackager(Packager):
    """Uploads a runtime_env's local paths through the job server, which stores them in the GCS."""

    def __init__(self, client: JobSubmissionClient) -> None:
        super().__init__(None)
        self._client = client

    def _url(self, uri: str) -> str:
        return f"{self._client.address}/api/packages/gcs/{urllib.parse.quote(uri.removeprefix('gcs://'))}"

    def _exists(self, uri: str) -> bool:
        status, _ = _http.request("GET", self._url(uri), self._client._headers, self._client.timeout)
        return status == 200

    def _upload(self, uri: str, data: bytes) -> None:
        headers = self._client._headers
        _http.request("PUT", self._url(uri), headers, UPLOAD_TIMEOUT_S, data, "application/zip")


class JobSubmissionClient:
    """Submits and manages jobs on a cluster's head, through its dashboard (Ray's job REST API).

    `address`: the dashboard, as ``http://HEAD:PORT`` (see `resolve_address`). The cluster token
    goes in ``Authorization: Bearer``: from `headers` if it has one, else $AIORAY_AUTH_TOKEN, else
    the local cluster file's when `address` is that cluster's dashboard. `metadata` is added to every job's. Every call waits at most `timeout`
    seconds (each method takes its own ``timeout=`` too); an unreachable server raises
    ConnectionError, a refused request `JobServerError` (a RuntimeError, as in Ray) with its HTTP
    status and the server's reason.
    """

    def __init__(
        self,
        address: str | None = None,
        create_cluster_if_needed: bool = False,
        cookies: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if create_cluster_if_needed:
            raise ValueError(
                "create_cluster_if_needed is not supported: start a head with `aioray start --head`"
            )
        self.address = resolve_address(address)
        self.timeout = float(timeout)
        self._default_metadata = dict(metadata or {})
        self._headers = dict(headers or {})
        if not any(k.lower() == "authorization" for k in self._headers):
            token = default_token(self.address)
            if token:
                self._headers["Authorization"] = f"Bearer {token}"
        if cookies:
            self._headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self._verify = verify is not False
        self.version = self.get_version()

    # -- plumbing --------------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        status, raw = _http.request(
            method,
            self.address + path,
            self._headers,
            self.timeout if timeout is None else timeout,
            data,
            verify=self._verify,
        )
        if status == 404:
            raise _http.JobServerError(404, _http._error_text(404, raw))
        return json.loads(raw) if raw else None

    def _job_path(self, job_id: str, suffix: str = "") -> str:
        return f"/api/jobs/{urllib.parse.quote(job_id, safe='')}{suffix}"

    def get_version(self, timeout: float | None = None) -> str:
        try:
            answer = self._call("GET", "/api/version", timeout=timeout)
        except _http.JobServerError as e:
            if e.status == 404:
                raise ConnectionError(
                    f"{self.address} is not an aioray dashboard with the job API (GET /api/version: 404)"
                ) from None
            raise
        return str(answer["version"])

    # -- jobs ------------------------------------------------------------------------------------
    def submit_job(
        self,
        *,
        entrypoint: str,
        job_id: str | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        submission_id: str | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        entrypoint_memory: int | None = None,
        entrypoint_resources: Mapping[str, float] | None = None,
        timeout: float | None = None,
    ) -> str:
        """Submits `entrypoint` (a shell command run on the head, in `runtime_env`'s working_dir) and
        returns its submission id. Local paths in `runtime_env` are uploaded first."""
        if job_id is not None and submission_id is not None:
            raise ValueError("give submission_id only (job_id is its deprecated name)")
        env = parse_runtime_env(dict(runtime_env) if runtime_env is not None else None)
        resolved = resolve(env, _HttpPackager(self)) if env else None
        body: dict[str, Any] = {
            "entrypoint": entrypoint,
            "submission_id": submission_id or job_id,
            "runtime_env": resolved,
            "metadata": {**self._default_metadata, **(metadata or {})},
            "entrypoint_num_cpus": entrypoint_num_cpus,
            "entrypoint_num_gpus": entrypoint_num_gpus,
            "entrypoint_memory": entrypoint_memory,
            "entrypoint_resources": dict(entrypoint_resources) if entrypoint_resources else None,
        }
        answer = self._call("POST", "/api/jobs/", {k: v for k, v in body.items() if v is not None}, timeout)
        return str(answer["submission_id"])

    def stop_job(self, job_id: str, timeout: float | None = None) -> bool:
        """Asks the job to stop (SIGTERM, then SIGKILL after a grace period); False if it had ended."""
        return bool(self._call("POST", self._job_path(job_id, "/stop"), timeout=timeout)["stopped"])

    def delete_job(self, job_id: str, timeout: float | None = None) -> bool:
        """Forgets an ended job (its record and logs); a running one must be stopped first."""
        return bool(self._call("DELETE", self._job_path(job_id), timeout=timeout)["deleted"])

    def get_job_info(self, job_id: str, timeout: float | None = None) -> JobDetails:
        return JobDetails.from_json(self._call("GET", self._job_path(job_id), timeout=timeout))

    def list_jobs(self, timeout: float | None = None) -> list[JobDetails]:
        return [JobDetails.from_json(j) for j in self._call("GET", "/api/jobs/", timeout=timeout)]

    def get_job_status(self, job_id: str, timeout: float | None = None) -> JobStatus:
        return self.get_job_info(job_id, timeout).status

    def get_job_logs(self, job_id: str, timeout: float | None = None) -> str:
        return str(self._call("GET", self._job_path(job_id, "/logs"), timeout=timeout)["logs"])

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """The job's output as it is written, until the job has ended (bound the whole with
        ``asyncio.timeout``; connecting waits at most the client's timeout)."""
        url = self.address + self._job_path(job_id, "/logs/tail")
        chunks = _http.stream(url, self._headers, self.timeout)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span chunks
        async for chunk in chunks:
            text = decoder.decode(chunk)
            if text:
                yield text
        rest = decoder.decode(b"", final=True)
        if rest:
            yield rest


__all__ = ["JobSubmissionClient", "default_token", "resolve_address"]
