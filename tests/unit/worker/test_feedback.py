"""The feedback endpoint on the ground-truth state: key joins, regression, refusals."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from sklearn.metrics import mean_absolute_error, r2_score

from modeltap.reference import build_profile
from modeltap.reference.document import ReferenceFeature, parse_reference
from modeltap.stats.ground_truth import GroundTruth
from modeltap.stats.performance import RESIDUAL_STEPS
from modeltap.worker.feedback import feedback_endpoint, join_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def truth_profile_features(truth: GroundTruth) -> tuple[ReferenceFeature, ...]:
    assert truth.reference is not None
    return truth.reference.features


def _regression_truth() -> GroundTruth:
    profile = parse_reference(
        build_profile(
            {"x": [float(i) for i in range(200)], "y": [float(i) * 2 for i in range(200)]},
            target="y",
            model_name="m",
        )
    )
    return GroundTruth(profile, slots=15, slot_s=60.0, default_model="m")


def test_labels_join_by_a_key_column_whatever_its_spelling() -> None:
    truth = _regression_truth()
    clock = Clock()
    endpoint = feedback_endpoint(truth, "transaction_id", clock)
    keys = [join_key("transaction_id", None, row, value) for row, value in enumerate([1042, "T-7", 3.0])]
    assert keys == [("key", "1042"), ("key", "T-7"), ("key", "3")]
    truth.add_predictions("m", "1", keys, [10.0, 20.0, 30.0], clock.now)
    body = [
        {"key": {"transaction_id": "1042"}, "label": 12.0},  # 1042 and "1042" are one key
        {"key": {"transaction_id": "T-7"}, "label": 18.0},
        {"key": {"transaction_id": 3}, "label": 33.0},
        {"key": {"order_id": "x"}, "label": 1.0},
        {"request_id": "r", "label": 1.0},
        {"key": {"transaction_id": "T-7"}, "label": "not a number"},
    ]
    status, answer = endpoint(orjson.dumps(body), "application/json")
    assert status == 200
    assert orjson.loads(answer) == {
        "accepted": 3,
        "duplicates": 0,
        "rejected": [
            {"index": 3, "reason": "unknown_key"},
            {"index": 4, "reason": "key_required"},
            {"index": 5, "reason": "bad_label"},
        ],
    }
    [view] = truth.views(clock.now)
    numbers = dict(view.total)
    assert view.kind == "regression"
    assert view.total_labels == 3
    assert numbers["mae"] == pytest.approx(mean_absolute_error([12, 18, 33], [10, 20, 30]), rel=1e-12)
    assert numbers["r2"] == pytest.approx(r2_score([12, 18, 33], [10, 20, 30]), rel=1e-12)
    assert truth.label_counts()["rejected"] == 3
    # Residuals (2, -2, 3) over bounds in steps of the reference label's standard deviation.
    label_std = next(f.std for f in truth_profile_features(truth) if f.role == "label")
    assert label_std is not None
    assert view.residual_bounds == tuple(step * label_std for step in RESIDUAL_STEPS)
    expected = np.bincount(np.searchsorted(view.residual_bounds, [2.0, -2.0, 3.0], side="left"), minlength=16)
    assert view.residual_counts == tuple(int(c) for c in expected)


def test_without_anything_to_judge_feedback_is_refused_with_the_reason() -> None:
    profile = parse_reference(build_profile({"x": [float(i) for i in range(200)]}))
    endpoint = feedback_endpoint(GroundTruth(profile, slots=15, slot_s=60.0), None)
    status, answer = endpoint(b"[]", "application/json")
    assert status == 422
    assert b"--target" in answer


def test_the_window_forgets_old_labels_and_the_total_keeps_them() -> None:
    truth = _regression_truth()
    clock = Clock()
    endpoint = feedback_endpoint(truth, None, clock)
    truth.add_predictions("m", "1", [join_key(None, "a", 0, None)], [1.0], clock.now)
    assert endpoint(orjson.dumps({"request_id": "a", "label": 2.0}), "application/json")[0] == 200
    clock.now += 15 * 60.0 + 1
    [view] = truth.views(clock.now)
    assert (view.window_labels, view.total_labels) == (0, 1)


def test_performance_per_segment_uses_the_reference_vocabulary_only() -> None:
    rng = np.random.default_rng(9)
    n = 300
    region = rng.choice(["north", "south"], n).tolist()
    truth_column = rng.choice(["a", "b"], n).tolist()
    profile = parse_reference(
        build_profile(
            {"x": rng.normal(size=n), "region": region, "y": truth_column, "p": truth_column},
            target="y",
            prediction="p",
            model_name="m",
        )
    )
    truth = GroundTruth(profile, slots=15, slot_s=60.0, default_model="m", segment_feature="region")
    clock = Clock()
    endpoint = feedback_endpoint(truth, None, clock)
    segments = ["north", "north", "south", "mars", None]
    predicted = ["a", "a", "b", "a", "b"]
    labels = ["a", "b", "b", "a", "a"]
    keys = [join_key(None, "r", row, None) for row in range(5)]
    truth.add_predictions("m", "1", keys, predicted, clock.now, segments=segments)
    body = [{"request_id": "r", "row": row, "label": label} for row, label in enumerate(labels)]
    assert orjson.loads(endpoint(orjson.dumps(body), "application/json")[1])["accepted"] == 5
    [view] = truth.views(clock.now)
    by_segment = {name: dict(numbers) for name, numbers in view.segments}
    assert set(by_segment) == {"north", "south", "__other__", "__missing__"}  # "mars" is no segment
    assert by_segment["north"]["labels"] == 2
    assert by_segment["north"]["accuracy"] == 0.5
    assert by_segment["south"]["accuracy"] == 1.0
    assert by_segment["__other__"]["accuracy"] == 1.0
    assert by_segment["__missing__"]["accuracy"] == 0.0
