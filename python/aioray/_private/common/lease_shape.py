"""What a lease is asked for: a resource shape, where it may run, and in which runtime environment.

Owners queue tasks per `LeaseShape` (and function), and every lease request of a queue carries
its shape; the GCS leases actors' workers the same way. The strategy and the runtime environment
travel as serialized protocol messages so that a shape is hashable and cheap to compare.
"""

from __future__ import annotations

from dataclasses import dataclass

from aioray._private.common.resources import ResourceSet
from aioray._proto.aioray import v1 as pb


@dataclass(frozen=True, slots=True)
class LeaseShape:
    resources: ResourceSet
    strategy: bytes = b""  # a serialized pb.SchedulingStrategy; empty: DEFAULT
    runtime_env: bytes = b""  # a serialized pb.RuntimeEnvInfo; empty: the node's own environment

    def strategy_message(self) -> pb.SchedulingStrategy:
        return pb.SchedulingStrategy().parse(self.strategy) if self.strategy else pb.SchedulingStrategy()

    def runtime_env_message(self) -> pb.RuntimeEnvInfo:
        return pb.RuntimeEnvInfo().parse(self.runtime_env) if self.runtime_env else pb.RuntimeEnvInfo()

    def lease_request(self, owner_address: str, job_id: bytes, retriable: bool) -> pb.LeaseRequest:
        return pb.LeaseRequest(
            resources=pb.ResourceMap(amounts=self.resources.to_dict()),
            owner_address=owner_address,
            job_id=job_id,
            retriable=retriable,
            strategy=self.strategy_message(),
            runtime_env=self.runtime_env_message(),
        )


@dataclass(frozen=True, slots=True)
class Placement:
    """Where and how a task runs, from its options: the shape its leases ask for, the CPUs it is
    given (OMP_NUM_THREADS follows them) and the placement group it runs in, if any."""

    shape: LeaseShape
    num_cpus: float
    placement_group: tuple[bytes, int, bool] | None = None  # (group id, bundle index, capture)


# Actor calls run on the actor's worker: they lease nothing.
ACTOR_CALL_SHAPE = LeaseShape(ResourceSet())

__all__ = ["ACTOR_CALL_SHAPE", "LeaseShape", "Placement"]
