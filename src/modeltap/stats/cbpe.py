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

from dataclasses import dataclass, field

import numpy as np

from modeltap.reference.calibration import Calibration, fit_calibration
from modeltap.stats.performance import SCORE_BINS, auc_from_histograms, score_edges

__all__ = ["Calibration", "EstimatedMetrics", "ExpectedConfusion", "estimated_metrics", "fit_calibration"]


@dataclass
class ExpectedConfusion:
    """Sums of the expected confusion matrix, and per score bin the expected positives and
    negatives (for the expected ROC AUC); mergeable like the realised counts."""

    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0
    tn: float = 0.0
    positives: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS))
    negatives: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS))

    def add(
        self, calibrated: np.ndarray, predicted_positive: np.ndarray, scores: np.ndarray | None = None
    ) -> None:
        """`calibrated`: P(y = 1) of each prediction; `scores`: the model's own scores, which
        order the predictions for the AUC (bins as the realised score histograms)."""
        p = np.asarray(calibrated, dtype=np.float64)
        positive = np.asarray(predicted_positive, dtype=bool)
        self.tp += float(np.sum(p[positive]))
        self.fp += float(np.sum(1.0 - p[positive]))
        self.fn += float(np.sum(p[~positive]))
        self.tn += float(np.sum(1.0 - p[~positive]))
        if scores is not None:
            index = np.searchsorted(
                score_edges(SCORE_BINS), np.asarray(scores, dtype=np.float64), side="left"
            )
            self.positives += np.bincount(index, weights=p, minlength=SCORE_BINS)
            self.negatives += np.bincount(index, weights=1.0 - p, minlength=SCORE_BINS)

    def merge(self, other: ExpectedConfusion) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        self.positives = self.positives + other.positives
        self.negatives = self.negatives + other.negatives

    @property
    def count(self) -> float:
        return self.tp + self.fp + self.fn + self.tn


@dataclass(frozen=True)
class EstimatedMetrics:
    count: int
    accuracy: float
    precision: float
    recall: float
    auc: float | None = None  # expected ROC AUC, within the same binning bound as the realised one


def estimated_metrics(expected: ExpectedConfusion) -> EstimatedMetrics | None:
    total = expected.count
    if total <= 0:
        return None
    predicted = expected.tp + expected.fp
    actual = expected.tp + expected.fn
    auc = auc_from_histograms(expected.positives, expected.negatives)
    return EstimatedMetrics(
        count=round(total),
        accuracy=(expected.tp + expected.tn) / total,
        precision=expected.tp / predicted if predicted else 0.0,
        recall=expected.tp / actual if actual else 0.0,
        auc=auc[0] if auc else None,
    )
