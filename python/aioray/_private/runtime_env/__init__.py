"""Runtime environments, the driver's side: checking a ``runtime_env``, packaging its local paths,
uploading them through the GCS and merging it with the parent's (see `resolver`). Nodes set the
environments up in `aioray._private.raylet.runtime_env_agent`."""

from aioray._private.runtime_env.resolver import current_runtime_env, set_job_env, wire_for
from aioray._private.runtime_env.validation import parse_runtime_env

__all__ = ["current_runtime_env", "parse_runtime_env", "set_job_env", "wire_for"]
