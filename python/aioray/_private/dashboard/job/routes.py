"""Ray's job REST API on the dashboard (`aioray.job_submission` and `aioray job` are its clients).

Routes, every one needing the cluster token but the version: ``GET /api/version``;
``GET|PUT /api/packages/{protocol}/{name}`` (is a runtime_env package in the cluster, upload it);
``POST /api/jobs/`` (submit), ``GET /api/jobs/`` (list); ``GET /api/jobs/{id}``,
``GET /api/jobs/{id}/logs``, ``GET /api/jobs/{id}/logs/tail`` (the output as it is written,
chunked: Ray uses a websocket), ``POST /api/jobs/{id}/stop``, ``DELETE /api/jobs/{id}``, where
``id`` is a submission id or a driver's job id. Errors are JSON ``{"error", "status"}``: 400 for
a bad request, 404 for an unknown job.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aioray import __version__
from aioray._private.common import packages, rpc
from aioray._private.common.config import GCS_RECONNECT_TIMEOUT_S
from aioray._private.common.jobs import JobDetails
from aioray._private.dashboard.http import HttpError, Request, Response, Router, StreamResponse
from aioray._private.dashboard.job.cluster import HeadNode, reserver
from aioray._private.dashboard.job.manager import (
    BadJobRequestError,
    JobManager,
    JobNotFoundError,
    SubmitRequest,
)
from aioray._proto.aioray import v1 as pb

API_VERSION = "2"  # Ray's job API version, which its clients check for
MAX_PACKAGE_BYTES = 512 << 20  # Ray's limit (packaging.DEFAULT_MAX_PACKAGE_BYTES)
UPLOAD_TIMEOUT_S = 600.0
_PACKAGE_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.zip$")

Handler = Callable[[Request], Awaitable[Response]]


class JobService:
    """The job manager of this dashboard, started (recovering what a previous one left) on first use."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        gcs = ctx.gcs_address
        self.head = HeadNode(ctx.channels, gcs)
        self.kv = ctx.channels.gcs_stub(gcs, pb.InternalKvGcsServiceStub, GCS_RECONNECT_TIMEOUT_S)
        port = gcs.rpartition(":")[2]
        # Per cluster: clusters of one user on one machine share the session folder.
        log_dir = os.path.join(ctx.session_dir or os.getcwd(), f"job-logs-{port}")
        self.manager = JobManager(
            kv=self.kv,
            jobs=ctx.channels.gcs_stub(gcs, pb.JobInfoGcsServiceStub, GCS_RECONNECT_TIMEOUT_S),
            setup_runtime_env=self.head.setup_runtime_env,
            gcs_address=gcs,
            token=ctx.token,
            log_dir=log_dir,
            reserve=reserver(ctx.channels, gcs, self.head),
        )
        self._started: asyncio.Task[None] | None = None

    async def ready(self) -> JobManager:
        if self._started is None or (self._started.done() and self._started.exception() is not None):
            self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._started)
        return self.manager

    async def _start(self) -> None:
        node = await self.head.find()
        self.manager.node_id = node.node_id.hex()
        await self.manager.recover()


def _errors(handler: Handler) -> Handler:
    async def wrapped(req: Request) -> Response:
        try:
            return await handler(req)
        except JobNotFoundError as e:
            raise HttpError(404, str(e)) from None
        except BadJobRequestError as e:
            raise HttpError(400, str(e)) from None
        except rpc.GcsUnreachableError as e:
            raise HttpError(503, f"the cluster's GCS does not answer: {e}") from None

    return wrapped


def _details(job: JobDetails) -> dict[str, Any]:
    return job.to_json()


def _package_uri(req: Request) -> str:
    protocol, name = req.params["protocol"], req.params["package_name"]
    if protocol != "gcs" or not _PACKAGE_NAME.match(name):
        raise HttpError(
            400, f"not a package of this cluster: {protocol}://{name} (expected gcs://<name>.zip)"
        )
    return f"gcs://{name}"


def setup(router: Router, ctx: Any) -> None:
    service = ctx.services["jobs"] = JobService(ctx)
    ctx.on_close(service.manager.close)

    async def version(req: Request) -> Response:
        return Response.json(
            {"version": API_VERSION, "ray_version": __version__, "ray_commit": "", "session_name": ""}
        )

    async def get_package(req: Request) -> Response:
        uri = _package_uri(req)
        if not await packages.exists(service.kv, uri):
            raise HttpError(404, f"Package {uri} does not exist")
        return Response.json({"exists": True})

    async def put_package(req: Request) -> Response:
        uri = _package_uri(req)
        await packages.upload(service.kv, uri, req.body)
        return Response.json({"uploaded": uri})

    async def submit(req: Request) -> Response:
        manager = await service.ready()
        sid = await manager.submit_job(SubmitRequest.parse(req.json()))
        return Response.json({"submission_id": sid, "job_id": sid})

    async def list_jobs(req: Request) -> Response:
        manager = await service.ready()
        return Response.json([_details(j) for j in await manager.list_jobs()])

    async def get_job(req: Request) -> Response:
        manager = await service.ready()
        return Response.json(_details(await manager.get_job(req.params["job_id"])))

    async def logs(req: Request) -> Response:
        manager = await service.ready()
        return Response.json({"logs": await manager.get_logs(req.params["job_id"])})

    async def tail(req: Request) -> Response:
        manager = await service.ready()
        chunks = await manager.tail_logs(req.params["job_id"])

        async def encoded() -> AsyncIterator[bytes]:
            async for text in chunks:
                yield text.encode()

        return StreamResponse(encoded())

    async def stop(req: Request) -> Response:
        manager = await service.ready()
        return Response.json({"stopped": await manager.stop_job(req.params["job_id"])})

    async def delete(req: Request) -> Response:
        manager = await service.ready()
        return Response.json({"deleted": await manager.delete_job(req.params["job_id"])})

    router.add("GET", "/api/version", version, auth=False)
    router.add("GET", "/api/packages/{protocol}/{package_name}", _errors(get_package))
    router.add(
        "PUT",
        "/api/packages/{protocol}/{package_name}",
        _errors(put_package),
        timeout=UPLOAD_TIMEOUT_S,
        max_body=MAX_PACKAGE_BYTES,
    )
    router.add("POST", "/api/jobs/", _errors(submit))
    router.add("GET", "/api/jobs/", _errors(list_jobs))
    router.add("GET", "/api/jobs/{job_id}", _errors(get_job))
    router.add("GET", "/api/jobs/{job_id}/logs", _errors(logs))
    router.add("GET", "/api/jobs/{job_id}/logs/tail", _errors(tail))
    router.add("POST", "/api/jobs/{job_id}/stop", _errors(stop))
    router.add("DELETE", "/api/jobs/{job_id}", _errors(delete))


__all__ = ["API_VERSION", "JobService", "setup"]
