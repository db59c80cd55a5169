"""Job submission on the dashboard: `manager` runs the jobs, `routes` serves Ray's job REST API."""
