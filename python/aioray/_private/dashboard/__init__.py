"""The dashboard: a process on the head serving web pages and a JSON API about the cluster.

It is a client of the GCS (and of the raylets, for workers and logs) like any other; it keeps no
state of its own, so the node's supervisor restarts it freely. `http` is its HTTP/1.1 server and
router, `server` the list of route modules it mounts.
"""
