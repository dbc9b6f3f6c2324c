"""An alert states the limit its score was compared with: for a feature, the larger of the
configured threshold and the window's noise floor tau (a small window's noise alone can pass 0.1
or 0.2); for realised performance, the drop below the baseline that its level crossed."""

from __future__ import annotations

import pytest

from modeltap.alerts.observations import observations
from modeltap.snapshot import FeatureView, ModelView, PerformanceSummary, Snapshot
from modeltap.stats.performance_level import PerformanceThresholds
from modeltap.stats.scores import Level


def _feature(name: str, level: Level, psi: float, floor: float | None) -> FeatureView:
    return FeatureView(
        name=name,
        role="input",
        kind="categorical",
        count=500,
        missing=0,
        mean=None,
        std=None,
        min=None,
        max=None,
        psi=psi,
        level=int(level),
        monitored=True,
        psi_noise_floor=floor,
    )


def test_the_threshold_stated_is_the_one_psi_was_compared_with() -> None:
    features = (
        _feature("wide", Level.WARNING, 0.27, 0.264),  # tau above both thresholds
        _feature("middle", Level.WARNING, 0.16, 0.15),  # tau between them
        _feature("narrow", Level.CRITICAL, 0.4, 0.03),  # tau below both
        _feature("unknown", Level.OK, 0.01, None),
    )
    model = ModelView("churn", "1", 1000, 0, 500, features, 0, 0.0, None)
    snapshot = Snapshot(taken_unix_ns=0, start_unix_ns=0, instance_id="x", pid=1, models=(model,))

    stated = {
        o.key.subject: o.threshold
        for o in observations(snapshot, 0.1, 0.2)
        if o.key.subject in {f.name for f in features}
    }

    assert stated == {"wide": 0.264, "middle": 0.15, "narrow": 0.2, "unknown": 0.1}


def test_the_performance_threshold_stated_is_the_drop_the_level_crossed() -> None:
    def stated(level: Level) -> float | None:
        summary = PerformanceSummary(
            "churn", "1", "classification", 500, 500, window=(("accuracy", 0.8),), level=int(level),
            baseline_accuracy=0.9,
        )  # fmt: skip
        snapshot = Snapshot(taken_unix_ns=0, start_unix_ns=0, instance_id="x", pid=1, performance=(summary,))
        [observed] = observations(snapshot, 0.1, 0.2)
        assert (observed.key.subject, observed.score) == ("performance", 0.8)
        return observed.threshold

    # PerformanceThresholds: WARNING 2.5 points below the baseline, CRITICAL 5 points below.
    assert stated(Level.WARNING) == pytest.approx(0.875)
    assert stated(Level.CRITICAL) == pytest.approx(0.85)
    assert stated(Level.OK) == pytest.approx(0.875)  # a recovering alert: the first limit


def test_the_performance_threshold_follows_the_thresholds_judged_with() -> None:
    summary = PerformanceSummary("churn", "1", "classification", 500, 500, level=int(Level.WARNING),
                                 baseline_accuracy=0.9)  # fmt: skip
    snapshot = Snapshot(taken_unix_ns=0, start_unix_ns=0, instance_id="x", pid=1, performance=(summary,))
    thresholds = PerformanceThresholds(critical_drop=0.2, warning_drop=0.1)
    [observed] = observations(snapshot, 0.1, 0.2, performance_thresholds=thresholds)
    assert observed.threshold == pytest.approx(0.8)
