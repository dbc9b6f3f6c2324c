"""Operational measurements of the processes modeltap runs in (resources)."""
