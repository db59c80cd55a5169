"""aioray: an asyncio-native distributed task and actor framework in the design of Ray Core.

Async: ``async with aioray.Cluster() as cluster: ref = f.remote(x); await ref``.
Sync, Ray-compatible: ``import aioray as ray; ray.init(); ray.get(f.remote(x))``.
"""

from importlib.metadata import PackageNotFoundError, version

from aioray import actor, exceptions, util
from aioray._private.actor import ActorClass, ActorHandle, ActorProxy, method
from aioray._private.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    stats,
    wait,
)
from aioray._private.cluster import Cluster, connect
from aioray._private.common import message_access
from aioray._private.core_worker.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from aioray._private.core_worker.object_ref import ObjectRef, shield
from aioray._private.remote_function import RemoteFunction
from aioray._private.runtime_context import get_gpu_ids, get_runtime_context
from aioray._private.timeline import timeline
from aioray.exceptions import (
    ActorDiedError,
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    ObjectStoreFullError,
    OwnerDiedError,
    RayActorError,
    RayError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

# Every aioray process imports this package first; messages built before this behave the same.
message_access.install()

try:
    __version__ = version("aioray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ActorClass",
    "ActorDiedError",
    "ActorHandle",
    "ActorProxy",
    "Cluster",
    "DynamicObjectRefGenerator",
    "GetTimeoutError",
    "NodeDiedError",
    "ObjectLostError",
    "ObjectRef",
    "ObjectRefGenerator",
    "ObjectStoreFullError",
    "OwnerDiedError",
    "RayActorError",
    "RayError",
    "RayTaskError",
    "RemoteFunction",
    "TaskCancelledError",
    "WorkerCrashedError",
    "__version__",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "connect",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shield",
    "shutdown",
    "stats",
    "timeline",
    "util",
    "wait",
]
