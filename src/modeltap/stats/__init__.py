"""Online statistics: numpy/scipy only, no I/O, no asyncio, no OpenTelemetry."""

from modeltap.stats.aggregator import StatsAggregator

__all__ = ["StatsAggregator"]
