"""Sizes, thresholds and timeouts that more than one component must agree on."""

import os

# Values up to this size travel inline (in task replies, GetObject answers) and live in the owner's
# memory; larger ones go to a node's shared-memory store.
INLINE_LIMIT = 100 * 1024

# The raylet spills pinned primary copies to disk once the store is fuller than this fraction;
# a worker that writes a large object and sees the store past it asks the raylet to start.
SPILL_THRESHOLD = 0.8
# ... and spills until usage is down to this fraction.
SPILL_TARGET = 0.6

# How long a GCS client (raylet, driver, worker) keeps retrying a call while the GCS is unreachable,
# e.g. while its supervisor restarts it, before the call fails (Ray: gcs_rpc_server_reconnect_timeout_s).
GCS_RECONNECT_TIMEOUT_S = float(os.environ.get("AIORAY_GCS_RECONNECT_TIMEOUT_S", "60"))

# How long an actor that exits gracefully (exit_actor(), __ray_terminate__, its last handle gone) may
# spend in `__ray_shutdown__` and atexit handlers before its worker is killed
# (Ray: actor_graceful_shutdown_timeout_ms).
ACTOR_GRACEFUL_SHUTDOWN_TIMEOUT_S = (
    float(os.environ.get("AIORAY_ACTOR_GRACEFUL_SHUTDOWN_TIMEOUT_MS", "30000")) / 1000
)
