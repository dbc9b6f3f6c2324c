"""A cumulative explicit-bucket histogram with OpenTelemetry's bucket rule (upper-inclusive)."""

from __future__ import annotations

import bisect
import math


class ExplicitHistogram:
    """Counts per bucket `(bounds[i-1], bounds[i]]`, plus count, sum, min and max.

    The bucket of x is `bisect_left(bounds, x)`, the OpenTelemetry SDK's rule, so a value equal
    to a bound falls in the bucket that bound closes.
    """

    __slots__ = ("bounds", "count", "counts", "max", "min", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float, weight: int = 1) -> None:
        if not math.isfinite(value):
            return
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.count += weight
        self.sum += value * weight
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
