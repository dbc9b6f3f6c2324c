"""The alert level of realised model performance against its baseline.

The baseline is the reference's performance (a labelled validation set profiled with
`modeltap profile --target --prediction`) or, without one, the first labels joined. A window's
accuracy (or another proportion-valued primary metric) is CRITICAL when it is more than 5
percentage points below the baseline and a one-sided two-proportion z-test says the drop is not
noise (p < `alpha`, default 1e-3); WARNING at 2.5 points with the same test; OK otherwise, and OK
on fewer than `min_labels` (100) joined labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modeltap.stats.scores import Level


@dataclass(frozen=True)
class PerformanceThresholds:
    critical_drop: float = 0.05
    warning_drop: float = 0.025
    alpha: float = 1e-3
    min_labels: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.warning_drop <= self.critical_drop < 1:
            raise ValueError("need 0 < warning_drop <= critical_drop < 1")
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        if self.min_labels < 1:
            raise ValueError("min_labels must be >= 1")


def drop_pvalue(baseline_hits: int, baseline_n: int, window_hits: int, window_n: int) -> float | None:
    """One-sided p-value of "the window's proportion is below the baseline's" (pooled two-proportion
    z-test); None when a sample is empty or the pooled proportion is 0 or 1."""
    if baseline_n <= 0 or window_n <= 0:
        return None
    pooled = (baseline_hits + window_hits) / (baseline_n + window_n)
    if pooled <= 0.0 or pooled >= 1.0:
        return None
    se = math.sqrt(pooled * (1 - pooled) * (1 / baseline_n + 1 / window_n))
    z = (baseline_hits / baseline_n - window_hits / window_n) / se
    from scipy.stats import norm  # on first use, as in `scores`

    return float(norm.sf(z))


def performance_level(
    baseline_hits: int,
    baseline_n: int,
    window_hits: int,
    window_n: int,
    thresholds: PerformanceThresholds = PerformanceThresholds(),
) -> Level:
    if window_n < thresholds.min_labels or baseline_n <= 0:
        return Level.OK
    drop = baseline_hits / baseline_n - window_hits / window_n
    pvalue = drop_pvalue(baseline_hits, baseline_n, window_hits, window_n)
    if pvalue is None or pvalue >= thresholds.alpha:
        return Level.OK
    if drop > thresholds.critical_drop:
        return Level.CRITICAL
    if drop > thresholds.warning_drop:
        return Level.WARNING
    return Level.OK
