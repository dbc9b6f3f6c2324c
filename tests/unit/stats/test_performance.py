"""Performance metrics from mergeable counts against scikit-learn on the same rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    log_loss,
    mean_absolute_error,
    ndcg_score,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)

from modeltap.stats.performance import (
    OTHER,
    BinaryScores,
    ConfusionCounts,
    RankingCounts,
    RegressionCounts,
    auc_from_histograms,
    binary_score_metrics,
    classification_metrics,
    ranking_metrics,
    regression_metrics,
)

CLASSES = ("approve", "deny", "review")


def _labels(seed: int, n: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    true = rng.choice(CLASSES, n, p=(0.6, 0.3, 0.1))
    noise = rng.random(n) < 0.3
    predicted = np.where(noise, rng.choice(CLASSES, n), true)
    return true.tolist(), predicted.tolist()


@pytest.mark.parametrize("seed", range(6))
def test_classification_metrics_equal_scikit_learn_exactly(seed: int) -> None:
    true, predicted = _labels(seed, 50 + 300 * seed)
    counts = ConfusionCounts(CLASSES)
    counts.add(true, predicted)
    metrics = classification_metrics(counts)
    assert metrics is not None
    labels = sorted(set(true) | set(predicted))
    assert np.array_equal(
        counts.matrix[:3, :3],
        confusion_matrix(true, predicted, labels=list(CLASSES)),
    )
    assert metrics.accuracy == accuracy_score(true, predicted)
    precision, recall, f1, support = precision_recall_fscore_support(true, predicted, zero_division=0)
    assert list(metrics.per_class) == labels
    assert [m.precision for m in metrics.per_class.values()] == precision.tolist()
    assert [m.recall for m in metrics.per_class.values()] == recall.tolist()
    assert [m.f1 for m in metrics.per_class.values()] == f1.tolist()
    assert [m.support for m in metrics.per_class.values()] == support.tolist()
    macro = precision_recall_fscore_support(true, predicted, average="macro", zero_division=0)
    assert (metrics.macro_precision, metrics.macro_recall, metrics.macro_f1) == macro[:3]


def test_a_class_never_predicted_has_zero_precision_as_in_scikit_learn() -> None:
    true = ["approve", "deny", "deny", "review"]
    predicted = ["approve", "approve", "approve", "approve"]
    counts = ConfusionCounts(CLASSES)
    counts.add(true, predicted)
    metrics = classification_metrics(counts)
    assert metrics is not None
    precision, recall, f1, _ = precision_recall_fscore_support(true, predicted, zero_division=0)
    assert [m.precision for m in metrics.per_class.values()] == precision.tolist()
    assert [m.recall for m in metrics.per_class.values()] == recall.tolist()
    assert [m.f1 for m in metrics.per_class.values()] == f1.tolist()
    assert metrics.per_class["deny"].recall == 0.0


def test_unknown_classes_fold_into_other_and_merging_equals_one_stream() -> None:
    true, predicted = _labels(9, 1000)
    predicted[:7] = ["surprise"] * 7
    whole = ConfusionCounts(CLASSES)
    whole.add(true, predicted)
    halves = [ConfusionCounts(CLASSES), ConfusionCounts(CLASSES)]
    halves[0].add(true[:400], predicted[:400])
    halves[1].add(true[400:], predicted[400:])
    halves[0].merge(halves[1])
    assert np.array_equal(halves[0].matrix, whole.matrix)
    assert whole.matrix[:, whole.index(OTHER)].sum() == 7
    assert whole.total == 1000
    with pytest.raises(ValueError, match="different classes"):
        whole.merge(ConfusionCounts(("a", "b")))


def test_empty_counts_have_no_metrics() -> None:
    assert classification_metrics(ConfusionCounts(CLASSES)) is None
    assert binary_score_metrics(BinaryScores()) is None
    assert regression_metrics(RegressionCounts()) is None


@pytest.mark.parametrize("seed", range(5))
def test_auc_is_within_its_stated_bound_and_log_loss_and_brier_equal_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2000
    positive = rng.random(n) < 0.35
    # Scores that separate the classes imperfectly, with exact ties on a few values too.
    scores = np.clip(rng.normal(0.4 + 0.25 * positive, 0.18), 0.0, 1.0)
    scores[:50] = 0.5
    counts = BinaryScores()
    counts.add(positive, scores)
    metrics = binary_score_metrics(counts)
    assert metrics is not None
    assert metrics.auc is not None
    assert metrics.auc_bound is not None
    exact = roc_auc_score(positive, scores)
    assert abs(metrics.auc - exact) <= metrics.auc_bound + 1e-12
    assert metrics.auc_bound < 0.01  # 100 bins: the bound is small for spread-out scores
    assert metrics.log_loss == pytest.approx(log_loss(positive, scores), rel=1e-12)
    assert metrics.brier == pytest.approx(brier_score_loss(positive, scores), rel=1e-12)


def test_the_auc_bound_is_reached_when_every_pair_shares_a_bin() -> None:
    # One bin holds everything: the histogram cannot order any pair.
    auc = auc_from_histograms(np.array([0, 5, 0]), np.array([0, 3, 0]))
    assert auc == (0.5, 0.5)
    assert auc_from_histograms(np.array([1, 0]), np.array([0, 0])) is None


def test_out_of_range_scores_are_counted_not_scored() -> None:
    counts = BinaryScores()
    counts.add(np.array([True, False, True]), np.array([0.9, float("nan"), 1.5]))
    assert counts.count == 1
    assert counts.out_of_range == 2


@pytest.mark.parametrize("seed", range(4))
def test_regression_metrics_equal_scikit_learn_within_1e_9_and_merge_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.normal(1e4, 50.0, 3000)  # a large mean: the naive sum-of-squares R² would lose digits
    yhat = y + rng.normal(2.0, 10.0, 3000)
    parts = [RegressionCounts() for _ in range(3)]
    for part, index in zip(parts, np.array_split(np.arange(3000), 3), strict=True):
        part.add(y[index], yhat[index])
    merged = parts[0]
    merged.merge(parts[1])
    merged.merge(parts[2])
    metrics = regression_metrics(merged)
    assert metrics is not None
    assert metrics.count == 3000
    assert metrics.mae == pytest.approx(mean_absolute_error(y, yhat), rel=1e-9)
    assert metrics.rmse == pytest.approx(root_mean_squared_error(y, yhat), rel=1e-9)
    assert metrics.r2 == pytest.approx(r2_score(y, yhat), rel=1e-9)


def test_regression_without_label_spread_has_no_r2() -> None:
    counts = RegressionCounts()
    counts.add(np.array([3.0, 3.0, float("nan")]), np.array([2.0, 4.0, 1.0]))
    metrics = regression_metrics(counts)
    assert metrics is not None
    assert metrics.count == 2
    assert metrics.r2 is None
    assert metrics.mae == 1.0


def test_mrr_and_ndcg_equal_scikit_learn_and_the_textbook_definitions() -> None:
    rng = np.random.default_rng(12)
    items = [f"item-{i}" for i in range(30)]
    counts = RankingCounts(k=10)
    reciprocal, ndcgs = [], []
    for _ in range(200):
        ranked = list(rng.permutation(items)[:20])
        relevant = list(rng.choice(items, size=int(rng.integers(1, 4)), replace=False))
        counts.add(ranked, relevant)
        hits = [i for i, item in enumerate(ranked, start=1) if item in relevant]
        reciprocal.append(1.0 / hits[0] if hits else 0.0)
        # scikit-learn's ndcg_score on binary relevance: true relevance per ranked position,
        # scores decreasing with rank; the ideal ranking has every relevant item on top.
        true = np.array(
            [[1.0 if item in relevant else 0.0 for item in ranked] + [1.0] * (len(relevant) - len(hits))]
        )
        scores = np.array(
            [[float(len(ranked) - i) for i in range(len(ranked))] + [-1.0] * (len(relevant) - len(hits))]
        )
        ndcgs.append(ndcg_score(true, scores, k=10))
    metrics = ranking_metrics(counts)
    assert metrics is not None
    assert metrics.queries == 200
    assert metrics.mrr == pytest.approx(np.mean(reciprocal), rel=1e-12)
    assert metrics.ndcg == pytest.approx(np.mean(ndcgs), rel=1e-9)
    halves = RankingCounts(k=10), RankingCounts(k=10)
    assert ranking_metrics(halves[0]) is None
    halves[0].merge(counts)
    assert ranking_metrics(halves[0]) == metrics


def test_one_at_a_time_equals_the_array_path() -> None:
    rng = np.random.default_rng(21)
    positive = rng.random(500) < 0.4
    scores = rng.random(500)
    scores[:5] = [0.0, 1.0, 0.01, 0.5, float("nan")]
    batch, single = BinaryScores(), BinaryScores()
    batch.add(positive, scores)
    for p, s in zip(positive, scores, strict=True):
        single.add_one(bool(p), float(s))
    assert np.array_equal(batch.positive, single.positive)
    assert np.array_equal(batch.negative, single.negative)
    assert batch.out_of_range == single.out_of_range == 1
    assert single.log_loss_sum == pytest.approx(batch.log_loss_sum, rel=1e-12)
    assert single.brier_sum == pytest.approx(batch.brier_sum, rel=1e-12)
    y = rng.normal(50.0, 5.0, 500)
    yhat = y + rng.normal(0.0, 1.0, 500)
    bounds = (-2.0, -1.0, 0.0, 1.0, 2.0)
    batch_r, single_r = RegressionCounts(bounds), RegressionCounts(bounds)
    batch_r.add(y, yhat)
    for a, b in zip(y, yhat, strict=True):
        single_r.add_one(float(a), float(b))
    assert np.array_equal(batch_r.residuals, single_r.residuals)
    one, many = regression_metrics(single_r), regression_metrics(batch_r)
    assert one is not None
    assert many is not None
    assert one.r2 == pytest.approx(many.r2, rel=1e-12)
    assert one.mae == pytest.approx(many.mae, rel=1e-12)
    counts = ConfusionCounts(CLASSES)
    counts.add_one("approve", "deny")
    counts.add_one("surprise", "approve")
    assert counts.matrix[counts.index("approve"), counts.index("deny")] == 1
    assert counts.matrix[counts.index(OTHER), counts.index("approve")] == 1
