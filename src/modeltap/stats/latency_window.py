"""Latency quantiles over the sliding window: one mergeable sketch per tumbling slot."""

from __future__ import annotations

import numpy as np

from modeltap.stats.sketch import QuantileSketch

QUANTILES = (0.5, 0.95, 0.99)


class LatencyWindow:
    """Example::

    window = LatencyWindow(slots=15, slot_s=60.0)
    window.add(np.array([0.004, 0.006]), weight=1, now=time.monotonic())
    p50, p95, p99, peak = window.summary(now=time.monotonic())
    """

    def __init__(self, slots: int, slot_s: float, relative_accuracy: float = 0.01) -> None:
        self.slots = slots
        self.slot_s = slot_s
        self._accuracy = relative_accuracy
        self._sketches: list[QuantileSketch | None] = [None] * slots
        self._numbers: list[int] = [-1] * slots  # absolute slot number each entry holds

    def add(self, durations_s: np.ndarray, weight: int, now: float) -> None:
        number = int(now // self.slot_s)
        position = number % self.slots
        sketch = self._sketches[position]
        if sketch is None or self._numbers[position] != number:
            sketch = self._sketches[position] = QuantileSketch(self._accuracy)
            self._numbers[position] = number
        sketch.add_many(durations_s, weight)

    def merged(self, now: float) -> QuantileSketch:
        newest = int(now // self.slot_s)
        merged = QuantileSketch(self._accuracy)
        for sketch, number in zip(self._sketches, self._numbers, strict=True):
            if sketch is not None and newest - self.slots < number <= newest:
                merged.merge(sketch)
        return merged

    def summary(self, now: float) -> tuple[float | None, float | None, float | None, float | None]:
        """(p50, p95, p99, max) in seconds over the window; None while it is empty."""
        sketch = self.merged(now)
        p50, p95, p99 = sketch.quantiles(QUANTILES)
        return p50, p95, p99, sketch.max


class RateWindow:
    """Requests per second over the sliding window (tumbling slots, like `LatencyWindow`); while
    the series is younger than the window, over the time since its first request."""

    def __init__(self, slots: int, slot_s: float) -> None:
        self.slots = slots
        self.slot_s = slot_s
        self._counts: list[int] = [0] * slots
        self._numbers: list[int] = [-1] * slots
        self._first: float | None = None

    def add(self, requests: int, now: float) -> None:
        if self._first is None:
            self._first = now
        number = int(now // self.slot_s)
        position = number % self.slots
        if self._numbers[position] != number:
            self._counts[position] = 0
            self._numbers[position] = number
        self._counts[position] += requests

    def rate(self, now: float) -> float | None:
        """Requests per second; None before the first request."""
        if self._first is None:
            return None
        newest = int(now // self.slot_s)
        total = sum(
            count
            for count, number in zip(self._counts, self._numbers, strict=True)
            if newest - self.slots < number <= newest
        )
        window_start = (newest - self.slots + 1) * self.slot_s
        covered = now - max(window_start, self._first)
        return total / max(covered, self.slot_s / 10)
