"""The rolling mean of a prediction over its last `w` values (STATS.md, default w = 1000)."""

from __future__ import annotations

import numpy as np

DEFAULT_WINDOW = 1000
# Outputs followed this way per model version (class-probability vectors can be wide).
MAX_TRACKED_OUTPUTS = 16


class RollingMean:
    """Example::

    tail = RollingMean(1000)
    tail.add(np.array([0.2, 0.4]))
    tail.mean  # 0.3
    """

    __slots__ = ("_filled", "_position", "_values")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        self._values = np.zeros(size, dtype=np.float64)
        self._position = 0
        self._filled = 0

    def add(self, values: np.ndarray) -> None:
        """Append finite values (non-finite ones are missing, not predictions)."""
        finite = values[np.isfinite(values)]
        size = self._values.size
        if finite.size >= size:
            self._values[:] = finite[-size:]
            self._position, self._filled = 0, size
            return
        end = self._position + finite.size
        if end <= size:
            self._values[self._position : end] = finite
        else:
            split = size - self._position
            self._values[self._position :] = finite[:split]
            self._values[: end - size] = finite[split:]
        self._position = end % size
        self._filled = min(size, self._filled + finite.size)

    @property
    def mean(self) -> float | None:
        if self._filled == 0:
            return None
        if self._filled < self._values.size:
            return float(self._values[: self._filled].mean())
        return float(self._values.mean())
