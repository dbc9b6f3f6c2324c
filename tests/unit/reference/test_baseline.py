"""The baseline performance a profile stores when it has both the label and the prediction."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, mean_absolute_error, r2_score, root_mean_squared_error

from modeltap.errors import ReferenceProfileError
from modeltap.reference import build_profile
from modeltap.reference.document import parse_reference


def test_classification_baseline_is_the_accuracy_on_the_profiled_rows() -> None:
    rng = np.random.default_rng(3)
    truth = rng.choice(["yes", "no"], 500).tolist()
    predicted = [t if rng.random() < 0.8 else ("no" if t == "yes" else "yes") for t in truth]
    truth[:7] = [None] * 7  # unlabelled rows are left out
    document = build_profile(
        {"x": rng.normal(size=500), "y": truth, "p": predicted}, target="y", prediction="p"
    )
    labelled = [(t, p) for t, p in zip(truth, predicted, strict=True) if t is not None]
    assert document["performance"] == {
        "kind": "classification",
        "labels": 493,
        "hits": sum(t == p for t, p in labelled),
        "accuracy": accuracy_score([t for t, _ in labelled], [p for _, p in labelled]),
    }
    performance = parse_reference(document).performance
    assert performance is not None
    assert (performance.kind, performance.labels, performance.hits) == (
        "classification",
        493,
        document["performance"]["hits"],
    )


def test_regression_baseline_has_scikit_learns_errors() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(10.0, 2.0, 400)
    p = y + rng.normal(0.0, 0.5, 400)
    document = build_profile({"x": rng.normal(size=400), "y": y, "p": p}, target="y", prediction="p")
    performance = document["performance"]
    assert performance["kind"] == "regression"
    assert performance["labels"] == 400
    assert performance["mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
    assert performance["rmse"] == pytest.approx(root_mean_squared_error(y, p), rel=1e-12)
    assert performance["r2"] == pytest.approx(r2_score(y, p), rel=1e-12)


def test_no_baseline_without_both_columns_and_a_bad_one_is_refused() -> None:
    rng = np.random.default_rng(5)
    assert "performance" not in build_profile(
        {"x": rng.normal(size=200), "y": rng.normal(size=200)}, target="y"
    )
    document = build_profile({"x": rng.normal(size=200)})
    document["performance"] = {"kind": "classification", "labels": 10, "hits": 11}
    with pytest.raises(ReferenceProfileError, match="hits"):
        parse_reference(document)
