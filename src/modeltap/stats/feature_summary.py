"""A bounded running summary per feature: moments of numbers, or counts of categories.

Categories are private by default. Values in the reference's vocabulary are shown by name (the
reference vouches for them); any other value is only counted (rows, and distinct values up to a
cap, by hash) and never kept as text, unless the user opted in to `expose_values`: then the most
frequent of them are tracked by a bounded Space-Saving summary, truncated, and shown apart.
"""

from __future__ import annotations

import math
from collections import Counter

from modeltap._types import Value
from modeltap.reference.document import canonical_category
from modeltap.snapshot import FeatureView
from modeltap.stats.categorical_bank import SpaceSaving

# Out-of-vocabulary values tracked by name, only with `expose_values`.
MAX_EXPOSED_VALUES = 64
# Distinct out-of-vocabulary values counted (by hash) before the count says "at least".
MAX_DISTINCT = 1024
# An exposed value is kept truncated to this many characters (payload values can be huge).
MAX_VALUE_CHARS = 64


class FeatureSummary:
    """Count, missing, mean, std, min and max of numbers, or bounded counts of categories.

    The kind comes from the reference when it describes the feature, else from the first value
    seen; a value of the other kind counts as a `type` violation and is left out, so the summary
    is never poisoned by a schema change. A categorical feature takes numbers as categories
    (class labels 0/1 are the categories "0" and "1", as in the reference).

    Example::

        summary = FeatureSummary("plan", "input", kind="categorical", vocabulary=("basic", "pro"))
        summary.add(["pro", "alice@example.com", None], weight=1)   # 0 type violations
        summary.view().top_categories   # (("pro", 1),): the e-mail address is counted, not shown
    """

    __slots__ = (
        "_distinct",
        "categories",
        "count",
        "exposed",
        "kind",
        "m2",
        "max",
        "mean",
        "min",
        "missing",
        "name",
        "other",
        "role",
        "vocabulary",
    )

    def __init__(
        self,
        name: str,
        role: str,
        *,
        kind: str | None = None,
        vocabulary: tuple[str, ...] = (),
        expose_values: bool = False,
    ) -> None:
        self.name = name
        self.role = role
        self.kind = kind
        self.vocabulary = frozenset(vocabulary)
        self.count = 0
        self.missing = 0
        # Mean and sum of squared deviations from it, merged batch by batch (Chan et al.): the
        # textbook sum of squares cancels for values far from 0 (epoch seconds: std 0).
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.categories: Counter[str] = Counter()  # vocabulary values only
        self.other = 0  # rows whose value is outside the vocabulary
        self._distinct: set[int] = set()
        self.exposed = SpaceSaving(MAX_EXPOSED_VALUES) if expose_values else None

    def add(self, values: list[Value], weight: int) -> int:
        """Add one column; returns the number of type violations found."""
        wrong_type = 0
        for value in values:
            if value is None:
                self.missing += weight
                continue
            if self.kind == "categorical":
                self._add_category(value, weight)
                continue
            kind = "numeric" if isinstance(value, float) else "categorical"
            if self.kind is None:
                self.kind = kind
            elif kind != self.kind:
                wrong_type += 1
                continue
            if isinstance(value, float):
                self._merge(weight, value, 0.0)
                if value < self.min:
                    self.min = value
                if value > self.max:
                    self.max = value
            else:
                self._add_category(value, weight)
        return wrong_type

    def _add_category(self, value: Value, weight: int) -> None:
        category = canonical_category(value)
        if category is None:
            self.missing += weight
            return
        self.count += weight
        if category in self.vocabulary:
            self.categories[category] += weight
            return
        self.other += weight
        if len(self._distinct) < MAX_DISTINCT:
            self._distinct.add(hash(category))
        if self.exposed is not None:
            self.exposed.add(category[:MAX_VALUE_CHARS], weight)

    def _merge(self, count: int, mean: float, m2: float) -> None:
        """Merge `count` values of this mean and sum of squared deviations into the summary."""
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    def add_moments(
        self, count: int, missing: int, mean: float, m2: float, low: float, high: float, weight: int
    ) -> None:
        """Add a column's moments computed elsewhere (vectorised over a whole matrix): its
        `count` numbers' mean and sum of squared deviations from that mean, each number counted
        `weight` times."""
        if self.kind is None:
            self.kind = "numeric"
        self.missing += missing * weight
        if count:
            self._merge(count * weight, mean, m2 * weight)
            self.min = min(self.min, low)
            self.max = max(self.max, high)

    def view(self) -> FeatureView:
        numeric = self.kind == "numeric" and self.count > 0
        mean = self.mean if numeric else None
        std = math.sqrt(max(0.0, self.m2 / self.count)) if numeric else None
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
            unlisted_values=self.other,
            unlisted_distinct=len(self._distinct),
            unlisted_distinct_capped=len(self._distinct) >= MAX_DISTINCT,
            unlisted_top=tuple(self.exposed.top(10)) if self.exposed is not None else (),
        )
