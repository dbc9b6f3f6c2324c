"""Counts for one categorical feature: the reference vocabulary, `__other__` and `__missing__`.

Categories outside the vocabulary are never labels: they count as `__other__` and are not kept,
so memory stays bounded with a million distinct values. `SpaceSaving` (Metwally, Agrawal,
El Abbadi, 2005) tracks the most frequent of them where the user chose to expose values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modeltap.stats.window import WindowRing


class SpaceSaving:
    """Top-k heavy hitters in O(capacity) memory; each estimate overcounts by at most `error`.

    Example::

        summary = SpaceSaving(4)
        for value in stream:
            summary.add(value)
        summary.top(3)  # [(value, estimated count), ...]
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}

    def add(self, item: str, weight: int = 1) -> None:
        counts = self._counts
        if item in counts:
            counts[item] += weight
            return
        if len(counts) < self.capacity:
            counts[item] = weight
            self._errors[item] = 0
            return
        victim = min(counts, key=counts.__getitem__)
        floor = counts.pop(victim)
        self._errors.pop(victim, None)
        counts[item] = floor + weight
        self._errors[item] = floor

    def top(self, k: int) -> list[tuple[str, int]]:
        return sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]

    def error(self, item: str) -> int:
        return self._errors.get(item, 0)


class CategoricalBank:
    """Example::

    bank = CategoricalBank(("basic", "pro"), slots=15, slot_s=60.0)
    bank.add(["pro", None, "enterprise"], weight=1, now=time.monotonic())
    bank.cumulative  # [basic, pro, __other__, __missing__] = [0, 1, 1, 1]
    """

    def __init__(self, vocabulary: Sequence[str], slots: int, slot_s: float) -> None:
        self.vocabulary = tuple(vocabulary)
        self._index = {value: i for i, value in enumerate(self.vocabulary)}
        self.other = len(self.vocabulary)
        self.missing = self.other + 1
        self.cumulative = np.zeros(self.missing + 1, dtype=np.int64)
        self.ring = WindowRing(slots, slot_s, self.missing + 1)

    def add(self, categories: Sequence[str | None], weight: int, now: float) -> tuple[int, int]:
        """Add canonical categories (None = missing); returns (missing, new) counts."""
        index = self._index
        positions = np.empty(len(categories), dtype=np.int64)
        new = 0
        for i, category in enumerate(categories):
            if category is None:
                positions[i] = self.missing
                continue
            position = index.get(category)
            if position is None:
                positions[i] = self.other
                new += 1
            else:
                positions[i] = position
        counts = np.bincount(positions, minlength=self.cumulative.size)
        if weight != 1:
            counts *= weight
        self.cumulative += counts
        self.ring.add(counts, now)
        return int(counts[self.missing]) // max(weight, 1), new

    def window(self, now: float) -> np.ndarray:
        return self.ring.window(now)

    @property
    def nbytes(self) -> int:
        return int(self.cumulative.nbytes) + self.ring.nbytes
