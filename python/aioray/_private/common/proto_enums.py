"""The protocol enums' members, typed.

betterproto's `Enum` is not a `enum.Enum`, so a type checker sees its members
(`pb.LeaseReplyStatus.GRANTED`) as plain ints, which message constructors
refuse. The members that code passes into messages are converted here once.
Comparing a received field with the plain member works either way.
"""

from __future__ import annotations

from aioray._proto.aioray import v1 as pb

_Lease = pb.LeaseReplyStatus
LEASE_GRANTED = _Lease(_Lease.GRANTED)
LEASE_SPILLBACK = _Lease(_Lease.SPILLBACK)
LEASE_INFEASIBLE = _Lease(_Lease.INFEASIBLE)
LEASE_REJECTED = _Lease(_Lease.REJECTED)

_Get = pb.GetObjectReplyStatus
OBJECT_READY = _Get(_Get.READY)
OBJECT_FREED = _Get(_Get.FREED)
OBJECT_LOST = _Get(_Get.LOST)
OBJECT_TIMEOUT = _Get(_Get.TIMEOUT)

_Actor = pb.ActorInfoState
ACTOR_PENDING = _Actor(_Actor.PENDING)
ACTOR_ALIVE = _Actor(_Actor.ALIVE)
ACTOR_RESTARTING = _Actor(_Actor.RESTARTING)
ACTOR_DEAD = _Actor(_Actor.DEAD)
