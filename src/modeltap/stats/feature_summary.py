"""A bounded running summary per feature (the statistics issue replaces it with drift state)."""

from __future__ import annotations

import math
from collections import Counter

from modeltap._types import Value
from modeltap.snapshot import FeatureView

# Distinct categories tracked by name; the rest are folded into one count.
MAX_CATEGORIES = 64
OTHER = "__other__"


class FeatureSummary:
    """Count, missing, mean, std, min and max of numbers, or bounded counts of categories.

    The kind is fixed by the first value seen; a value of the other kind counts as a `type`
    violation and is left out, so the summary is never poisoned by a schema change.
    """

    __slots__ = ("categories", "count", "kind", "max", "min", "missing", "name", "role", "sum", "sum_sq")

    def __init__(self, name: str, role: str) -> None:
        self.name = name
        self.role = role
        self.kind: str | None = None
        self.count = 0
        self.missing = 0
        self.sum = 0.0
        self.sum_sq = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.categories: Counter[str] = Counter()

    def add(self, values: list[Value], weight: int) -> int:
        """Add one column; returns the number of type violations found."""
        wrong_type = 0
        for value in values:
            if value is None:
                self.missing += weight
                continue
            kind = "numeric" if isinstance(value, float) else "categorical"
            if self.kind is None:
                self.kind = kind
            elif kind != self.kind:
                wrong_type += 1
                continue
            self.count += weight
            if isinstance(value, float):
                self.sum += value * weight
                self.sum_sq += value * value * weight
                if value < self.min:
                    self.min = value
                if value > self.max:
                    self.max = value
            else:
                category = ("true" if value else "false") if isinstance(value, bool) else value
                if category in self.categories or len(self.categories) < MAX_CATEGORIES:
                    self.categories[category] += weight
                else:
                    self.categories[OTHER] += weight
        return wrong_type

    def add_moments(
        self, count: int, missing: int, total: float, total_sq: float, low: float, high: float, weight: int
    ) -> None:
        """Add a column's moments computed elsewhere (vectorised over a whole matrix)."""
        if self.kind is None:
            self.kind = "numeric"
        self.missing += missing * weight
        if count:
            self.count += count * weight
            self.sum += total * weight
            self.sum_sq += total_sq * weight
            self.min = min(self.min, low)
            self.max = max(self.max, high)

    def view(self) -> FeatureView:
        numeric = self.kind == "numeric" and self.count > 0
        mean = self.sum / self.count if numeric else None
        std = None
        if numeric and mean is not None:
            std = math.sqrt(max(0.0, self.sum_sq / self.count - mean * mean))
        return FeatureView(
            name=self.name,
            role=self.role,
            kind=self.kind or "unknown",
            count=self.count,
            missing=self.missing,
            mean=mean,
            std=std,
            min=self.min if numeric else None,
            max=self.max if numeric else None,
            top_categories=tuple(self.categories.most_common(10)),
        )
