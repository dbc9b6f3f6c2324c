"""Fine-bucket counts for every numeric feature of one model version with a reference profile.

The kernel of STATS.md, once per micro-batch: mask non-finite values, one bucket lookup per
feature on that feature's reference fine edges (`BucketIndex`: the result of `np.searchsorted`,
faster), one `np.bincount` over all features (offset per
feature, one extra column per feature for missing values), added into the cumulative counts and
the current window slot. Bucket i of a feature is (edges[i-1], edges[i]], the same rule as
OpenTelemetry explicit-bucket histograms, so exported counts can be summed across replicas and
every score recomputed from the sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modeltap.stats.bucketing import BucketIndex
from modeltap.stats.window import WindowRing


class NumericBank:
    """Counts for a fixed list of numeric features (their reference fine edges).

    Example::

        bank = NumericBank(("age", "income"), (age_edges, income_edges), slots=15, slot_s=60.0)
        bank.add(matrix, weight=1, now=time.monotonic())   # rows x 2, NaN = missing
        fine, missing = bank.feature_counts(0, bank.window(now))
    """

    def __init__(
        self, names: Sequence[str], edges: Sequence[Sequence[float] | np.ndarray], slots: int, slot_s: float
    ) -> None:
        if len(names) != len(edges):
            raise ValueError("one edge list per feature")
        self.names = tuple(names)
        self.edges = tuple(np.asarray(e, dtype=np.float64) for e in edges)
        self._indexes = tuple(BucketIndex(e) for e in self.edges)
        sizes = [len(e) + 1 for e in self.edges]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.missing_base = int(sum(sizes))
        width = self.missing_base + len(self.names)
        self.cumulative = np.zeros(width, dtype=np.int64)
        self.ring = WindowRing(slots, slot_s, width)

    def add(self, matrix: np.ndarray, weight: int, now: float) -> np.ndarray:
        """Add a rows x features float matrix (columns in `names` order); returns missing per feature."""
        columns = np.ascontiguousarray(matrix.T)  # one contiguous row per feature for searchsorted
        finite = np.isfinite(columns)
        all_finite = bool(finite.all())
        indices = np.empty(columns.shape, dtype=np.int64)
        for j, index in enumerate(self._indexes):
            np.add(index.bucket(columns[j]), self.offsets[j], out=indices[j])
        if not all_finite:
            missing_index = np.arange(self.missing_base, self.missing_base + len(self.edges))[:, None]
            indices = np.where(finite, indices, missing_index)
        counts = np.bincount(indices.ravel(), minlength=self.cumulative.size)
        if weight != 1:
            counts *= weight
        self.cumulative += counts
        self.ring.add(counts, now)
        missing: np.ndarray = (
            np.zeros(len(self.edges), dtype=np.int64) if all_finite else (~finite).sum(axis=1)
        )
        return missing

    def window(self, now: float) -> np.ndarray:
        return self.ring.window(now)

    def feature_counts(self, index: int, counts: np.ndarray) -> tuple[np.ndarray, int]:
        """(fine bucket counts, missing count) of feature `index` within a counts vector."""
        start = int(self.offsets[index])
        fine = counts[start : start + int(self.sizes[index])]
        return fine, int(counts[self.missing_base + index])

    @property
    def nbytes(self) -> int:
        arrays = (self.cumulative, *self.edges)
        return self.ring.nbytes + sum(int(a.nbytes) for a in arrays)
