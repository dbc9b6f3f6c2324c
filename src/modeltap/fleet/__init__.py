"""The fleet view: what a user's own backend needs to judge all replicas as one.

modeltap exports each replica's bucket counts; this package writes the Prometheus rules
(`modeltap rules`) and the Grafana dashboard (`modeltap dashboard`) that sum them across replicas
and recompute drift exactly as one modeltap process would (docs/backends.md)."""
