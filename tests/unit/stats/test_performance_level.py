"""Performance levels: magnitude and significance both needed; nothing on too few labels."""

from __future__ import annotations

import math

import pytest
from scipy.stats import norm

from modeltap.stats.performance_level import PerformanceThresholds, drop_pvalue, performance_level
from modeltap.stats.scores import Level


def test_the_pvalue_is_the_pooled_one_sided_two_proportion_z_test() -> None:
    p1, n1, p2, n2 = 900, 1000, 1680, 2000
    pooled = (p1 + p2) / (n1 + n2)
    z = (p1 / n1 - p2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert drop_pvalue(p1, n1, p2, n2) == pytest.approx(norm.sf(z), rel=1e-12)
    assert drop_pvalue(0, 10, 0, 10) is None
    assert drop_pvalue(5, 0, 1, 1) is None


@pytest.mark.parametrize(
    ("baseline", "window", "level"),
    [
        ((900, 1000), (1680, 2000), Level.CRITICAL),  # 6 points down, significant
        ((900, 1000), (126, 150), Level.OK),  # 6 points down, but 150 labels cannot tell (p ~ 0.014)
        ((9000, 10000), (4350, 5000), Level.WARNING),  # 3 points down, significant
        ((9000, 10000), (4425, 5000), Level.OK),  # 1.5 points down: significant but small
        ((900, 1000), (80, 99), Level.OK),  # fewer than 100 labels
        ((900, 1000), (950, 1000), Level.OK),  # better than the baseline
    ],
)
def test_levels(baseline: tuple[int, int], window: tuple[int, int], level: Level) -> None:
    assert performance_level(*baseline, *window) == level


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="warning_drop"):
        PerformanceThresholds(critical_drop=0.01, warning_drop=0.02)
    with pytest.raises(ValueError, match="alpha"):
        PerformanceThresholds(alpha=0.0)
