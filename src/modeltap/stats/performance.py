"""Model performance from predictions joined to their labels: mergeable counts and the metrics
computed from them.

Everything here is a count or an exact sum, so the numbers of several replicas (or of several
window slots) add up to the numbers of the merged stream, as the drift counts do:

- classification: the confusion matrix over a fixed class list (the reference's vocabulary of the
  label, plus `__other__`), from which accuracy, precision, recall and F1 per class and macro
  follow with scikit-learn's definitions (F1 = 2 TP / (2 TP + FP + FN); a 0/0 ratio is 0; macro
  over the classes that occur among the labels or the predictions, in sorted order);
- binary scores (the positive class's probability): per-label score histograms over equal-width
  bins of [0, 1], from which ROC AUC follows within a stated bound, plus log loss and Brier score
  as exact sums;
- regression: the count, the sums of absolute and squared errors, and the label's mean and sum of
  squared deviations (merged with Chan's formula), from which MAE, RMSE and R² follow.

No I/O, no clocks: the callers own the windows (one instance per slot) and the join.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

OTHER = "__other__"
SCORE_BINS = 100
"""Equal-width bins of the positive-class score for AUC: the bound below is then at most half
the share of positive-negative pairs that fall in the same bin."""


def score_edges(bins: int = SCORE_BINS) -> np.ndarray:
    """Inner bounds of the score bins, upper-inclusive like OpenTelemetry explicit buckets:
    (-inf, 1/B], (1/B, 2/B], ..., ((B-1)/B, +inf), so exported histograms carry these bounds."""
    return np.arange(1, bins) / bins


LOG_LOSS_EPS = float(np.finfo(np.float64).eps)
"""Probabilities are clipped to [eps, 1 - eps] before the logarithm, as scikit-learn does."""


class ConfusionCounts:
    """Confusion matrix over `classes` plus `__other__` (labels or predictions outside the list).

    Rows are the true classes, columns the predicted ones. `add` takes class names; `merge` adds
    another instance over the same classes.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        names = [c for c in dict.fromkeys(classes) if c != OTHER]
        self.classes: tuple[str, ...] = (*names, OTHER)
        self._index = {name: i for i, name in enumerate(self.classes)}
        size = len(self.classes)
        self.matrix = np.zeros((size, size), dtype=np.int64)

    def index(self, name: str) -> int:
        return self._index.get(name, len(self.classes) - 1)

    def add(self, true: Sequence[str], predicted: Sequence[str]) -> None:
        if len(true) != len(predicted):
            raise ValueError(f"{len(true)} labels for {len(predicted)} predictions")
        rows = np.fromiter((self.index(t) for t in true), dtype=np.intp, count=len(true))
        cols = np.fromiter((self.index(p) for p in predicted), dtype=np.intp, count=len(predicted))
        np.add.at(self.matrix, (rows, cols), 1)

    def add_one(self, true: str, predicted: str) -> None:
        """One joined label (labels arrive one by one: no array round trip)."""
        self.matrix[self.index(true), self.index(predicted)] += 1

    def merge(self, other: ConfusionCounts) -> None:
        if other.classes != self.classes:
            raise ValueError("confusion counts over different classes cannot be merged")
        self.matrix += other.matrix

    @property
    def total(self) -> int:
        return int(self.matrix.sum())


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int  # true instances of the class


@dataclass(frozen=True)
class ClassificationMetrics:
    count: int
    accuracy: float
    per_class: dict[str, ClassMetrics]  # classes that occur among the labels or the predictions
    macro_precision: float
    macro_recall: float
    macro_f1: float


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def classification_metrics(counts: ConfusionCounts) -> ClassificationMetrics | None:
    """Metrics of the confusion matrix, or None when it is empty."""
    matrix = counts.matrix
    total = int(matrix.sum())
    if total == 0:
        return None
    true_sum = matrix.sum(axis=1)
    pred_sum = matrix.sum(axis=0)
    tp = np.diag(matrix)
    present = sorted(
        (name for i, name in enumerate(counts.classes) if true_sum[i] or pred_sum[i]),
    )
    per_class: dict[str, ClassMetrics] = {}
    for name in present:
        i = counts.index(name)
        per_class[name] = ClassMetrics(
            precision=_ratio(float(tp[i]), float(pred_sum[i])),
            recall=_ratio(float(tp[i]), float(true_sum[i])),
            f1=_ratio(2.0 * float(tp[i]), float(true_sum[i] + pred_sum[i])),
            support=int(true_sum[i]),
        )
    values = list(per_class.values())
    return ClassificationMetrics(
        count=total,
        accuracy=float(tp.sum()) / total,
        per_class=per_class,
        macro_precision=float(np.mean([m.precision for m in values])),
        macro_recall=float(np.mean([m.recall for m in values])),
        macro_f1=float(np.mean([m.f1 for m in values])),
    )


class BinaryScores:
    """Scores of the positive class against binary labels: histograms for AUC, exact sums for
    log loss and Brier score."""

    def __init__(self, bins: int = SCORE_BINS) -> None:
        if bins < 1:
            raise ValueError("at least one score bin")
        self.bins = bins
        self.edges = score_edges(bins)
        self._edge_list = [float(e) for e in self.edges]
        self.positive = np.zeros(bins, dtype=np.int64)  # scores of rows whose label is positive
        self.negative = np.zeros(bins, dtype=np.int64)
        self.log_loss_sum = 0.0
        self.brier_sum = 0.0
        self.out_of_range = 0  # scores outside [0, 1] or not finite: not counted

    def add(self, positive: np.ndarray, scores: np.ndarray) -> None:
        """`positive`: booleans (the label is the positive class); `scores`: its probability."""
        labels = np.asarray(positive, dtype=bool)
        p = np.asarray(scores, dtype=np.float64)
        if labels.shape != p.shape or p.ndim != 1:
            raise ValueError("labels and scores must be 1-D and of one length")
        valid = np.isfinite(p) & (p >= 0.0) & (p <= 1.0)
        self.out_of_range += int(np.count_nonzero(~valid))
        labels, p = labels[valid], p[valid]
        index = np.searchsorted(self.edges, p, side="left")
        self.positive += np.bincount(index[labels], minlength=self.bins)
        self.negative += np.bincount(index[~labels], minlength=self.bins)
        clipped = np.clip(p, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
        self.log_loss_sum += float(-np.sum(np.where(labels, np.log(clipped), np.log1p(-clipped))))
        self.brier_sum += float(np.sum((p - labels) ** 2))

    def add_one(self, positive: bool, score: float) -> None:
        """One joined label: the same bins and sums as `add`, without numpy's per-call cost."""
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            self.out_of_range += 1
            return
        index = bisect.bisect_left(self._edge_list, score)
        if positive:
            self.positive[index] += 1
        else:
            self.negative[index] += 1
        clipped = min(max(score, LOG_LOSS_EPS), 1.0 - LOG_LOSS_EPS)
        self.log_loss_sum -= math.log(clipped) if positive else math.log1p(-clipped)
        self.brier_sum += (score - (1.0 if positive else 0.0)) ** 2

    def merge(self, other: BinaryScores) -> None:
        if other.bins != self.bins:
            raise ValueError("score histograms over different bins cannot be merged")
        self.positive += other.positive
        self.negative += other.negative
        self.log_loss_sum += other.log_loss_sum
        self.brier_sum += other.brier_sum
        self.out_of_range += other.out_of_range

    @property
    def count(self) -> int:
        return int(self.positive.sum() + self.negative.sum())


@dataclass(frozen=True)
class BinaryScoreMetrics:
    count: int
    auc: float | None  # None without both classes
    auc_bound: float | None  # |auc - exact AUC| <= auc_bound
    log_loss: float
    brier: float


def auc_from_histograms(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float] | None:
    """ROC AUC from per-bin counts of positive and negative scores, and its error bound.

    Pairs in different bins are ordered by their bins; pairs in the same bin count as ties (½),
    which is what the exact AUC would give if all scores in a bin were equal. Whatever the scores
    inside a bin, the exact AUC (with scikit-learn's tie rule) is within
    `½ · Σ_b n⁺_b · n⁻_b / (N⁺ · N⁻)` of this value. None when a class has no scores.
    """
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.concatenate(([0.0], np.cumsum(neg)[:-1]))  # negatives in lower bins
    same = pos * neg
    pairs = n_pos * n_neg
    auc = float((np.sum(pos * below) + 0.5 * np.sum(same)) / pairs)
    return auc, float(0.5 * np.sum(same) / pairs)


def binary_score_metrics(scores: BinaryScores) -> BinaryScoreMetrics | None:
    count = scores.count
    if count == 0:
        return None
    auc = auc_from_histograms(scores.positive, scores.negative)
    return BinaryScoreMetrics(
        count=count,
        auc=auc[0] if auc else None,
        auc_bound=auc[1] if auc else None,
        log_loss=scores.log_loss_sum / count,
        brier=scores.brier_sum / count,
    )


RESIDUAL_STEPS = (-3.0, -2.0, -1.5, -1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
"""Bounds of the residual histogram, in units of the reference label's standard deviation."""


def residual_bounds(label_std: float | None) -> tuple[float, ...]:
    """Residual (label - prediction) histogram bounds for a label of this spread; () without one."""
    if label_std is None or not math.isfinite(label_std) or label_std <= 0:
        return ()
    return tuple(step * label_std for step in RESIDUAL_STEPS)


class RegressionCounts:
    """Sums for MAE, RMSE and R², mergeable: errors as plain sums, the label's spread with
    Chan's parallel update (no catastrophic cancellation in R²'s denominator); with `bounds`, a
    histogram of the residuals (label - prediction, upper-inclusive buckets)."""

    def __init__(self, bounds: tuple[float, ...] = ()) -> None:
        self.bounds = bounds
        self.residuals = np.zeros(len(bounds) + 1 if bounds else 0, dtype=np.int64)
        self.count = 0
        self.abs_error_sum = 0.0
        self.sq_error_sum = 0.0
        self.label_mean = 0.0
        self.label_m2 = 0.0  # sum of squared deviations of the labels from their mean

    def add(self, labels: np.ndarray, predictions: np.ndarray) -> None:
        y = np.asarray(labels, dtype=np.float64)
        yhat = np.asarray(predictions, dtype=np.float64)
        if y.shape != yhat.shape or y.ndim != 1:
            raise ValueError("labels and predictions must be 1-D and of one length")
        keep = np.isfinite(y) & np.isfinite(yhat)
        y, yhat = y[keep], yhat[keep]
        if not y.size:
            return
        error = y - yhat
        if self.bounds:
            self.residuals += np.bincount(
                np.searchsorted(np.asarray(self.bounds), error, side="left"), minlength=len(self.bounds) + 1
            )
        batch = RegressionCounts()
        batch.count = int(y.size)
        batch.abs_error_sum = float(np.sum(np.abs(error)))
        batch.sq_error_sum = float(np.sum(error * error))
        batch.label_mean = float(np.mean(y))
        batch.label_m2 = float(np.sum((y - batch.label_mean) ** 2))
        self.merge(batch)

    def add_one(self, label: float, prediction: float) -> None:
        """One joined label (Welford's update: the same numbers as `add` up to rounding)."""
        if not (math.isfinite(label) and math.isfinite(prediction)):
            return
        error = label - prediction
        if self.bounds:
            self.residuals[bisect.bisect_left(self.bounds, error)] += 1
        self.count += 1
        self.abs_error_sum += abs(error)
        self.sq_error_sum += error * error
        delta = label - self.label_mean
        self.label_mean += delta / self.count
        self.label_m2 += delta * (label - self.label_mean)

    def merge(self, other: RegressionCounts) -> None:
        if other.count == 0:
            return
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        delta = other.label_mean - self.label_mean
        self.label_m2 += other.label_m2 + delta * delta * n_a * n_b / n
        self.label_mean += delta * n_b / n
        self.count = n
        self.abs_error_sum += other.abs_error_sum
        self.sq_error_sum += other.sq_error_sum
        if self.bounds == other.bounds and self.bounds:
            self.residuals += other.residuals


@dataclass(frozen=True)
class RegressionMetrics:
    count: int
    mae: float
    rmse: float
    r2: float | None  # None when the labels have no spread


def regression_metrics(counts: RegressionCounts) -> RegressionMetrics | None:
    if counts.count == 0:
        return None
    return RegressionMetrics(
        count=counts.count,
        mae=counts.abs_error_sum / counts.count,
        rmse=math.sqrt(counts.sq_error_sum / counts.count),
        r2=1.0 - counts.sq_error_sum / counts.label_m2 if counts.label_m2 > 0 else None,
    )


class RankingCounts:
    """Sums for MRR and NDCG@K over queries whose answer is a ranked list of items and whose
    label is the relevant item (or items: binary relevance). Mergeable: plain sums."""

    def __init__(self, k: int = 10) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        self.queries = 0
        self.reciprocal_rank_sum = 0.0
        self.ndcg_sum = 0.0

    def add(self, ranked: Sequence[str], relevant: Sequence[str]) -> None:
        """One query: `ranked` best first; `relevant` the items the label names."""
        wanted = set(relevant)
        if not wanted:
            return
        self.queries += 1
        for position, item in enumerate(ranked, start=1):
            if item in wanted:
                self.reciprocal_rank_sum += 1.0 / position
                break
        dcg = sum(
            1.0 / math.log2(i + 1) for i, item in enumerate(ranked[: self.k], start=1) if item in wanted
        )
        ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(self.k, len(wanted)) + 1))
        self.ndcg_sum += dcg / ideal

    def merge(self, other: RankingCounts) -> None:
        if other.k != self.k:
            raise ValueError("ranking counts at different k cannot be merged")
        self.queries += other.queries
        self.reciprocal_rank_sum += other.reciprocal_rank_sum
        self.ndcg_sum += other.ndcg_sum


@dataclass(frozen=True)
class RankingMetrics:
    queries: int
    k: int
    mrr: float
    ndcg: float  # NDCG@k, binary relevance


def ranking_metrics(counts: RankingCounts) -> RankingMetrics | None:
    if counts.queries == 0:
        return None
    return RankingMetrics(
        counts.queries,
        counts.k,
        counts.reciprocal_rank_sum / counts.queries,
        counts.ndcg_sum / counts.queries,
    )
