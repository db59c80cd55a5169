"""The state API (Ray's ``ray.util.state``): list, get and summarize what the cluster holds.

``list_*`` take ``filters=[(column, "=" | "!=", value)]`` (all must hold; only filterable columns;
strings compare case-insensitively), ``limit`` (100), ``detail`` (every column, a task's
``events``), ``timeout`` (seconds) and ``raise_on_missing_output``: when a source did not answer
(an owner or raylet that is gone) or the GCS dropped task events (full buffers, its task table's
bound), the answer is partial and, as in Ray, this raises `RayStateApiException`; with False it
warns and returns what it has. Results are dict records that also read as attributes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import cloudpickle

from aioray._private.common import serialization, state_query
from aioray._private.common import task_events as te
from aioray._private.common.jobs import JobDetails, job_details
from aioray._private.core_worker.object_ref import ObjectRef
from aioray._proto.aioray import v1 as pb
from aioray.util.state import _sources
from aioray.util.state.common import (
    DEFAULT_LIMIT,
    DEFAULT_RPC_TIMEOUT,
    ActorState,
    JobState,
    NodeState,
    ObjectState,
    PlacementGroupState,
    StateSchema,
    TaskState,
    WorkerState,
)
from aioray.util.state.exception import RayStateApiException

Filters = Sequence[tuple[str, str, Any]] | None
_ACTOR_STATES = {0: "PENDING_CREATION", 1: "ALIVE", 2: "RESTARTING", 3: "DEAD"}
_PG_STATES = {0: "PENDING", 1: "CREATED", 2: "REMOVED", 3: "RESCHEDULING"}
_PG_STRATEGIES = {0: "PACK", 1: "SPREAD", 2: "STRICT_PACK", 3: "STRICT_SPREAD"}
_WORKER_STATES = {0: "STARTING", 1: "IDLE", 2: "LEASED"}


def _ms(seconds: float) -> int | None:
    return int(seconds * 1000) if seconds else None


def _host(address: str) -> str:
    return address.rpartition(":")[0]


# -- rows of each resource, from its source ---------------------------------------------------------


def _node_row(n: pb.NodeInfo) -> dict[str, Any]:
    ip = _host(n.address)
    return {
        "node_id": n.node_id.hex(),
        "node_ip": ip,
        "is_head_node": n.is_head,
        "state": "ALIVE" if n.alive else "DEAD",
        "state_message": None,
        "node_name": ip,
        "resources_total": dict(n.total.amounts),
        "labels": dict(n.labels),
        "start_time_ms": _ms(n.start_time),
        "end_time_ms": None,
    }


def _actor_row(a: pb.ActorInfo, pids: dict[bytes, int]) -> dict[str, Any]:
    try:
        class_name = cloudpickle.loads(a.handle_meta).class_name if a.handle_meta else ""
    except Exception:  # a class this process cannot import
        class_name = ""
    death = None
    if a.death_cause:
        try:
            err, _ = serialization.deserialize(a.death_cause)
            death = {"error_type": te.error_type_of(err), "error_message": str(err)}
        except Exception as e:
            death = {"error_type": "ACTOR_DIED", "error_message": f"(unreadable: {e})"}
    alive = a.state in (1, 2)
    return {
        "actor_id": a.actor_id.hex(),
        "class_name": class_name,
        "state": _ACTOR_STATES.get(int(a.state), "DEPENDENCIES_UNREADY"),
        "job_id": a.job_id.hex() if a.job_id else None,
        "name": a.name,
        "node_id": a.node_id.hex() if a.node_id and alive else None,
        "pid": pids.get(a.worker_id) if alive else None,
        "ray_namespace": a.namespace,
        "serialized_runtime_env": None,
        "required_resources": dict(a.required_resources.amounts),
        "death_cause": death,
        "is_detached": a.detached,
        "placement_group_id": None,
        "repr_name": "",
        "num_restarts": a.num_restarts,
        "num_restarts_due_to_lineage_reconstruction": 0,
        "num_restarts_due_to_node_preemption": 0,
    }


def _job_row(job: JobDetails) -> dict[str, Any]:
    """A submitted job (its status from the job manager, its driver linked by submission id) or a
    driver that connected by itself: Ray's rows for both (common/jobs.py)."""
    row = job.to_json()
    return {key: row.get(key) for key in JobState.DETAIL}


def _pg_row(g: pb.PlacementGroupInfo) -> dict[str, Any]:
    stats = g.stats
    return {
        "placement_group_id": g.placement_group_id.hex(),
        "name": g.name,
        "creator_job_id": g.job_id.hex(),
        "state": _PG_STATES.get(int(g.state), "PENDING"),
        "bundles": [
            {
                "bundle_id": f"{g.placement_group_id.hex()}_{b.bundle_index}",
                "node_id": b.node_id.hex() if b.node_id else None,
                "unit_resources": dict(b.resources.amounts),
            }
            for b in g.bundles
        ],
        "is_detached": g.detached,
        "stats": {
            "end_to_end_creation_latency_ms": stats.creation_latency_s * 1000.0,
            "scheduling_latency_ms": stats.scheduling_latency_s * 1000.0,
            "scheduling_attempt": stats.scheduling_attempts,
            "highest_retry_delay_ms": stats.highest_retry_delay_s * 1000.0,
            "scheduling_state": stats.scheduling_state or "QUEUED",
        },
        "topology_strategy": {},
        "topology_assignments": {},
    }


def _worker_rows(
    lists: list[pb.WorkerList], jobs: list[pb.JobInfo], nodes: list[pb.NodeInfo]
) -> list[dict[str, Any]]:
    ips = {n.node_id: _host(n.address) for n in nodes}
    rows = []
    for wl in lists:
        for w in wl.workers:
            rows.append(
                {
                    "worker_id": w.worker_id.hex(),
                    "is_alive": True,
                    "worker_type": "WORKER",
                    "exit_type": None,
                    "node_id": wl.node_id.hex(),
                    "ip": ips.get(wl.node_id, _host(w.address)),
                    "pid": w.pid,
                    "exit_detail": None,
                    "worker_launch_time_ms": _ms(w.start_time),
                    "worker_launched_time_ms": _ms(w.start_time),
                    "start_time_ms": _ms(w.start_time),
                    "end_time_ms": None,
                    "debugger_port": None,
                    "num_paused_threads": None,
                    # Not in Ray: what the raylet is doing with it.
                    "state": _WORKER_STATES.get(int(w.state), "STARTING"),
                }
            )
    for j in jobs:
        rows.append(
            {
                "worker_id": j.job_id.hex(),  # a driver is known by its job here
                "is_alive": not j.is_dead,
                "worker_type": "DRIVER",
                "exit_type": "INTENDED_USER_EXIT" if j.is_dead else None,
                "node_id": None,
                "ip": _host(j.driver_address),
                "pid": j.driver_pid,
                "start_time_ms": _ms(j.start_time),
                "end_time_ms": _ms(j.end_time),
            }
        )
    return rows


# -- the queries -------------------------------------------------------------------------------------


def _finish(
    schema: type[StateSchema],
    what: str,
    rows: list[dict[str, Any]],
    filters: Filters,
    limit: int,
    detail: bool,
    failures: list[str],
    raise_on_missing_output: bool,
) -> list[Any]:
    kept, _ = state_query.select(rows, state_query.check_filters(filters, schema.FILTERABLE, what), limit)
    _missing(what, failures, raise_on_missing_output)
    columns = schema.list_columns(detail)
    return [schema(state_query.shape(r, columns)) for r in kept]


def _list(
    schema: type[StateSchema],
    what: str,
    address: str | None,
    timeout: float,
    query: Callable[[_sources.Sources], Coroutine[Any, Any, list[dict[str, Any]]]],
    filters: Filters,
    limit: int,
    detail: bool,
    raise_on_missing_output: bool,
    explain: bool,
) -> list[Any]:
    """One `list_*` call: ask the sources, then filter, cut and shape the rows (`_explain` says how many)."""
    rows, failures = _query(address, timeout, query)
    out = _finish(
        schema, what, rows, filters, state_query.check_limit(limit), detail, failures, raise_on_missing_output
    )
    if explain:
        print(
            f"list_{what.replace(' ', '_')}: {len(out)} of {len(rows)} shown ({len(failures)} source(s) missing)"
        )
    return out


def _missing(what: str, failures: list[str], raise_on_missing_output: bool) -> None:
    if not failures:
        return
    message = (
        f"Failed to retrieve all {what} from the cluster: {len(failures)} source(s) did not answer "
        f"({'; '.join(failures[:5])}). Set raise_on_missing_output=False to get the partial answer."
    )
    if raise_on_missing_output:
        raise RayStateApiException(message)
    warnings.warn(message, stacklevel=3)


def _query(
    address: str | None, timeout: float, query: Callable[[_sources.Sources], Coroutine[Any, Any, Any]]
) -> tuple[Any, list[str]]:
    return _sources.run(address, timeout, query)


def list_tasks(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[TaskState]:
    """Task attempts the GCS task table knows (one row per attempt), oldest first."""
    checked = state_query.check_filters(filters, te.TASK_FILTERABLE, "tasks")
    query = {"filters": checked, "limit": state_query.check_limit(limit), "detail": detail}
    answer, _ = _query(address, timeout, lambda s: s.tasks(query))
    dropped = answer["total"] - answer["num_after_truncation"]
    if _explain:
        print(
            f"list_tasks: {len(answer['result'])} of {answer['num_filtered']} matching, {answer['total']} in all"
        )
    if dropped:
        _missing(
            "tasks",
            [
                f"{dropped} task attempt(s) or event(s) were dropped (full event buffers or the task table's bound)"
            ],
            raise_on_missing_output,
        )
    return [TaskState(r) for r in answer["result"]]


def list_actors(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[ActorState]:
    async def query(s: _sources.Sources) -> list[dict[str, Any]]:
        actors, nodes = await s.actors(), await s.nodes()
        pids = {w.worker_id: w.pid for wl in await s.workers(nodes) for w in wl.workers}
        return [_actor_row(a, pids) for a in actors]

    return _list(
        ActorState,
        "actors",
        address,
        timeout,
        query,
        filters,
        limit,
        detail,
        raise_on_missing_output,
        _explain,
    )


def list_nodes(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[NodeState]:
    async def query(s: _sources.Sources) -> list[dict[str, Any]]:
        return [_node_row(n) for n in await s.nodes()]

    return _list(
        NodeState, "nodes", address, timeout, query, filters, limit, detail, raise_on_missing_output, _explain
    )


def list_jobs(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[JobState]:
    async def query(s: _sources.Sources) -> list[dict[str, Any]]:
        return [_job_row(j) for j in job_details(await s.job_list())]

    return _list(
        JobState, "jobs", address, timeout, query, filters, limit, detail, raise_on_missing_output, _explain
    )


def list_placement_groups(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[PlacementGroupState]:
    async def query(s: _sources.Sources) -> list[dict[str, Any]]:
        return [_pg_row(g) for g in await s.placement_groups()]

    return _list(
        PlacementGroupState, "placement groups", address, timeout, query, filters, limit, detail,
        raise_on_missing_output, _explain,
    )  # fmt: skip


def list_workers(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[WorkerState]:
    """Live worker processes of every node, and the drivers (live and finished) of the job table."""

    async def query(s: _sources.Sources) -> list[dict[str, Any]]:
        nodes = await s.nodes()
        lists, jobs = await s.workers(nodes), await s.jobs()
        return _worker_rows(lists, jobs, nodes)

    return _list(
        WorkerState,
        "workers",
        address,
        timeout,
        query,
        filters,
        limit,
        detail,
        raise_on_missing_output,
        _explain,
    )


def list_objects(
    address: str | None = None,
    filters: Filters = None,
    limit: int = DEFAULT_LIMIT,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    detail: bool = False,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> list[ObjectState]:
    """One row per (object, process that references it), from the owners' and borrowers' tables."""

    async def query(s: _sources.Sources) -> list[dict[str, Any]]:
        return await s.objects()

    return _list(
        ObjectState,
        "objects",
        address,
        timeout,
        query,
        filters,
        limit,
        detail,
        raise_on_missing_output,
        _explain,
    )


# -- get --------------------------------------------------------------------------------------------


def get_task(
    id: str | ObjectRef,
    address: str | None = None,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    _explain: bool = False,
) -> TaskState | list[TaskState] | None:
    """The task's attempt (a list when it ran more than once), with its events; None if unknown."""
    task_id = id if isinstance(id, str) else id.task_id().hex()
    found = list_tasks(
        address,
        [("task_id", "=", task_id)],
        state_query.MAX_LIMIT,
        timeout,
        detail=True,
        raise_on_missing_output=False,
        _explain=_explain,
    )
    if not found:
        return None
    return found[0] if len(found) == 1 else found


def get_actor(
    id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False
) -> ActorState | None:
    found = list_actors(
        address,
        [("actor_id", "=", id)],
        1,
        timeout,
        detail=True,
        raise_on_missing_output=False,
        _explain=_explain,
    )
    return found[0] if found else None


def get_node(
    id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False
) -> NodeState | None:
    found = list_nodes(
        address,
        [("node_id", "=", id)],
        1,
        timeout,
        detail=True,
        raise_on_missing_output=False,
        _explain=_explain,
    )
    return found[0] if found else None


# -- summaries ---------------------------------------------------------------------------------------


def summarize_tasks(
    address: str | None = None,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> dict[str, Any]:
    """Task attempts by name and state (Ray's TaskSummaries, under the key "cluster")."""
    tasks = list_tasks(
        address,
        None,
        state_query.MAX_LIMIT,
        timeout,
        raise_on_missing_output=raise_on_missing_output,
        _explain=_explain,
    )
    summary: dict[str, dict[str, Any]] = {}
    totals = {te.NORMAL_TASK: 0, te.ACTOR_TASK: 0, te.ACTOR_CREATION_TASK: 0}
    for t in tasks:
        key = t["name"] or t["func_or_class_name"]
        entry = summary.setdefault(key, {"func_or_class_name": key, "type": t["type"], "state_counts": {}})
        entry["state_counts"][t["state"]] = entry["state_counts"].get(t["state"], 0) + 1
        totals[t["type"]] = totals.get(t["type"], 0) + 1
    return {
        "cluster": {
            "summary": summary,
            "total_tasks": totals[te.NORMAL_TASK],
            "total_actor_tasks": totals[te.ACTOR_TASK],
            "total_actor_scheduled": totals[te.ACTOR_CREATION_TASK],
            "summary_by": "func_name",
        }
    }


def summarize_actors(
    address: str | None = None,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> dict[str, Any]:
    """Actors by class and state (Ray's ActorSummaries, under the key "cluster")."""
    actors = list_actors(
        address,
        None,
        state_query.MAX_LIMIT,
        timeout,
        raise_on_missing_output=raise_on_missing_output,
        _explain=_explain,
    )
    summary: dict[str, dict[str, Any]] = {}
    for a in actors:
        entry = summary.setdefault(a["class_name"], {"class_name": a["class_name"], "state_counts": {}})
        entry["state_counts"][a["state"]] = entry["state_counts"].get(a["state"], 0) + 1
    return {"cluster": {"summary": summary, "total_actors": len(actors), "summary_by": "class"}}


def summarize_objects(
    address: str | None = None,
    timeout: int = DEFAULT_RPC_TIMEOUT,
    raise_on_missing_output: bool = True,
    _explain: bool = False,
) -> dict[str, Any]:
    """Objects by call site (aioray records none: one group, "disabled"), as Ray's ObjectSummaries."""
    objects = list_objects(
        address,
        None,
        state_query.MAX_LIMIT,
        timeout,
        raise_on_missing_output=raise_on_missing_output,
        _explain=_explain,
    )
    summary: dict[str, dict[str, Any]] = {}
    workers: dict[str, set[Any]] = {}
    nodes: dict[str, set[Any]] = {}
    total_mb = 0.0
    for o in objects:
        key = o["call_site"]
        entry = summary.setdefault(
            key,
            {
                "total_objects": 0, "total_size_mb": 0.0, "total_num_workers": 0, "total_num_nodes": 0,
                "task_state_counts": {}, "task_attempt_number_counts": {}, "ref_type_counts": {},
            },
        )  # fmt: skip
        entry["total_objects"] += 1
        for counts, value in (
            ("task_state_counts", o["task_status"]),
            ("task_attempt_number_counts", str(o["attempt_number"])),
            ("ref_type_counts", o["reference_type"]),
        ):
            entry[counts][value] = entry[counts].get(value, 0) + 1
        if o["object_size"] != -1:
            entry["total_size_mb"] += o["object_size"] / 2**20
            total_mb += o["object_size"] / 2**20
        workers.setdefault(key, set()).add(o["pid"])
        nodes.setdefault(key, set()).add(o["ip"])
    for key, entry in summary.items():
        entry["total_num_workers"], entry["total_num_nodes"] = len(workers[key]), len(nodes[key])
    return {
        "cluster": {
            "summary": summary,
            "total_objects": len(objects),
            "total_size_mb": total_mb,
            "callsite_enabled": False,
            "summary_by": "callsite",
        }
    }


__all__ = [
    "get_actor",
    "get_node",
    "get_task",
    "list_actors",
    "list_jobs",
    "list_nodes",
    "list_objects",
    "list_placement_groups",
    "list_tasks",
    "list_workers",
    "summarize_actors",
    "summarize_objects",
    "summarize_tasks",
]
