"""``aioray.get_runtime_context()``: who and where the calling code runs."""

from __future__ import annotations

import json
from typing import Any

from aioray._private.core_worker import object_ref


class RuntimeContext:
    """Ids of the job, node, worker and (inside a task) task of the caller, as hex strings."""

    def get_job_id(self) -> str:
        """The caller's job: a driver's own, or in a worker the job of the task (or actor) it runs."""
        core = object_ref.global_worker()
        job_id: bytes = core.job_id
        if not job_id and core.executor is not None:
            job_id = core.executor.current_job_id()
        return job_id.hex()

    def get_node_id(self) -> str:
        return object_ref.global_worker().node_id.hex()

    def get_worker_id(self) -> str:
        return object_ref.global_worker().worker_id.hex()

    def get_task_id(self) -> str | None:
        core = object_ref.global_worker()
        if core.executor is None or core.executor.context.task_id is None:
            return None
        return core.executor.context.task_id.hex()

    def get_task_name(self) -> str | None:
        """The name of the running task (its ``name=`` option, else the function's name)."""
        core = object_ref.global_worker()
        if core.executor is None or core.executor.context.task_id is None:
            return None
        return core.executor.context.task_name

    def get_actor_id(self) -> str | None:
        """The id of the actor the caller runs in, or None outside actors."""
        core = object_ref.global_worker()
        if core.executor is None or core.executor.actor_id is None:
            return None
        return core.executor.actor_id.hex()

    def is_canceled(self) -> bool:
        """Whether the running task or actor method was cancelled (``aioray.cancel``).

        A sync or threaded actor's method is not interrupted by a cancel: it can check this and stop
        early (its caller gets TaskCancelledError either way). Raises RuntimeError in a driver, and
        in an async actor, where a cancel raises asyncio.CancelledError in the method instead."""
        core = object_ref.global_worker()
        executor = core.executor
        if executor is None or executor.context.task_id is None:
            raise RuntimeError("is_canceled() can only be called inside a task or an actor method")
        if executor.hosts_async_actor:
            raise RuntimeError(
                "is_canceled() is not available in an async actor: a cancel raises asyncio.CancelledError there"
            )
        return executor.context.task_id in executor.cancelled

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators assigned to the running task or actor, by resource: ``{"GPU": ["0"]}``."""
        return {"GPU": [str(i) for i in object_ref.global_worker().current_gpu_ids()]}

    def get_placement_group_id(self) -> str | None:
        """The hex id of the placement group the running task or actor is in, if any."""
        group = object_ref.global_worker().current_placement_group()
        return None if group is None else group[0].hex()

    @property
    def runtime_env(self) -> Any:
        """The runtime_env the caller runs in, as Ray gives it: packages as their ``gcs://`` URIs, the
        job's fields merged under the task's or actor's own."""
        from aioray._private.runtime_env import current_runtime_env
        from aioray.runtime_env import RuntimeEnv

        return RuntimeEnv(**current_runtime_env(object_ref.global_worker()))

    def get_runtime_env_string(self) -> str:
        """The runtime_env the caller runs in, as JSON."""
        return json.dumps(dict(self.runtime_env))

    @property
    def namespace(self) -> str:
        return object_ref.global_worker().namespace

    def get(self) -> dict[str, str | None]:
        return {
            "job_id": self.get_job_id(),
            "node_id": self.get_node_id(),
            "worker_id": self.get_worker_id(),
            "task_id": self.get_task_id(),
        }


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext()


def get_gpu_ids() -> list[int]:
    """The GPU ids assigned to the running task or actor (its CUDA_VISIBLE_DEVICES); [] elsewhere."""
    return list(object_ref.global_worker().current_gpu_ids())
