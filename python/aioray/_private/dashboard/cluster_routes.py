"""The JSON API the pages read: the cluster overview, and (with the token) the state API's answers,
the worker logs and the timeline.

Paths follow Ray's dashboard: ``/api/cluster_status`` and the state API under ``/api/v0/``
(``/api/jobs/`` is job submission's). The rows are the state API's own (`aioray.util.state`),
so the pages show what ``aioray list`` shows; logs are read from each node's raylet as
``aioray logs`` reads them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aioray._private.common import rpc
from aioray._private.dashboard.http import HttpError, Request, Response, Router, StreamResponse
from aioray._private.dashboard.server import DashboardContext
from aioray._proto.aioray import v1 as pb

RPC_TIMEOUT_S = 10.0
STATE_TIMEOUT_S = 15  # the state API's own deadline, within the handler's
DEFAULT_LOG_LINES = 1000
MAX_LOG_LINES = 100_000
_UNREACHABLE: tuple[type[BaseException], ...] = (*rpc.CONNECTION_ERRORS, TimeoutError)


def _ctx(req: Request) -> DashboardContext:
    ctx: DashboardContext = req.app
    return ctx


def _hex_id(req: Request, name: str) -> str:
    value = req.params.get(name) or req.query.get(name) or ""
    try:
        bytes.fromhex(value)
    except ValueError:
        raise HttpError(400, f"{name} must be a hex id, got {value[:80]!r}") from None
    if not value:
        raise HttpError(400, f"give {name}")
    return value.lower()


async def _cluster_view(ctx: DashboardContext) -> pb.ClusterView:
    try:
        stub = ctx.channels.stub(ctx.gcs_address, pb.NodeInfoGcsServiceStub)
        return await stub.get_cluster_view(pb.Empty(), timeout=RPC_TIMEOUT_S)
    except rpc.GRPCError as e:
        raise HttpError(502, f"the GCS refused: {e.message or e.status.name}") from None
    except _UNREACHABLE:
        # The pool's channel reconnects on the next call: a GCS restarting is back by itself.
        raise HttpError(503, f"the GCS at {ctx.gcs_address} does not answer (restarting?)") from None


def _node_json(n: pb.NodeInfo) -> dict[str, Any]:
    return {
        "node_id": n.node_id.hex(),
        "address": n.address,
        "ip": n.address.rpartition(":")[0],
        "is_head": n.is_head,
        "alive": n.alive,
        "start_time": n.start_time,
        "resources_total": dict(n.total.amounts),
        "resources_available": dict(n.available.amounts),
        "store_capacity": n.store_capacity,
        "store_used": n.store_used,
        "store_objects": n.store_objects,
        "num_workers": n.num_workers,
        "spilled_bytes": n.spilled_bytes,
        "spilled_total": n.spilled_total,
        "restored_bytes": n.restored_bytes,
        "labels": dict(n.labels),
        "metrics_export_port": n.metrics_export_port,
    }


async def cluster_status(req: Request) -> Response:
    ctx = _ctx(req)
    view = await _cluster_view(ctx)
    nodes = [_node_json(n) for n in view.nodes]
    totals: dict[str, float] = {}
    available: dict[str, float] = {}
    for n in view.nodes:
        if n.alive:
            for k, v in n.total.amounts.items():
                totals[k] = totals.get(k, 0.0) + v
            for k, v in n.available.amounts.items():
                available[k] = available.get(k, 0.0) + v
    return Response.json(
        {
            "gcs_address": ctx.gcs_address,
            "time": time.time(),
            "nodes": nodes,
            "alive_nodes": sum(n.alive for n in view.nodes),
            "resources_total": totals,
            "resources_available": available,
            "authorized": req.authorized(),
        }
    )


# -- the state API ----------------------------------------------------------------------------------
async def _state(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A state API call, in a thread (it runs its own event loop), with its errors as HTTP errors."""
    from aioray.util.state.exception import RayStateApiException

    try:
        return await asyncio.to_thread(functools.partial(call, *args, **kwargs))
    except ValueError as e:  # a bad filter or limit
        raise HttpError(400, str(e)) from None
    except RayStateApiException as e:
        raise HttpError(502, str(e)) from None
    except (ConnectionError, OSError) as e:
        raise HttpError(503, f"the cluster does not answer: {e}") from None


def _filters(req: Request, allowed: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """`?state=RUNNING&name=f` as the state API's equality filters; unknown names are refused."""
    out = []
    for key, value in req.query.items():
        if key in ("limit", "detail"):
            continue
        if key not in allowed:
            raise HttpError(400, f"unknown filter {key!r}; one of: {', '.join(allowed)}, limit, detail")
        out.append((key, "=", value))
    return out


def _limit(req: Request) -> int:
    return req.query_int("limit", 100, 1, 10_000)


def _rows(rows: list[Any]) -> Response:
    return Response.json({"result": [dict(r) for r in rows]})


async def list_nodes(req: Request) -> Response:
    from aioray.util import state

    filters = _filters(req, ("state", "node_id", "node_ip"))
    rows = await _state(
        state.list_nodes, _ctx(req).gcs_address, filters, _limit(req), STATE_TIMEOUT_S, detail=True
    )
    return _rows(rows)


async def list_actors(req: Request) -> Response:
    from aioray.util import state

    filters = _filters(req, ("state", "class_name", "name", "job_id", "node_id"))
    rows = await _state(
        state.list_actors,
        _ctx(req).gcs_address,
        filters,
        _limit(req),
        STATE_TIMEOUT_S,
        detail=True,
        raise_on_missing_output=False,
    )
    return _rows(rows)


async def get_actor(req: Request) -> Response:
    from aioray.util import state

    actor_id = _hex_id(req, "actor_id")
    row = await _state(state.get_actor, actor_id, _ctx(req).gcs_address, STATE_TIMEOUT_S)
    if row is None:
        raise HttpError(404, f"no actor {actor_id}")
    return Response.json(dict(row))


async def list_tasks(req: Request) -> Response:
    from aioray.util import state

    filters = _filters(req, ("state", "name", "job_id", "actor_id", "node_id", "type", "func_or_class_name"))
    rows = await _state(
        state.list_tasks,
        _ctx(req).gcs_address,
        filters,
        _limit(req),
        STATE_TIMEOUT_S,
        detail=req.query.get("detail", "") in ("1", "true"),
        raise_on_missing_output=False,
    )
    return _rows(rows)


async def get_task(req: Request) -> Response:
    from aioray.util import state

    task_id = _hex_id(req, "task_id")
    found = await _state(state.get_task, task_id, _ctx(req).gcs_address, STATE_TIMEOUT_S)
    if found is None:
        raise HttpError(404, f"no task {task_id} (its events may not have reached the GCS yet)")
    attempts = found if isinstance(found, list) else [found]
    return Response.json({"task_id": task_id, "attempts": [dict(a) for a in attempts]})


async def list_jobs(req: Request) -> Response:
    from aioray.util import state

    rows = await _state(state.list_jobs, _ctx(req).gcs_address, None, _limit(req), STATE_TIMEOUT_S, True)
    return _rows(rows)


async def list_workers(req: Request) -> Response:
    from aioray.util import state

    filters = _filters(req, ("node_id", "worker_type", "pid"))
    rows = await _state(
        state.list_workers,
        _ctx(req).gcs_address,
        filters,
        _limit(req),
        STATE_TIMEOUT_S,
        detail=True,
        raise_on_missing_output=False,
    )
    return _rows(rows)


async def timeline(req: Request) -> Response:
    from aioray._private.timeline import trace_events
    from aioray.util import state

    def build() -> list[dict[str, Any]]:  # in the thread too: 10k tasks take a while to lay out
        tasks = state.list_tasks(
            _ctx(req).gcs_address, None, 10_000, STATE_TIMEOUT_S, detail=True, raise_on_missing_output=False
        )
        return trace_events(tasks)

    events = await _state(build)
    headers = {}
    if req.query.get("download", "") in ("1", "true"):
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        headers["Content-Disposition"] = f'attachment; filename="aioray-timeline-{stamp}.json"'
    return Response(json.dumps(events), 200, "application/json", headers)


# -- logs -------------------------------------------------------------------------------------------
async def _node(ctx: DashboardContext, node_id: str) -> pb.NodeInfo:
    view = await _cluster_view(ctx)
    found = [n for n in view.nodes if n.alive and n.node_id.hex().startswith(node_id)]
    if len(found) != 1:
        what = "no live node" if not found else f"{len(found)} live nodes"
        raise HttpError(404, f"{what} with an id starting with {node_id!r}")
    return found[0]


async def list_logs(req: Request) -> Response:
    ctx = _ctx(req)
    node = await _node(ctx, _hex_id(req, "node_id"))
    try:
        listing = await ctx.channels.stub(node.address, pb.LogAgentStub).list_logs(
            pb.Empty(), timeout=RPC_TIMEOUT_S
        )
    except _UNREACHABLE:
        raise HttpError(503, f"the raylet at {node.address} does not answer") from None
    files = [{"name": f.name, "size": f.size, "mtime": f.mtime} for f in listing.files]
    return Response.json({"node_id": node.node_id.hex(), "dir": listing.dir, "files": files})


async def read_log(req: Request) -> Response:
    ctx = _ctx(req)
    node = await _node(ctx, _hex_id(req, "node_id"))
    name = req.query.get("filename", "")
    if not name or "/" in name or name.startswith("."):
        raise HttpError(400, "give filename= (a name from /api/v0/logs?node_id=...)")
    lines = req.query_int("lines", DEFAULT_LOG_LINES, -1, MAX_LOG_LINES)
    follow = req.query.get("follow", "") in ("1", "true")
    agent = ctx.channels.stub(node.address, pb.LogAgentStub)
    try:
        listing = await agent.list_logs(pb.Empty(), timeout=RPC_TIMEOUT_S)
    except _UNREACHABLE:
        raise HttpError(503, f"the raylet at {node.address} does not answer") from None
    if name not in {f.name for f in listing.files}:
        raise HttpError(404, f"node {node.node_id.hex()[:12]} has no log file {name!r}")
    request = pb.ReadLogRequest(name=name, tail_lines=lines, follow=follow)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in agent.read_log(request, timeout=None if follow else RPC_TIMEOUT_S * 3):
                yield chunk.data
        except rpc.GRPCError as e:
            yield f"\n[the raylet refused: {e.message or e.status.name}]\n".encode()
        except _UNREACHABLE:
            yield f"\n[the raylet at {node.address} stopped answering]\n".encode()

    return StreamResponse(chunks())


def setup(router: Router, ctx: DashboardContext) -> None:
    router.get("/api/cluster_status", cluster_status, auth=False)
    router.get("/api/v0/nodes", list_nodes)
    router.get("/api/v0/actors", list_actors)
    router.get("/api/v0/actors/{actor_id}", get_actor)
    router.get("/api/v0/tasks", list_tasks)
    router.get("/api/v0/tasks/timeline", timeline, timeout=60)
    router.get("/api/v0/tasks/{task_id}", get_task)
    router.get("/api/v0/jobs", list_jobs)
    router.get("/api/v0/workers", list_workers)
    router.get("/api/v0/logs", list_logs)
    router.get("/api/v0/logs/file", read_log)


__all__ = ["setup"]
