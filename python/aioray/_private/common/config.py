"""Sizes and thresholds that more than one component must agree on."""

# Values up to this size travel inline (in task replies, GetObject answers) and live in the owner's
# memory; larger ones go to a node's shared-memory store.
INLINE_LIMIT = 100 * 1024

# The raylet spills pinned primary copies to disk once the store is fuller than this fraction;
# a worker that writes a large object and sees the store past it asks the raylet to start.
SPILL_THRESHOLD = 0.8
# ... and spills until usage is down to this fraction.
SPILL_TARGET = 0.6
