"""Online statistics: numpy/scipy only, no I/O, no asyncio, no OpenTelemetry."""

from modeltap.stats.aggregator import StatsAggregator
from modeltap.stats.observation import Observation

__all__ = ["Observation", "StatsAggregator"]
