"""CBPE: the estimate follows covariate shift and, by construction, misses concept drift."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from modeltap.stats.cbpe import ExpectedConfusion, estimated_metrics, fit_calibration
from modeltap.stats.performance import BinaryScores, auc_from_histograms

WEIGHTS = np.array([1.5, -1.0])
BIAS = -0.2


def _data(rng: np.random.Generator, n: int, mean: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels from the true model P(y=1|x) = sigmoid(w.x + b): the scores of a
    well-specified model are exactly these probabilities."""
    x = rng.normal(mean, 1.0, size=(n, 2))
    p = 1.0 / (1.0 + np.exp(-(x @ WEIGHTS + BIAS)))
    y = (rng.random(n) < p).astype(int)
    return p, y


def test_the_estimate_is_within_two_points_of_the_realised_accuracy_under_covariate_shift() -> None:
    rng = np.random.default_rng(20261205)
    reference_scores, reference_labels = _data(rng, 5000, (0.0, 0.0))
    calibration = fit_calibration(reference_scores, reference_labels)
    for mean in ((0.0, 0.0), (1.0, 0.5), (-0.8, 1.2)):
        scores, labels = _data(rng, 5000, mean)
        predicted = scores > 0.5
        expected = ExpectedConfusion()
        expected.add(calibration.apply(scores), predicted, scores)
        estimate = estimated_metrics(expected)
        assert estimate is not None
        assert estimate.auc is not None
        # Against the realised AUC over the same 100 score bins (both carry the binning bound).
        realised_scores = BinaryScores()
        realised_scores.add(labels == 1, scores)
        realised_auc = auc_from_histograms(realised_scores.positive, realised_scores.negative)
        assert realised_auc is not None
        assert abs(realised_auc[0] - roc_auc_score(labels, scores)) <= realised_auc[1]
        # Looser than accuracy: the AUC of 5000 rows moves by ~0.01 by sampling alone, and the
        # calibration's error adds to it (see modeltap.reference.calibration).
        assert abs(estimate.auc - realised_auc[0]) <= 0.03, (mean, estimate.auc, realised_auc)
        realised = float(np.mean(predicted == (labels == 1)))
        assert abs(estimate.accuracy - realised) <= 0.02, (mean, estimate.accuracy, realised)
        tp = float(np.sum(predicted & (labels == 1)))
        assert abs(estimate.precision - tp / predicted.sum()) <= 0.03
        assert abs(estimate.recall - tp / (labels == 1).sum()) <= 0.03


def test_concept_drift_leaves_the_estimate_where_it_was() -> None:
    rng = np.random.default_rng(7)
    reference_scores, reference_labels = _data(rng, 5000, (0.0, 0.0))
    calibration = fit_calibration(reference_scores, reference_labels)
    scores, labels = _data(rng, 5000, (0.0, 0.0))
    flipped = np.where(scores > 0.7, 1 - labels, labels)  # P(y|x) changed for a segment
    predicted = scores > 0.5
    expected = ExpectedConfusion()
    expected.add(calibration.apply(scores), predicted)
    estimate = estimated_metrics(expected)
    assert estimate is not None
    before = float(np.mean(predicted == (labels == 1)))
    after = float(np.mean(predicted == (flipped == 1)))
    assert after < before - 0.1  # the model got much worse
    assert abs(estimate.accuracy - before) <= 0.02  # and the estimate cannot tell


def test_expected_counts_merge_like_realised_counts() -> None:
    rng = np.random.default_rng(1)
    scores, _ = _data(rng, 1000, (0.0, 0.0))
    whole, first, second = ExpectedConfusion(), ExpectedConfusion(), ExpectedConfusion()
    whole.add(scores, scores > 0.5)
    first.add(scores[:300], scores[:300] > 0.5)
    second.add(scores[300:], scores[300:] > 0.5)
    first.merge(second)
    assert first.count == pytest.approx(1000.0)
    assert (first.tp, first.fp, first.fn, first.tn) == pytest.approx((whole.tp, whole.fp, whole.fn, whole.tn))


def test_calibration_needs_enough_labelled_binary_scores() -> None:
    with pytest.raises(ValueError, match="at least"):
        fit_calibration(np.array([0.1, 0.9]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0 or 1"):
        fit_calibration(np.linspace(0, 1, 50), np.full(50, 2))
    assert estimated_metrics(ExpectedConfusion()) is None
