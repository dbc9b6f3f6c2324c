"""A cumulative explicit-bucket histogram with OpenTelemetry's bucket rule (upper-inclusive)."""

from __future__ import annotations

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
