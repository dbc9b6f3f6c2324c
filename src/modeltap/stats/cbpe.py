"""Performance before the labels arrive: confidence-based performance estimation (CBPE).

For a binary classifier whose scores are calibrated probabilities p = P(y = 1 | x), each
prediction's chance of being right is known without its label: p when it predicts 1, 1 - p when
it predicts 0. Summed over a window, these give the expected confusion matrix, hence expected
accuracy, precision and recall. Scores are first mapped through a calibration fitted on the
reference (labelled validation data): histogram binning over equal-frequency bins of the score,
each bin's observed positive rate.

What it cannot see: concept drift. If P(y | x) itself changes, calibrated-on-the-reference
probabilities are wrong in a way no score reveals, and the estimate stays where it was while the
realised performance falls. It tracks covariate shift (the mix of easy and hard inputs moves),
which is what it is for. Reported as `estimated`, next to the realised metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CALIBRATION_BINS = 20


@dataclass(frozen=True)
class Calibration:
    """Histogram-binning calibration: `edges` (inner bin bounds of the score) and each bin's
    observed positive rate on the reference."""

    edges: tuple[float, ...]
    rates: tuple[float, ...]

    def apply(self, scores: np.ndarray) -> np.ndarray:
        index = np.searchsorted(np.asarray(self.edges), np.asarray(scores, dtype=np.float64), side="right")
        return np.asarray(self.rates)[index]


def fit_calibration(scores: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> Calibration:
    """Equal-frequency bins of the reference scores and their positive rates.

    Raises ValueError without at least one score per bin or with labels other than 0/1."""
    p = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1 or not np.isfinite(p).all():
        raise ValueError("scores and labels must be 1-D, of one length, finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if p.size < bins:
        raise ValueError(f"calibration needs at least {bins} labelled scores, got {p.size}")
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)[1:-1]))
    index = np.searchsorted(edges, p, side="right")
    counts = np.bincount(index, minlength=len(edges) + 1)
    positives = np.bincount(index, weights=y.astype(np.float64), minlength=len(edges) + 1)
    rates = np.divide(positives, counts, out=np.full(len(counts), np.nan), where=counts > 0)
    # An empty bin (possible only with tied edges) takes its neighbours' average rate.
    if np.isnan(rates).any():
        filled = np.interp(np.arange(len(rates)), np.flatnonzero(~np.isnan(rates)), rates[~np.isnan(rates)])
        rates = filled
    return Calibration(tuple(float(e) for e in edges), tuple(float(r) for r in rates))


@dataclass
class ExpectedConfusion:
    """Sums of the expected confusion matrix; mergeable like the realised counts."""

    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    tn: float = 0.0

    def add(self, calibrated: np.ndarray, predicted_positive: np.ndarray) -> None:
        p = np.asarray(calibrated, dtype=np.float64)
        positive = np.asarray(predicted_positive, dtype=bool)
        self.tp += float(np.sum(p[positive]))
        self.fp += float(np.sum(1.0 - p[positive]))
        self.fn += float(np.sum(p[~positive]))
        self.tn += float(np.sum(1.0 - p[~positive]))

    def merge(self, other: ExpectedConfusion) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn

    @property
    def count(self) -> float:
        return self.tp + self.fp + self.fn + self.tn


@dataclass(frozen=True)
class EstimatedMetrics:
    count: int
    accuracy: float
    precision: float
    recall: float


def estimated_metrics(expected: ExpectedConfusion) -> EstimatedMetrics | None:
    total = expected.count
    if total <= 0:
        return None
    predicted = expected.tp + expected.fp
    actual = expected.tp + expected.fn
    return EstimatedMetrics(
        count=round(total),
        accuracy=(expected.tp + expected.tn) / total,
        precision=expected.tp / predicted if predicted else 0.0,
        recall=expected.tp / actual if actual else 0.0,
    )
