"""Series without a reference (latency p99, error rate) judged by their own history: each
completed tumbling slot adds one value, and the current slot is compared with mu + k sigma of
the earlier ones (STATS.md "Alert levels"; `scores.sigma_level`)."""

from __future__ import annotations

import collections
import math

import numpy as np

from modeltap.stats.scores import Level, sigma_level
from modeltap.stats.sketch import QuantileSketch

HISTORY_SLOTS = 120
# A slot's value is only judged (or kept as history) with at least this many requests in it.
MIN_SLOT_REQUESTS = 50


class SlotHistory:
    """Example::

    history = SlotHistory(slot_s=60.0)
    history.add(durations, errors=2, now=time.monotonic())
    latency_level, error_level = history.levels(k=3.0)
    """

    def __init__(self, slot_s: float) -> None:
        self.slot_s = slot_s
        self._slot: int | None = None
        self._sketch = QuantileSketch()
        self._requests = 0
        self._errors = 0
        self.p99: collections.deque[float] = collections.deque(maxlen=HISTORY_SLOTS)
        self.error_rate: collections.deque[float] = collections.deque(maxlen=HISTORY_SLOTS)

    def _roll(self, now: float) -> None:
        number = int(now // self.slot_s)
        if self._slot is None:
            self._slot = number
        elif number != self._slot:
            if self._requests >= MIN_SLOT_REQUESTS:
                value = self._sketch.quantile(0.99)
                if value is not None:
                    self.p99.append(value)
                self.error_rate.append(self._errors / self._requests)
            self._slot = number
            self._sketch = QuantileSketch()
            self._requests = self._errors = 0

    def add(self, durations_s: np.ndarray, errors: int, weight: int, now: float) -> None:
        self._roll(now)
        self._sketch.add_many(durations_s, weight)
        self._requests += int(durations_s.size) * weight
        self._errors += errors * weight

    def add_counts(self, requests: int, errors: int, weight: int, now: float) -> None:
        """Requests and errors without their latency (a serving process's cold start)."""
        self._roll(now)
        self._requests += requests * weight
        self._errors += errors * weight

    def levels(self, now: float, k: float) -> tuple[Level, Level]:
        """(latency level, error-rate level) of the current slot against the history."""
        self._roll(now)
        if self._requests < MIN_SLOT_REQUESTS:
            return Level.OK, Level.OK
        p99 = self._sketch.quantile(0.99)
        # Quantiles closer than the sketch's relative accuracy (1 %) are one value.
        accuracy = self._sketch.relative_accuracy
        latency = Level.OK
        if p99 is not None:
            latency = sigma_level(np.asarray(self.p99), p99, k, floor=lambda mu: accuracy * abs(mu))
        requests = self._requests
        errors = sigma_level(
            np.asarray(self.error_rate),
            self._errors / requests,
            k,
            floor=lambda mu: _binomial_error(mu, requests),
        )
        return latency, errors


def _binomial_error(rate: float, requests: int) -> float:
    """The standard error of a rate over `requests` at the history's `rate`, and at least one
    request's worth (a history without errors has rate 0 and would have no spread at all)."""
    p = min(max(rate, 1.0 / requests), 1.0)
    return math.sqrt(p * (1.0 - p) / requests)
