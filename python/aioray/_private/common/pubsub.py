"""The GCS's publish/subscribe channels: names and what each message carries."""

NODE_CHANNEL = "nodes"  # a NodeInfo whenever a node joins or dies
# A NodeInfo whenever a live node's totals change (placement-group bundles committed or cancelled):
# for the raylets' views only, apart from NODE_CHANNEL, which every core worker follows.
NODE_TOTALS_CHANNEL = "node_totals"
RESOURCE_CHANNEL = "resources"  # every ResourceReport, as raylets send them
VIEW_CHANNEL = "cluster_view"  # a ClusterView: the first message of a subscription that asks for it
# A WorkerDeath whenever a process that may own leases dies: a worker or a driver (reported by its
# raylet), or the driver of a finished job (address only). Raylets release the leases it owned.
WORKER_DEATH_CHANNEL = "worker_deaths"
LOG_CHANNEL_PREFIX = "logs:"  # + a job id (hex): a LogBatch of worker output for that job's driver


def log_channel(job_id_hex: str) -> str:
    """The channel of a job's worker output; `log_channel("")` carries output of no job (a worker's
    own, before it ran a task), which every driver prints, as in Ray."""
    return LOG_CHANNEL_PREFIX + job_id_hex
