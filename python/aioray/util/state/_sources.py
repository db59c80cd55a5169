"""Where the state API's answers come from: the GCS tables, the raylets and the owners themselves.

Tasks come from the GCS task table (`gcs.task_table`); nodes, actors, jobs and placement groups
from their GCS tables; workers from each live raylet; objects from every owner's ownership table
(`core_worker.memory`), asked of each registered worker (found through the raylets) and each running
driver (found in the job table), the primary copies' pinned or spilled status asked of the
raylets holding them. A source that does not answer is named in ``failures``: the answer is
partial, and the caller raises or warns (``raise_on_missing_output``).

Every query runs on an event loop of its own in a helper thread, with a channel pool of its own,
so that it can be called from any thread: a driver's, a task's, the CLI's, even one running an
event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aioray._private import worker_api
from aioray._private.common import process, rpc, serialization
from aioray._private.core_worker import object_ref
from aioray._proto.aioray import v1 as pb
from aioray.util.state.exception import RayStateApiException

T = TypeVar("T")
FANOUT = 32  # concurrent calls to owners and raylets


def resolve_address(address: str | None) -> tuple[str, str]:
    """(GCS address, auth token): of this process's cluster when `address` is None, else of the
    cluster `address` names ("auto": the one `aioray start` recorded on this machine)."""
    core = object_ref.current_worker()
    if address is None and core is not None:
        return core.runtime.gcs_address, core.token
    info = worker_api.read_cluster_file(address)
    if address in (None, "auto"):
        if info is None:
            raise ConnectionError(
                "no aioray cluster to query: call aioray.init(), pass address=, or start one with "
                "`aioray start --head`"
            )
        address = info["gcs_address"]
    token = os.environ.get(process.TOKEN_ENV) or (info or {}).get("token", "")
    return address, token


@dataclass
class Sources:
    channels: rpc.ChannelPool
    gcs_address: str
    timeout: float
    failures: list[str] = field(default_factory=list)

    def gcs(self, stub: Callable[[Any], T]) -> T:
        return self.channels.stub(self.gcs_address, stub)

    async def nodes(self) -> list[pb.NodeInfo]:
        view = await self.gcs(pb.NodeInfoGcsServiceStub).get_cluster_view(pb.Empty(), timeout=self.timeout)
        return list(view.nodes)

    async def tasks(self, query: dict[str, Any]) -> dict[str, Any]:
        stub = self.gcs(pb.TaskInfoGcsServiceStub)
        reply = await stub.get_tasks(pb.Blob(data=serialization.dumps_plain(query)), timeout=self.timeout)
        answer: dict[str, Any] = serialization.loads_plain(reply.data)
        return answer

    async def actors(self) -> list[pb.ActorInfo]:
        reply = await self.gcs(pb.ActorInfoGcsServiceStub).list_actors(pb.Empty(), timeout=self.timeout)
        return list(reply.actors)

    async def jobs(self) -> list[pb.JobInfo]:
        return list((await self.job_list()).jobs)

    async def job_list(self) -> pb.JobList:
        """The drivers' jobs and the submitted jobs' records."""
        reply: pb.JobList = await self.gcs(pb.JobInfoGcsServiceStub).list_jobs(
            pb.Empty(), timeout=self.timeout
        )
        return reply

    async def placement_groups(self) -> list[pb.PlacementGroupInfo]:
        stub = self.gcs(pb.PlacementGroupGcsServiceStub)
        return list((await stub.list_placement_groups(pb.Empty(), timeout=self.timeout)).groups)

    async def _each(self, calls: Sequence[tuple[str, Awaitable[T]]]) -> list[T]:
        """The answers of the calls that succeeded; each that failed is named in `failures`."""
        slots = asyncio.Semaphore(FANOUT)

        async def one(what: str, call: Awaitable[T]) -> T | None:
            async with slots:
                try:
                    return await call
                except Exception as e:
                    self.failures.append(f"{what}: {rpc.translate_error(e, what)}")
                    return None

        answers = await asyncio.gather(*(one(what, call) for what, call in calls))
        return [a for a in answers if a is not None]

    async def workers(self, nodes: list[pb.NodeInfo]) -> list[pb.WorkerList]:
        calls = [
            (
                f"raylet {n.address}",
                self.channels.stub(n.address, pb.NodeManagerStub).get_workers(
                    pb.Empty(), timeout=self.timeout
                ),
            )
            for n in nodes
            if n.alive
        ]
        return await self._each(calls)

    async def objects(self) -> list[dict[str, Any]]:
        nodes = await self.nodes()
        workers, jobs = await asyncio.gather(self.workers(nodes), self.jobs())
        owners = [w.address for wl in workers for w in wl.workers if w.address]
        owners += [j.driver_address for j in jobs if not j.is_dead and j.driver_address]

        async def rows_of(address: str) -> list[dict[str, Any]]:
            stub = self.channels.stub(address, pb.CoreWorkerStub)
            reply = await stub.get_objects_info(pb.Empty(), timeout=self.timeout)
            rows: list[dict[str, Any]] = serialization.loads_plain(reply.data)
            return rows

        answers = await self._each([(f"owner {a}", rows_of(a)) for a in dict.fromkeys(owners)])
        rows = [row for answer in answers for row in answer]
        await self._mark_spilled(rows, {n.node_id.hex(): n.address for n in nodes if n.alive})
        return rows

    async def _mark_spilled(self, rows: list[dict[str, Any]], raylets: dict[str, str]) -> None:
        """Tells the owned store objects' primary copies held in a store (PINNED) from those on disk
        (SPILLED), asking the raylet of each."""
        by_node: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if row["storage"] == "STORE" and row["is_owner"] and row["node_id"] in raylets:
                by_node.setdefault(row["node_id"], []).append(row)

        async def status(node: str, ids: list[bytes]) -> tuple[str, pb.ObjectStatus]:
            stub = self.channels.stub(raylets[node], pb.ObjectManagerStub)
            return node, await stub.get_object_status(pb.ObjectIds(ids=ids), timeout=self.timeout)

        calls = [
            (f"raylet {raylets[node]}", status(node, [bytes.fromhex(r["object_id"]) for r in node_rows]))
            for node, node_rows in by_node.items()
        ]
        for node, reply in await self._each(calls):
            in_store, spilled = {o.hex() for o in reply.in_store}, {o.hex() for o in reply.spilled}
            for row in by_node[node]:
                if row["object_id"] in in_store:
                    row["storage"] = "PINNED"
                elif row["object_id"] in spilled:
                    row["storage"] = "SPILLED"
                else:
                    row["storage"] = "LOST"


def run(
    address: str | None, timeout: float, query: Callable[[Sources], Coroutine[Any, Any, T]]
) -> tuple[T, list[str]]:
    """Runs `query` against the cluster within `timeout` seconds: its answer and the sources that
    failed to answer."""
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    gcs_address, token = resolve_address(address)
    core = object_ref.current_worker()
    if core is not None and core.group_changes.any_pending() and not core.runtime.in_loop_thread():
        # This process's placement group changes not waited for show in what it reads next.
        core.run_sync(core.group_changes.all_settled(), timeout)

    async def main() -> tuple[T, list[str]]:
        channels = rpc.ChannelPool(token)
        sources = Sources(channels, gcs_address, timeout)
        try:
            answer = await asyncio.wait_for(query(sources), timeout)
        except TimeoutError:
            raise RayStateApiException(f"the state query timed out after {timeout}s") from None
        except rpc.GRPCError as e:
            raise RayStateApiException(f"the state query failed: {e.message}") from None
        except rpc.CONNECTION_ERRORS as e:
            raise rpc.translate_error(e, f"the cluster at {gcs_address}") from None
        finally:
            channels.close()
        return answer, sources.failures

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aioray-state") as pool:
        return pool.submit(asyncio.run, main()).result(timeout + 10)


__all__ = ["Sources", "resolve_address", "run"]
