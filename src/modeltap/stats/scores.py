"""Drift scores over bucket counts, and the alert levels built on them.

Every score here is a pure, vectorised function of two bucket COUNT vectors, `reference` and
`current`, of the same length: counts and not proportions, so that counts summed across replicas
(the exported histograms) give exactly the score of the merged stream. The functions never raise
and never return NaN on data: when a score cannot be computed they return `None`. A score cannot be
computed when

- an input is not one-dimensional, the two lengths differ, or there are fewer than 2 buckets
  (a single bucket always compares equal, so a score on it carries no information);
- a count is negative or not finite, or a vector's total is 0 (an empty reference or window) or
  above 2**53 (beyond float64's exact integers; no real count gets there);
- the function names a further case (`chi2_homogeneity`, `ks_binned`), or scipy cannot evaluate
  the score (it returns NaN or raises on such extreme inputs; this is caught, never propagated).

Numeric features use the reference profile's fine buckets `(-inf, lo], (lo, q1], ..., (q99, max],
(max, +inf)` for KS, and for PSI and Jensen-Shannon the 10 decile buckets plus the two out-of-range
buckets, obtained from the fine counts with `coarse_counts`. Categorical features use the
vocabulary plus `__other__` and `__missing__` for every score. Users comparing with other tools:
the numbers agree with Evidently, NannyML or scipy only on the same buckets -- Evidently bins
numerics on Sturges edges of reference+current and NannyML on histogram edges of the reference,
where modeltap uses reference deciles; differences of the formulas themselves are stated on each
function.

Alert levels (`feature_level`, `overall_level`, `sigma_level`) follow the statistics
specification: PSI magnitude decides WARNING and CRITICAL, a significant test alone gives INFO.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from modeltap.config import ModelTapConfig

# SciPy is imported by the functions that call it, on first use: it is most of what a monitor
# imports (0.7 s of 1.3 s here), and a monitor restarted after a crash takes its serving
# processes' connections again that much sooner; one with nothing to test (no reference, no
# labels, no outcomes) never loads it. An analysis inside a serving process imports it up front
# instead (`load_statistics`).


def load_statistics() -> None:
    """Import what the statistics call (SciPy's), now: for an analysis that runs inside a serving
    process, where the import on first use would hold the interpreter for most of a second while
    requests wait."""
    import scipy.spatial.distance
    import scipy.stats  # noqa: F401


PSI_FLOOR = 1e-4
"""Proportion given to an empty PSI bucket (see `psi`)."""

MAX_TOTAL = float(2**53)
"""Largest count total accepted: float64 holds every integer up to it exactly."""

MIN_SIGMA_HISTORY = 30
"""Fewest finite history points `sigma_level` needs before it raises anything above OK."""


def _pair(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """Both count vectors as float64 with their totals, or None if no score can be computed."""
    try:
        ref = np.asarray(reference, dtype=np.float64)
        cur = np.asarray(current, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if ref.ndim != 1 or ref.shape != cur.shape or ref.size < 2:
        return None
    if not (np.isfinite(ref).all() and np.isfinite(cur).all()):
        return None
    if (ref < 0).any() or (cur < 0).any():
        return None
    with np.errstate(over="ignore"):
        n = float(ref.sum())
        m = float(cur.sum())
    if not (0 < n <= MAX_TOTAL and 0 < m <= MAX_TOTAL):
        return None
    return ref, cur, n, m


def psi(reference: np.ndarray, current: np.ndarray, floor: float = PSI_FLOOR) -> float | None:
    """Population Stability Index, `sum((a - e) * ln(a / e))`, or None.

    `e = reference / reference.sum()` and `a = current / current.sum()` are the bucket proportions.
    A proportion that is exactly 0 is replaced by `floor` (default 1e-4) and the vector is NOT
    renormalised afterwards, so the floored proportions may sum to slightly more than 1. A bucket
    empty in both vectors therefore contributes exactly 0, and a bucket empty on one side
    contributes `(p - floor) * ln(p / floor)`: the floor bounds PSI for a category or an
    out-of-range share that appears or disappears (ln(0.1 / 1e-4) ~ 6.9 per unit of share).

    Every term is >= 0 (`a - e` and `ln(a / e)` have the same sign), so PSI >= 0; the formula is
    symmetric in reference and current. The value depends only on the proportions, so PSI of
    counts summed across replicas equals PSI of the concatenated stream.

    Comparison: Evidently's `psi` uses the same formula and the same 1e-4 floor without
    renormalisation, except that it floors with `min(nonzero share) / 1e6` instead when the
    smallest non-zero share is <= 1e-4, and it bins numerics differently (see the module notes).

    None (besides the cases in the module notes) when `floor` is not a finite number > 0, or when
    the ratio of two proportions overflows (only with fractional counts near 1e-308).
    """
    pair = _pair(reference, current)
    if pair is None or not (isinstance(floor, (int, float)) and 0 < floor < math.inf):
        return None
    ref, cur, n, m = pair
    e = ref / n
    a = cur / m
    e[e == 0] = floor
    a[a == 0] = floor
    with np.errstate(all="ignore"):
        value = float(np.sum((a - e) * np.log(a / e)))
    return value if math.isfinite(value) else None


def js_distance(reference: np.ndarray, current: np.ndarray) -> float | None:
    """Jensen-Shannon distance in base 2 (between 0 and 1) of the bucket proportions, or None.

    `sqrt((KL(p || m) + KL(q || m)) / 2)` with `m = (p + q) / 2` and logarithms in base 2, where
    `p` and `q` are the reference and current proportions. This is a distance (the square root of
    the divergence), as NannyML reports it; Evidently calls scipy with its default natural
    logarithm, which gives this value times `sqrt(ln 2)` (~0.833).

    Computed by `scipy.spatial.distance.jensenshannon(p, q, base=2)` on `p = reference /
    reference.sum()` and `q = current / current.sum()`, so the value is scipy's to the last bit.
    Empty buckets need no floor: scipy's `rel_entr` takes `0 * log(0 / m)` as 0, so a bucket empty
    in both vectors contributes nothing and one empty on one side contributes a finite amount.
    When the two distributions are equal up to rounding, the summed divergence can come out a few
    ulps below 0 and scipy's square root gives NaN; this function returns 0.0 instead.
    """
    from scipy.spatial.distance import jensenshannon

    pair = _pair(reference, current)
    if pair is None:
        return None
    ref, cur, n, m = pair
    try:
        with np.errstate(all="ignore"):
            value = float(jensenshannon(ref / n, cur / m, base=2))
    except (ArithmeticError, ValueError, TypeError):
        return None
    return 0.0 if math.isnan(value) else value


# Above this effective size the limiting (Kolmogorov) distribution replaces `kstwo` for the
# p-value: kstwo.sf takes up to ~130 ms at n = 1e5 against ~0.3 ms, and the two differ by under
# 2 % relative there (measured: 4.09e-9 vs 4.12e-9 at n = 1e5, D = 0.01), far below what moves a
# decision at alpha / F.
KS_EXACT_LIMIT = 20_000


def ks_binned(
    reference: np.ndarray, current: np.ndarray, exact_limit: int | None = KS_EXACT_LIMIT
) -> tuple[float, float] | None:
    """Two-sample Kolmogorov-Smirnov test on binned data: `(D, p-value)`, or None.

    `D = max |F_cur - F_ref|` over the bucket edges, where `F` are the cumulative sums of the
    bucket proportions (the empirical CDFs evaluated at each bucket's upper edge). With the
    upper-inclusive bucket rule (`searchsorted(edges, x, side="left")`) these are exactly the
    empirical CDFs of the raw samples at the edges, so `D` is a LOWER BOUND of the exact statistic
    `scipy.stats.ks_2samp(...).statistic` of the raw values: between two edges both CDFs move by
    at most that bucket's mass, so the exact statistic exceeds `D` by at most one fine bucket's
    mass, `max_i max(reference_i / N, current_i / M)` (about 1 % with the 100 percentile buckets
    when the window resembles the reference).

    The p-value is the two-sided asymptotic one exactly as `scipy.stats.ks_2samp(method="asymp")`
    computes it: `scipy.stats.kstwo.sf(D, round(N * M / (N + M)))` with `N`, `M` the totals and
    numpy's round-half-to-even. Because `D` is a lower bound, this p-value is conservative (at
    least the p-value of the exact statistic with the same formula). Ties and discrete data are
    handled as the binned CDFs see them; the asymptotic distribution assumes continuous data.

    None (besides the cases in the module notes) when `round(N * M / (N + M)) < 1`, i.e. with one
    value on each side, or when scipy returns NaN (scipy 1.17 does for some D at effective sizes
    around 1e12 and beyond).

    Cost: the cumulative sums are microseconds, but scipy's `kstwo.sf` is not constant-time: in
    scipy 1.17 it takes ~0.2 ms at effective sizes `N M / (N + M)` of a few thousand, yet ~0.1 s
    around 5e4-1e5 and ~1 s around 1e6 when the p-value is small. So above `exact_limit` (default
    `KS_EXACT_LIMIT`; None = always exact) the p-value is `kstwobign.sf(D * sqrt(en))`, the
    limiting distribution, a deviation from STATS.md measured to be under 2 % relative there.
    """
    from scipy.stats import kstwo, kstwobign

    pair = _pair(reference, current)
    if pair is None:
        return None
    ref, cur, n, m = pair
    d = float(np.max(np.abs(np.cumsum(cur) / m - np.cumsum(ref) / n)))
    big, small = max(n, m), min(n, m)  # ks_2samp's order, for the same rounding of en
    en = float(np.round(big * small / (big + small)))
    if en < 1:
        return None
    try:
        with np.errstate(all="ignore"):
            if exact_limit is None or en <= exact_limit:
                pvalue = float(np.clip(kstwo.sf(d, en), 0.0, 1.0))
            else:
                pvalue = float(np.clip(kstwobign.sf(d * math.sqrt(en)), 0.0, 1.0))
    except (ArithmeticError, ValueError, TypeError):
        return None
    if math.isnan(pvalue):
        return None
    return d, pvalue


MIN_EXPECTED = 5.0
"""Smallest expected count a chi-square column is tested with alone (Cochran's rule); sparser
columns are pooled (`chi2_table`)."""


def chi2_table(reference: np.ndarray, current: np.ndarray) -> np.ndarray | None:
    """The 2 x K' table `chi2_homogeneity` tests: `[reference; current]` without the columns empty
    in both rows (their expected counts would be 0), and with the columns whose expected count in
    the smaller row is under `MIN_EXPECTED` pooled into one. A pooled column still under it is
    added to the column of the smallest total, unless that would leave one column. Where every
    column is that sparse (a window far under `min_samples`), the table is kept as it is. None
    when fewer than 2 columns remain.

    Why pooled: with rare categories in the vocabulary (a top-50 list holds many at a 500-row
    window) Pearson's statistic is far from its chi-square distribution, and the test rejects
    much more often than alpha without drift (1.4 % at alpha 0.1 % for a vocabulary with
    categories of share 0.1 % and 0.02 %; 0.16 % once pooled). The column totals are kept, so the
    pooled table still compares the same two samples.
    """
    pair = _pair(reference, current)
    if pair is None:
        return None
    ref, cur, n, m = pair
    keep = (ref > 0) | (cur > 0)
    ref, cur = ref[keep], cur[keep]
    if ref.size < 2:
        return None
    totals = ref + cur
    sparse = totals * (min(n, m) / (n + m)) < MIN_EXPECTED
    if sparse.any() and not sparse.all():
        pooled_ref, pooled_cur = float(ref[sparse].sum()), float(cur[sparse].sum())
        ref, cur, totals = ref[~sparse], cur[~sparse], totals[~sparse]
        # One column left: the pool stays a column of its own, however sparse (a binary feature
        # whose rare class jumped from 0.05 % to 20 % is a 2 x 2 test, not none).
        if ref.size > 1 and (pooled_ref + pooled_cur) * (min(n, m) / (n + m)) < MIN_EXPECTED:
            smallest = int(np.argmin(totals))
            ref[smallest] += pooled_ref
            cur[smallest] += pooled_cur
        else:
            ref = np.append(ref, pooled_ref)
            cur = np.append(cur, pooled_cur)
        if ref.size < 2:
            return None
    return np.vstack((ref, cur))


def chi2_homogeneity(reference: np.ndarray, current: np.ndarray) -> tuple[float, float] | None:
    """Chi-square test of homogeneity of reference vs current counts: `(statistic, p-value)`, or None.

    The statistic and p-value of `scipy.stats.chi2_contingency` on the 2 x K' table `chi2_table`
    makes of `[reference; current]` (columns empty in both rows dropped, columns expected to hold
    fewer than 5 values pooled), with scipy's defaults: Pearson's statistic (`lambda_=None`) and
    `correction=True`, which applies Yates' continuity correction only when the table has one
    degree of freedom, i.e. exactly 2 columns remain. Degrees of freedom are `K' - 1`.

    Unlike a goodness-of-fit test against the reference ratios (Evidently's `chisquare`), the
    homogeneity test treats the reference counts as a sample too, so a small reference does not
    inflate significance.

    None (besides the cases in the module notes) when fewer than 2 columns remain.
    """
    from scipy.stats import chi2_contingency

    table = chi2_table(reference, current)
    if table is None:
        return None
    try:
        with np.errstate(all="ignore"):
            result = chi2_contingency(table)
    except (ArithmeticError, ValueError, TypeError):
        return None
    statistic, pvalue = float(result[0]), float(result[1])
    if not (math.isfinite(statistic) and math.isfinite(pvalue)):
        return None
    return statistic, pvalue


def coarse_counts(
    fine_counts: np.ndarray, fine_to_coarse: np.ndarray, n_coarse: int | None = None
) -> np.ndarray:
    """Counts of the coarse buckets: `result[j] = sum(fine_counts[fine_to_coarse == j])`.

    `fine_to_coarse[i]` is the coarse bucket of fine bucket `i` (any non-negative ints, not
    necessarily contiguous or sorted), e.g. the 10 decile buckets plus the 2 out-of-range buckets
    of a numeric feature from its fine buckets. The result has `n_coarse` entries (default
    `max(fine_to_coarse) + 1`), so coarse buckets that no fine bucket maps to are 0. Integer counts
    stay exact int64 (summed with `np.add.at`); other counts are summed as float64 (`np.bincount`
    with weights). Summing commutes with the replica merge: coarse counts of summed fine counts
    equal the sum of the replicas' coarse counts.

    This is structural plumbing rather than a score: a malformed mapping (different lengths, a
    negative index, an index >= `n_coarse`) raises `ValueError`.
    """
    fine = np.asarray(fine_counts)
    index = np.asarray(fine_to_coarse)
    if fine.ndim != 1 or index.shape != fine.shape:
        raise ValueError(f"fine counts {fine.shape} and mapping {index.shape} must be 1-D of one length")
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"the fine-to-coarse mapping must hold integers, got {index.dtype}")
    index = index.astype(np.intp)
    top = int(index.max()) + 1 if index.size else 0
    size = top if n_coarse is None else n_coarse
    if index.size and (int(index.min()) < 0 or top > size):
        raise ValueError(f"fine-to-coarse indices must lie in [0, {size})")
    if np.issubdtype(fine.dtype, np.integer) or fine.dtype == np.bool_:
        result = np.zeros(size, dtype=np.int64)
        np.add.at(result, index, fine.astype(np.int64))
        return result
    summed: np.ndarray = np.bincount(index, weights=fine.astype(np.float64), minlength=size)
    return summed


def missing_rate_test(
    reference_missing: int, reference_total: int, window_missing: int, window_total: int
) -> tuple[float, float] | None:
    """Two-proportion z-test of the window's missing rate against the reference's:
    `(rate shift, two-sided p-value)`, pooled standard error; None when either total is 0 or the
    pooled rate is 0 or 1 (no variance: the rates are equal and nothing can be tested).

    Where an expected count of the 2 x 2 table is under `MIN_EXPECTED` (a few missing values in
    all) the normal approximation is far off (1 missing in 600 against none in 20 000: p 8e-9, the
    exact test's 0.03), and the p-value is Fisher's exact test's (`scipy.stats.fisher_exact`)."""
    if reference_total <= 0 or window_total <= 0:
        return None
    p_ref = reference_missing / reference_total
    p_win = window_missing / window_total
    pooled = (reference_missing + window_missing) / (reference_total + window_total)
    if pooled <= 0.0 or pooled >= 1.0:
        return None
    from scipy.stats import fisher_exact, norm

    if min(pooled, 1 - pooled) * min(reference_total, window_total) < MIN_EXPECTED:
        table = [
            [reference_missing, reference_total - reference_missing],
            [window_missing, window_total - window_missing],
        ]
        return p_win - p_ref, float(fisher_exact(table).pvalue)
    se = math.sqrt(pooled * (1 - pooled) * (1 / reference_total + 1 / window_total))
    z = (p_win - p_ref) / se
    return p_win - p_ref, float(2 * norm.sf(abs(z)))


def psi_noise_floor(buckets: int, n_reference: int, n_current: int, alpha: float = 1e-3) -> float:
    """PSI noise floor `tau = chi2.ppf(1 - alpha, buckets - 1) * (1/N + 1/M)`.

    With no drift, `N * M / (N + M) * PSI` is approximately chi-square with `B - 1` degrees of
    freedom (PSI is to second order Pearson's symmetric chi-square divided by the sample sizes),
    so PSI exceeds `tau` with probability about `alpha`. `buckets` is the number of PSI buckets
    B (12 for a numeric feature: 10 deciles + 2 out-of-range; counting the out-of-range buckets,
    which are nearly empty without drift, makes tau slightly conservative). The approximation
    needs a few values per bucket; with very small windows, empty buckets hit the 1e-4 floor and
    PSI's tail is heavier than tau assumes -- `min_samples` keeps such windows at OK anyway.

    Examples with B = 12 and N = 20000: M = 100 gives tau ~ 0.31 (above the 0.1 WARNING
    threshold: with 10 equiprobable buckets about 39 % of 100-value windows have PSI > 0.1 by
    noise alone), M = 2000 gives tau ~ 0.017.

    Returns `math.inf` (no PSI value exceeds it) when the floor is undefined: fewer than 2
    buckets, a sample size <= 0, or alpha outside (0, 1).
    """
    from scipy.stats import chi2

    if buckets < 2 or n_reference <= 0 or n_current <= 0 or not 0 < alpha < 1:
        return math.inf
    tau = float(chi2.ppf(1.0 - alpha, buckets - 1)) * (1.0 / n_reference + 1.0 / n_current)
    return tau if math.isfinite(tau) else math.inf


class Level(IntEnum):
    """Alert levels, ordered so that `max` gives the most severe."""

    OK = 0
    INFO = 1
    """A test is significant (after Bonferroni) but the PSI magnitude is small."""
    WARNING = 2
    CRITICAL = 3
    EMERGENCY = 4
    """Reserved for business-metric breaches; no function produces it yet."""


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds; the defaults are the specification's.

    - `psi_warning`, `psi_critical`: PSI above `max(threshold, tau)` is WARNING / CRITICAL.
    - `alpha`: family-wise significance level of the tests (Bonferroni-divided by the number of
      monitored features) and of the PSI noise floor.
    - `min_samples`: no level above OK for windows with fewer values.
    - `sigma_k`: k of the `mu + k sigma` rule for series without a reference.

    Raises `ValueError` for inconsistent values (a configuration error, not a data condition).
    """

    psi_warning: float = 0.1
    psi_critical: float = 0.2
    alpha: float = 1e-3
    min_samples: int = 500
    sigma_k: float = 3.0

    def __post_init__(self) -> None:
        if not 0 <= self.psi_warning <= self.psi_critical < math.inf:
            raise ValueError("thresholds need 0 <= psi_warning <= psi_critical < inf")
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        if self.min_samples < 0:
            raise ValueError("min_samples must be >= 0")
        if not 0 < self.sigma_k < math.inf:
            raise ValueError("sigma_k must be a finite number > 0")


DEFAULT_THRESHOLDS = Thresholds()


def thresholds_of(config: ModelTapConfig) -> Thresholds:
    """The thresholds a configuration sets (the monitor's levels and the generated rules)."""
    return Thresholds(
        psi_warning=config.psi_warning,
        psi_critical=config.psi_critical,
        alpha=config.drift_alpha,
        min_samples=config.min_samples,
        sigma_k=config.sigma_k,
    )


def _usable(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def feature_level(
    psi: float | None,
    pvalue: float | None,
    n_window: int,
    tau: float,
    monitored_features: int,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Level:
    """The alert level of one feature over one window.

    - OK if `n_window` (the number of window values the scores were computed from) is below
      `thresholds.min_samples`, whatever the scores;
    - CRITICAL if `psi > max(psi_critical, tau)`;
    - else WARNING if `psi > max(psi_warning, tau)`;
    - else INFO if `pvalue < alpha / F` with `F = monitored_features` (Bonferroni over the
      monitored features; F < 1 counts as 1): the drift is statistically significant but small;
    - else OK.

    `tau` is the PSI noise floor (`psi_noise_floor`; a NaN tau is ignored, an infinite one
    disables the PSI rules); comparisons are strict. `pvalue` is the feature's test p-value: KS
    for numeric features, chi-square homogeneity for categorical ones (pass the smaller if both
    are computed). A `None` (or NaN) PSI skips the PSI rules and a `None`
    (or NaN) p-value skips the test rule, so both None gives OK.
    """
    if n_window < thresholds.min_samples:
        return Level.OK
    value = _usable(psi)
    floor = -math.inf if math.isnan(tau) else tau
    if value is not None:
        if value > max(thresholds.psi_critical, floor):
            return Level.CRITICAL
        if value > max(thresholds.psi_warning, floor):
            return Level.WARNING
    p = _usable(pvalue)
    if p is not None and p < thresholds.alpha / max(monitored_features, 1):
        return Level.INFO
    return Level.OK


def overall_level(levels: Iterable[Level]) -> Level:
    """The highest of the levels; OK when there are none."""
    return max(levels, default=Level.OK)


def sigma_level(
    history: np.ndarray,
    value: float,
    k: float = DEFAULT_THRESHOLDS.sigma_k,
    floor: Callable[[float], float] | None = None,
) -> Level:
    """Level of a series without a reference (latency, error rate) against its own history.

    With `mu` the mean and `sigma` the sample standard deviation (ddof=1) of the finite history
    values: CRITICAL if `value > mu + 2k sigma`, WARNING if `value > mu + k sigma`, else OK. The
    rule is one-sided (only increases alert: higher latency or error rate is worse). `floor(mu)`,
    if given, is the least `sigma` is taken to be: the spread the value itself has by its nature
    (a rate's binomial error over the slot's requests, a quantile's sketch accuracy). A quiet
    history says nothing of that spread: 30 slots without an error made one error in 100
    requests a WARNING, two a CRITICAL.

    OK with fewer than 30 finite history points (`MIN_SIGMA_HISTORY`) or a NaN `value`. A constant
    history without a floor (`sigma == 0`) gives OK for `value <= mu` and WARNING above it: both
    bands collapse onto `mu`, and without a spread there is no scale to call a departure CRITICAL.
    """
    past = np.asarray(history, dtype=np.float64).ravel()
    past = past[np.isfinite(past)]
    if past.size < MIN_SIGMA_HISTORY or math.isnan(value):
        return Level.OK
    mu = float(past.mean())
    sigma = float(past.std(ddof=1))
    if floor is not None:
        sigma = max(sigma, floor(mu))
    if sigma == 0:
        return Level.WARNING if value > mu else Level.OK
    if value > mu + 2 * k * sigma:
        return Level.CRITICAL
    if value > mu + k * sigma:
        return Level.WARNING
    return Level.OK
