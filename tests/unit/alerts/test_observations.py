"""A feature's alert states the limit its PSI was compared with: the larger of the configured
threshold and the window's noise floor tau (a small window's noise alone can pass 0.1 or 0.2)."""

from __future__ import annotations

from modeltap.alerts.observations import observations
from modeltap.snapshot import FeatureView, ModelView, Snapshot
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
