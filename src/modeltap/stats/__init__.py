"""Online statistics: numpy/scipy only, no asyncio, no OpenTelemetry; file access only at the edge
(`reference.py` reads and writes profiles, `profile_io.py` reads training tables)."""

from modeltap.stats.aggregator import StatsAggregator

__all__ = ["StatsAggregator"]
