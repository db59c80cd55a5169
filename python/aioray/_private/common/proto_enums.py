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
LEASE_RUNTIME_ENV_FAILED = _Lease(_Lease.RUNTIME_ENV_FAILED)

_Kind = pb.SchedulingStrategyKind
STRATEGY_DEFAULT = _Kind(_Kind.DEFAULT)
STRATEGY_SPREAD = _Kind(_Kind.SPREAD)
STRATEGY_NODE_AFFINITY = _Kind(_Kind.NODE_AFFINITY)
STRATEGY_NODE_LABEL = _Kind(_Kind.NODE_LABEL)

_Op = pb.LabelConstraintOp
LABEL_IN = _Op(_Op.IN)
LABEL_NOT_IN = _Op(_Op.NOT_IN)
LABEL_EXISTS = _Op(_Op.EXISTS)
LABEL_DOES_NOT_EXIST = _Op(_Op.DOES_NOT_EXIST)

_PgStrategy = pb.PlacementGroupInfoStrategy
PG_PACK = _PgStrategy(_PgStrategy.PACK)
PG_SPREAD = _PgStrategy(_PgStrategy.SPREAD)
PG_STRICT_PACK = _PgStrategy(_PgStrategy.STRICT_PACK)
PG_STRICT_SPREAD = _PgStrategy(_PgStrategy.STRICT_SPREAD)

_PgState = pb.PlacementGroupInfoState
PG_PENDING = _PgState(_PgState.PENDING)
PG_CREATED = _PgState(_PgState.CREATED)
PG_REMOVED = _PgState(_PgState.REMOVED)
PG_RESCHEDULING = _PgState(_PgState.RESCHEDULING)

_Worker = pb.WorkerInfoState
WORKER_STARTING = _Worker(_Worker.STARTING)
WORKER_IDLE = _Worker(_Worker.IDLE)
WORKER_LEASED = _Worker(_Worker.LEASED)
