"""aioray: an asyncio-native distributed task and actor framework in the design of Ray Core."""

from importlib.metadata import PackageNotFoundError, version

from aioray import exceptions
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

try:
    __version__ = version("aioray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ActorDiedError",
    "GetTimeoutError",
    "NodeDiedError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "OwnerDiedError",
    "RayActorError",
    "RayError",
    "RayTaskError",
    "TaskCancelledError",
    "WorkerCrashedError",
    "__version__",
    "exceptions",
]
