"""The GCS's publish/subscribe channels: names and what each message carries."""

NODE_CHANNEL = "nodes"  # a NodeInfo whenever a node joins or dies
RESOURCE_CHANNEL = "resources"  # every ResourceReport, as raylets send them
VIEW_CHANNEL = "cluster_view"  # a ClusterView: the first message of a subscription that asks for it
