"""Drift scores over bucket counts and the alert levels: agreement with scipy, the binned-KS bound,
the replica merge, the None cases, and a no-drift / drift calibration by Monte Carlo (fixed seeds)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import binom, chi2, chi2_contingency, fisher_exact, ks_2samp, kstwo
from scipy.stats import norm as scipy_norm

from modeltap.stats.scores import (
    DEFAULT_THRESHOLDS,
    MIN_EXPECTED,
    Level,
    Thresholds,
    chi2_homogeneity,
    chi2_table,
    coarse_counts,
    feature_level,
    js_distance,
    ks_binned,
    missing_rate_test,
    overall_level,
    psi,
    psi_noise_floor,
    sigma_level,
)

# --- helpers: the reference profile's buckets, as STATS.md defines them ---------------------------


def fine_edges(reference: np.ndarray) -> np.ndarray:
    """`lo = nextafter(min, -inf)`, the 99 inner percentiles, max; deduplicated."""
    inner = np.percentile(reference, np.arange(1, 100))
    lo = np.nextafter(reference.min(), -np.inf)
    return np.unique(np.concatenate(([lo], inner, [reference.max()])))


def bucket_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Upper-inclusive buckets `(-inf, e0], (e0, e1], ..., (e_last, inf)`: len(edges) + 1 counts."""
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)


# Fine bucket -> PSI bucket for 101 edges (no duplicates): below-range, 10 deciles, above-range.
DECILES = np.array([0, *(1 + i // 10 for i in range(100)), 11])
PSI_BUCKETS = 12


def counts_vectors(
    min_size: int = 2, max_size: int = 40, max_count: int = 10**6
) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """Pairs of int64 count vectors of one length, with many zero buckets and some empty vectors."""
    cell = st.one_of(st.just(0), st.integers(0, 20), st.integers(0, max_count))

    def pair(k: int) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
        vector = st.lists(cell, min_size=k, max_size=k).map(lambda v: np.array(v, dtype=np.int64))
        return st.tuples(vector, vector)

    return st.integers(min_size, max_size).flatmap(pair)


# --- Jensen-Shannon -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(counts_vectors())
def test_js_equals_scipy_jensenshannon_base2(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    result = js_distance(ref, cur)
    if ref.sum() == 0 or cur.sum() == 0:
        assert result is None
        return
    expected = float(jensenshannon(ref / ref.sum(), cur / cur.sum(), base=2))
    assert result is not None
    assert 0.0 <= result <= 1.0
    if math.isnan(expected):  # scipy's sqrt of a sum rounded a few ulps below 0
        assert result == 0.0
    else:
        assert abs(result - expected) <= 1e-12


def test_js_handles_zero_buckets_and_bounds() -> None:
    assert js_distance(np.array([5, 0, 5]), np.array([5, 0, 5])) == 0.0
    assert js_distance(np.array([10, 0]), np.array([0, 10])) == pytest.approx(1.0, abs=1e-15)
    # A bucket empty in both changes nothing.
    with_empty = js_distance(np.array([3, 0, 7]), np.array([6, 0, 4]))
    assert with_empty == js_distance(np.array([3, 7]), np.array([6, 4]))


# --- chi-square homogeneity -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(counts_vectors())
def test_chi2_equals_scipy_chi2_contingency(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    result = chi2_homogeneity(ref, cur)
    table = chi2_table(ref, cur)
    if table is None:
        assert result is None
        return
    expected = chi2_contingency(table)  # scipy's defaults
    assert result is not None
    statistic, pvalue = result
    assert abs(statistic - expected[0]) <= 1e-12 * max(1.0, abs(expected[0]))
    assert abs(pvalue - expected[1]) <= 1e-12
    assert 0.0 <= pvalue <= 1.0


@settings(max_examples=300, deadline=None)
@given(counts_vectors())
def test_chi2_table_pools_only_the_sparse_columns(pair: tuple[np.ndarray, np.ndarray]) -> None:
    """Columns empty in both rows go; those expected to hold fewer than MIN_EXPECTED values in the
    smaller row are pooled (into one column, or into the smallest column when the pool is still
    sparse), unless all are; with one dense column the pool stays a column of its own; the rows'
    totals are kept; a table without sparse columns is the kept columns as they were."""
    ref, cur = pair
    table = chi2_table(ref, cur)
    keep = (ref > 0) | (cur > 0)
    if ref.sum() == 0 or cur.sum() == 0 or keep.sum() < 2:
        assert table is None
        return
    kept = np.vstack((ref[keep], cur[keep])).astype(np.float64)
    share = min(ref.sum(), cur.sum()) / (ref.sum() + cur.sum())
    sparse = kept.sum(axis=0) * share < MIN_EXPECTED
    if not sparse.any() or sparse.all():
        assert table is not None
        np.testing.assert_array_equal(table, kept)
        return
    assert table is not None
    assert table.sum(axis=1).tolist() == kept.sum(axis=1).tolist()
    if (~sparse).sum() == 1:  # one dense column: the pool stays a column of its own, a 2 x 2 test
        assert table.tolist() == [
            [kept[0, ~sparse].sum(), kept[0, sparse].sum()],
            [kept[1, ~sparse].sum(), kept[1, sparse].sum()],
        ]
        return
    assert table.shape[1] in ((~sparse).sum(), (~sparse).sum() + 1)
    assert (table.sum(axis=0) * share >= MIN_EXPECTED).all()


def test_chi2_with_rare_categories_keeps_its_false_alarm_rate() -> None:
    """A vocabulary with categories of share 0.4 % to 0.02 % (expected window counts far under 5
    at M = 500), no drift, 8000 windows each against a freshly drawn N = 20 000 reference: p < alpha
    (1e-3) at most binom.ppf(0.999, 8000, alpha) times. On the table with every column kept, the
    same draws reject several times more often than alpha."""
    rng = np.random.default_rng(20261208)
    shares = np.array([0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.0150, 0.0040, 0.0008, 0.0002])
    shares /= shares.sum()
    windows, alpha = 8000, 1e-3
    pooled = unpooled = 0
    for _ in range(windows):
        ref = np.append(rng.multinomial(20_000, shares), [0, 0])  # + __other__ and __missing__
        cur = np.append(rng.multinomial(500, shares), [0, 0])
        result = chi2_homogeneity(ref, cur)
        pooled += result is not None and result[1] < alpha
        keep = (ref > 0) | (cur > 0)
        unpooled += float(chi2_contingency(np.vstack((ref[keep], cur[keep])))[1]) < alpha
    bound = int(binom.ppf(0.999, windows, alpha))
    assert pooled <= bound, f"{pooled} of {windows} no-drift windows rejected (bound {bound})"
    assert unpooled > 2 * bound, unpooled  # what pooling is for


def test_chi2_two_columns_uses_yates_correction_like_scipy() -> None:
    ref, cur = np.array([40, 60, 0]), np.array([55, 45, 0])
    result = chi2_homogeneity(ref, cur)
    assert result is not None
    corrected = chi2_contingency(np.array([[40, 60], [55, 45]]), correction=True)
    uncorrected = chi2_contingency(np.array([[40, 60], [55, 45]]), correction=False)
    assert result == pytest.approx((corrected[0], corrected[1]), abs=1e-12)
    assert result[0] < uncorrected[0]


# --- binned KS ------------------------------------------------------------------------------------

DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, int, float], np.ndarray]] = {
    "normal": lambda rng, n, shift: rng.normal(shift, 1.0, n),
    "lognormal": lambda rng, n, shift: rng.lognormal(shift, 1.0, n),
    "uniform": lambda rng, n, shift: rng.uniform(shift, 1.0 + shift, n),
    "exponential": lambda rng, n, shift: rng.exponential(1.0 + shift, n),
    "student_t2": lambda rng, n, shift: rng.standard_t(2, n) + shift,
    "poisson": lambda rng, n, shift: rng.poisson(3.0 + 2 * shift, n).astype(np.float64),
    "rounded_normal": lambda rng, n, shift: np.round(rng.normal(shift, 2.0, n), 1),
    "mixture": lambda rng, n, shift: np.where(
        rng.random(n) < 0.3, rng.normal(-2.0, 0.5, n), rng.normal(1.0 + shift, 1.0, n)
    ),
}


@pytest.mark.parametrize("shift", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_binned_ks_is_a_lower_bound_within_one_fine_bucket(name: str, shift: float) -> None:
    """On 99-percentile edges of a reference sample: D_binned <= D_exact <= D_binned + the largest
    fine bucket's mass (reference or current share), and the p-value is kstwo's formula."""
    rng = np.random.default_rng(1000 * sorted(DISTRIBUTIONS).index(name) + int(shift * 10))
    draw = DISTRIBUTIONS[name]
    reference = draw(rng, 5000, 0.0)
    current = draw(rng, 1200, shift)
    edges = fine_edges(reference)
    ref_counts, cur_counts = bucket_counts(edges, reference), bucket_counts(edges, current)
    result = ks_binned(ref_counts, cur_counts)
    assert result is not None
    d, pvalue = result
    exact = float(ks_2samp(reference, current).statistic)
    bucket_mass = float(np.maximum(ref_counts / 5000, cur_counts / 1200).max())
    assert d <= exact + 1e-12
    assert exact - d <= bucket_mass + 1e-12
    assert pvalue == float(kstwo.sf(d, round(5000 * 1200 / (5000 + 1200))))


def test_binned_ks_on_lossless_buckets_equals_ks_2samp_asymp() -> None:
    """Integer data with an edge at every integer loses nothing: D and the p-value are scipy's."""
    rng = np.random.default_rng(5)
    reference = rng.binomial(20, 0.5, 3000).astype(np.float64)
    current = rng.binomial(20, 0.53, 700).astype(np.float64)
    edges = np.arange(0.0, 21.0)
    result = ks_binned(bucket_counts(edges, reference), bucket_counts(edges, current))
    expected = ks_2samp(reference, current, method="asymp")
    assert result is not None
    assert result[0] == pytest.approx(float(expected.statistic), abs=1e-12)
    assert result[1] == pytest.approx(float(expected.pvalue), abs=1e-12)


# Counts kept moderate: kstwo.sf costs ~0.1-1 s per call at effective sizes of 1e5-1e6.
@settings(max_examples=200, deadline=None)
@given(counts_vectors(max_count=500))
def test_ks_pvalue_is_kstwo_of_rounded_effective_size(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    result = ks_binned(ref, cur)
    n, m = int(ref.sum()), int(cur.sum())
    if n == 0 or m == 0 or round(n * m / (n + m)) < 1:
        assert result is None
        return
    assert result is not None
    d, pvalue = result
    expected_d = float(np.max(np.abs(np.cumsum(cur) / m - np.cumsum(ref) / n)))
    assert d == pytest.approx(expected_d, abs=1e-12)
    assert pvalue == pytest.approx(float(kstwo.sf(d, round(n * m / (n + m)))), abs=1e-12)


# --- PSI ------------------------------------------------------------------------------------------


def test_psi_hand_computed() -> None:
    # e = (0.5, 0.3, 0.2), a = (0.3, 0.3, 0.4):
    # PSI = (0.3 - 0.5) ln(0.3 / 0.5) + 0 + (0.4 - 0.2) ln(0.4 / 0.2) = 0.2 ln(5/3) + 0.2 ln 2
    expected = 0.2 * math.log(5 / 3) + 0.2 * math.log(2)
    assert expected == pytest.approx(0.2407945608651872, abs=1e-15)
    assert psi(np.array([50, 30, 20]), np.array([30, 30, 40])) == pytest.approx(expected, abs=1e-15)
    # Symmetric, and 0 on equal proportions whatever the totals.
    assert psi(np.array([30, 30, 40]), np.array([50, 30, 20])) == pytest.approx(expected, abs=1e-15)
    assert psi(np.array([1, 2, 3]), np.array([100, 200, 300])) == 0.0


def test_psi_floor_replaces_empty_proportions_without_renormalising() -> None:
    ref, cur = np.array([0, 50, 50]), np.array([10, 45, 45])
    e = np.array([1e-4, 0.5, 0.5])  # sums to 1.0001: not renormalised
    a = np.array([0.1, 0.45, 0.45])
    expected = float(np.sum((a - e) * np.log(a / e)))
    assert expected == pytest.approx(0.0999 * math.log(1000) + 2 * 0.05 * math.log(0.5 / 0.45), abs=1e-15)
    assert psi(ref, cur) == pytest.approx(expected, abs=1e-15)
    renormalised = e / e.sum()
    assert abs(expected - float(np.sum((a - renormalised) * np.log(a / renormalised)))) > 1e-6
    # Another floor, and a bucket empty on both sides contributes exactly nothing.
    assert psi(ref, cur, floor=1e-3) == pytest.approx(0.099 * math.log(100) + 0.1 * math.log(0.5 / 0.45))
    assert psi(np.array([0, 50, 50, 0]), np.array([10, 45, 45, 0])) == psi(ref, cur)
    assert psi(ref, cur, floor=0.0) is None
    assert psi(ref, cur, floor=math.nan) is None


REFERENCE_SAMPLE = np.random.default_rng(99).normal(0.0, 1.0, 5000)
REFERENCE_EDGES = fine_edges(REFERENCE_SAMPLE)
REFERENCE_FINE = bucket_counts(REFERENCE_EDGES, REFERENCE_SAMPLE)
REFERENCE_PSI = coarse_counts(REFERENCE_FINE, DECILES)


@settings(max_examples=200, deadline=None)
@given(
    stream=st.lists(
        st.one_of(st.floats(-4, 4), st.sampled_from([-10.0, 10.0, float(REFERENCE_SAMPLE.min())])),
        min_size=1,
        max_size=400,
    ),
    replicas=st.integers(2, 4),
    data=st.data(),
)
def test_psi_of_summed_replica_counts_equals_psi_of_the_stream(
    stream: list[float], replicas: int, data: st.DataObject
) -> None:
    values = np.array(stream)
    owner = np.array(
        data.draw(st.lists(st.integers(0, replicas - 1), min_size=len(stream), max_size=len(stream)))
    )
    per_replica = [bucket_counts(REFERENCE_EDGES, values[owner == r]) for r in range(replicas)]
    summed = np.sum(per_replica, axis=0)
    whole = bucket_counts(REFERENCE_EDGES, values)
    assert np.array_equal(summed, whole)
    coarse_of_sum = coarse_counts(summed, DECILES)
    assert np.array_equal(coarse_of_sum, np.sum([coarse_counts(c, DECILES) for c in per_replica], axis=0))
    merged, direct = psi(REFERENCE_PSI, coarse_of_sum), psi(REFERENCE_PSI, coarse_counts(whole, DECILES))
    assert merged is not None
    assert direct is not None
    assert abs(merged - direct) <= 1e-12


# --- None cases and robustness --------------------------------------------------------------------

SCORES: dict[str, Callable[[Any, Any], object]] = {
    "psi": psi,
    "js_distance": js_distance,
    "ks_binned": ks_binned,
    "chi2_homogeneity": chi2_homogeneity,
}

NONE_CASES: dict[str, tuple[Any, Any]] = {
    "empty": (np.array([], dtype=np.int64), np.array([], dtype=np.int64)),
    "empty_float": (np.zeros(0), np.zeros(0)),
    "reference_total_zero": (np.array([0, 0, 0]), np.array([1, 2, 3])),
    "current_total_zero": (np.array([1, 2, 3]), np.array([0, 0, 0])),
    "both_zero": (np.zeros(5, dtype=np.int64), np.zeros(5, dtype=np.int64)),
    "single_bucket": (np.array([10]), np.array([7])),
    "length_mismatch": (np.array([1, 2, 3]), np.array([1, 2])),
    "negative_count": (np.array([5, -1, 3]), np.array([1, 2, 3])),
    "nan_count": (np.array([5.0, math.nan, 3.0]), np.array([1.0, 2.0, 3.0])),
    "inf_count": (np.array([5.0, 1.0, 3.0]), np.array([1.0, math.inf, 3.0])),
    "overflowing_total": (np.array([1e308, 1e308]), np.array([1.0, 1.0])),
    "total_above_2_53": (np.array([0.0, 9.5e153]), np.array([1.0, 2.2e20])),
    "two_dimensional": (np.ones((2, 3)), np.ones((2, 3))),
    "not_numbers": (np.array(["a", "b"]), np.array(["c", "d"])),
}


@pytest.mark.parametrize("case", sorted(NONE_CASES))
@pytest.mark.parametrize("name", sorted(SCORES))
def test_scores_are_none_when_not_computable(name: str, case: str) -> None:
    ref, cur = NONE_CASES[case]
    assert SCORES[name](ref, cur) is None


def test_specific_none_cases() -> None:
    # chi-square: only one column non-empty in either row.
    assert chi2_homogeneity(np.array([5, 0, 0]), np.array([7, 0, 0])) is None
    # KS: round(1 * 1 / 2) = round(0.5) = 0 (half to even), no asymptotic distribution.
    assert ks_binned(np.array([1, 0]), np.array([0, 1])) is None
    assert ks_binned(np.array([2, 0]), np.array([0, 1])) is not None  # round(2/3) = 1
    # Scores that are defined on the same inputs.
    assert psi(np.array([5, 0, 0]), np.array([7, 0, 0])) == 0.0
    assert js_distance(np.array([5, 0, 0]), np.array([7, 0, 0])) == 0.0


def test_extreme_float_counts_give_none_or_finite_scores() -> None:
    assert psi(np.array([5e-324, 1.0]), np.array([1.0, 1.0])) is None  # 0.5 / 5e-324 overflows
    for score in SCORES.values():
        assert score(np.array([2.0**53, 0.0]), np.array([1.0, 1.0])) is not None  # the largest total
        assert score(np.array([2.0**53, 1024.0]), np.array([1.0, 1.0])) is None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 12).flatmap(
        lambda k: st.tuples(
            st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=k, max_size=k),
            st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=k, max_size=k),
        )
    )
)
def test_scores_never_raise_nor_return_nan(pair: tuple[list[float], list[float]]) -> None:
    ref, cur = np.array(pair[0], dtype=np.float64), np.array(pair[1], dtype=np.float64)
    for score in SCORES.values():
        result = score(ref, cur)
        values = result if isinstance(result, tuple) else (result,)
        for value in values:
            assert value is None or (isinstance(value, float) and math.isfinite(value))


# --- coarse buckets -------------------------------------------------------------------------------


def test_coarse_counts_sums_fine_buckets() -> None:
    fine = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)
    result = coarse_counts(fine, np.array([0, 1, 1, 2, 2, 0]))
    assert result.dtype == np.int64
    assert result.tolist() == [7, 5, 9]
    # Unsorted, with a coarse bucket nothing maps to, and an explicit size.
    assert coarse_counts(fine, np.array([3, 3, 0, 0, 3, 0]), n_coarse=5).tolist() == [13, 0, 0, 8, 0]
    floats = coarse_counts(np.array([0.5, 1.5, 2.0]), np.array([1, 0, 1]))
    assert floats.dtype == np.float64
    assert floats.tolist() == [1.5, 2.5]
    # The decile map of 100 fine buckets: 10 per decile, the out-of-range buckets kept apart.
    deciles = coarse_counts(np.ones(102, dtype=np.int64), DECILES)
    assert deciles.tolist() == [1, *([10] * 10), 1]
    # Large int64 counts stay exact (a float64 sum would round them).
    big = coarse_counts(np.array([2**53, 1], dtype=np.int64), np.array([0, 0]))
    assert int(big[0]) == 2**53 + 1


@pytest.mark.parametrize(
    ("fine", "index", "n_coarse"),
    [
        (np.array([1, 2, 3]), np.array([0, 1]), None),
        (np.array([1, 2]), np.array([0, -1]), None),
        (np.array([1, 2]), np.array([0, 3]), 2),
        (np.array([1, 2]), np.array([0.0, 1.0]), None),
        (np.ones((2, 2)), np.zeros((2, 2), dtype=np.int64), None),
    ],
)
def test_coarse_counts_rejects_malformed_mappings(
    fine: np.ndarray, index: np.ndarray, n_coarse: int | None
) -> None:
    with pytest.raises(ValueError, match="fine"):
        coarse_counts(fine, index, n_coarse)


# --- noise floor ----------------------------------------------------------------------------------


def test_psi_noise_floor_formula_and_small_windows() -> None:
    assert psi_noise_floor(12, 20000, 2000) == pytest.approx(
        float(chi2.ppf(1 - 1e-3, 11)) * (1 / 20000 + 1 / 2000), rel=1e-15
    )
    # With 100-value windows PSI noise alone exceeds 0.1, so the floor must be above it.
    assert psi_noise_floor(12, 20000, 100) > 0.1
    assert psi_noise_floor(10, 20000, 100) > 0.1
    assert psi_noise_floor(12, 20000, 2000) < 0.1
    for args in ((1, 100, 100), (12, 0, 100), (12, 100, 0)):
        assert psi_noise_floor(*args) == math.inf
    assert psi_noise_floor(12, 100, 100, alpha=0.0) == math.inf
    assert psi_noise_floor(12, 100, 100, alpha=1.0) == math.inf


def test_about_39_percent_of_100_value_windows_exceed_psi_0_1_by_noise() -> None:
    """STATS.md's figure for 10 equiprobable buckets and M = 100, by Monte Carlo (fixed seed)."""
    rng = np.random.default_rng(11)
    reference = np.full(10, 100_000)
    windows = rng.multinomial(100, np.full(10, 0.1), size=2000)
    values = np.array([psi(reference, w) for w in windows], dtype=np.float64)
    assert 0.33 <= float(np.mean(values > 0.1)) <= 0.45


# --- levels ---------------------------------------------------------------------------------------


def test_level_values_and_threshold_defaults() -> None:
    assert [int(level) for level in Level] == [0, 1, 2, 3, 4]
    assert [level.name for level in Level] == ["OK", "INFO", "WARNING", "CRITICAL", "EMERGENCY"]
    assert Thresholds() == DEFAULT_THRESHOLDS
    assert (DEFAULT_THRESHOLDS.psi_warning, DEFAULT_THRESHOLDS.psi_critical) == (0.1, 0.2)
    assert (DEFAULT_THRESHOLDS.alpha, DEFAULT_THRESHOLDS.min_samples, DEFAULT_THRESHOLDS.sigma_k) == (
        1e-3,
        500,
        3.0,
    )
    with pytest.raises(ValueError, match="psi"):
        Thresholds(psi_warning=0.3, psi_critical=0.2)
    with pytest.raises(ValueError, match="alpha"):
        Thresholds(alpha=0.0)
    with pytest.raises(ValueError, match="min_samples"):
        Thresholds(min_samples=-1)
    with pytest.raises(ValueError, match="sigma_k"):
        Thresholds(sigma_k=0.0)


@pytest.mark.parametrize(
    ("psi_value", "pvalue", "n_window", "tau", "features", "expected"),
    [
        (0.25, 0.5, 2000, 0.017, 10, Level.CRITICAL),
        (0.2, 0.5, 2000, 0.017, 10, Level.WARNING),  # strict: 0.2 is not above 0.2
        (0.15, 0.5, 2000, 0.017, 10, Level.WARNING),
        (0.1, 0.5, 2000, 0.017, 10, Level.OK),
        (0.06, 9e-5, 2000, 0.017, 10, Level.INFO),  # p < alpha / F = 1e-4
        (0.06, 1e-4, 2000, 0.017, 10, Level.OK),  # not strictly below
        (0.06, 5e-4, 2000, 0.017, 1, Level.INFO),  # F = 1: no correction
        (0.06, 5e-4, 2000, 0.017, 0, Level.INFO),  # F < 1 counts as 1
        (0.25, 0.0, 499, 0.017, 10, Level.OK),  # below min_samples
        (0.25, 0.0, 500, 0.017, 10, Level.CRITICAL),
        (0.25, 0.5, 2000, 0.3, 10, Level.OK),  # the noise floor dominates both thresholds
        (0.35, 0.5, 2000, 0.3, 10, Level.CRITICAL),
        (0.25, 1e-9, 2000, 0.3, 10, Level.INFO),
        (0.15, 0.5, 2000, 0.18, 10, Level.OK),
        (0.19, 0.5, 2000, 0.18, 10, Level.WARNING),
        (None, 1e-9, 2000, 0.017, 10, Level.INFO),
        (0.5, None, 2000, 0.017, 10, Level.CRITICAL),
        (None, None, 2000, 0.017, 10, Level.OK),
        (math.nan, math.nan, 2000, 0.017, 10, Level.OK),
        (0.15, 0.5, 2000, math.nan, 10, Level.WARNING),  # an undefined floor: thresholds only
        (0.5, 0.0, 2000, math.inf, 10, Level.INFO),
    ],
)
def test_feature_level(
    psi_value: float | None, pvalue: float | None, n_window: int, tau: float, features: int, expected: Level
) -> None:
    assert feature_level(psi_value, pvalue, n_window, tau, features) is expected


def test_feature_level_with_custom_thresholds() -> None:
    loose = Thresholds(psi_warning=0.2, psi_critical=0.4, alpha=0.05, min_samples=0)
    assert feature_level(0.3, 0.5, 10, 0.0, 1, loose) is Level.WARNING
    assert feature_level(0.1, 0.01, 10, 0.0, 2, loose) is Level.INFO  # 0.01 < 0.05 / 2
    assert feature_level(0.1, 0.03, 10, 0.0, 2, loose) is Level.OK


def test_overall_level_is_the_maximum() -> None:
    assert overall_level([]) is Level.OK
    assert overall_level([Level.OK, Level.INFO, Level.WARNING, Level.OK]) is Level.WARNING
    assert overall_level(iter([Level.CRITICAL, Level.INFO])) is Level.CRITICAL


def test_sigma_level() -> None:
    history = np.random.default_rng(3).normal(100.0, 10.0, 200)
    mu, sigma = float(history.mean()), float(history.std(ddof=1))
    assert sigma_level(history, mu) is Level.OK
    assert sigma_level(history, mu + 2.9 * sigma) is Level.OK
    assert sigma_level(history, mu + 3.1 * sigma) is Level.WARNING
    assert sigma_level(history, mu + 6.1 * sigma) is Level.CRITICAL
    assert sigma_level(history, mu - 10 * sigma) is Level.OK  # one-sided
    assert sigma_level(history, mu + 2.5 * sigma, k=2.0) is Level.WARNING
    assert sigma_level(history, math.nan) is Level.OK
    assert sigma_level(history, math.inf) is Level.CRITICAL
    # Fewer than 30 finite history points: OK whatever the value; non-finite points are ignored.
    assert sigma_level(history[:29], 1e9) is Level.OK
    assert sigma_level(np.append(history[:29], [math.nan, math.inf]), 1e9) is Level.OK
    assert sigma_level(np.append(history[:30], [math.nan]), 1e9) is Level.CRITICAL
    assert sigma_level(np.array([]), 1.0) is Level.OK
    # A constant history: OK at (or below) the mean, WARNING above it.
    flat = np.zeros(50)
    assert sigma_level(flat, 0.0) is Level.OK
    assert sigma_level(flat, -1.0) is Level.OK
    assert sigma_level(flat, 0.01) is Level.WARNING


# --- calibration (Monte Carlo, fixed seeds) -------------------------------------------------------

N_REFERENCE = 20_000
WINDOW = 2_000
FEATURES = 10


def _feature_scores(
    rng: np.random.Generator, windows: int, shift: float
) -> tuple[list[Level], list[float], list[float]]:
    """Levels, PSI and KS D of `windows` windows of WINDOW values (normal, mean `shift`) against a
    fresh normal reference of N_REFERENCE values, one of FEATURES monitored features."""
    reference = rng.standard_normal(N_REFERENCE)
    edges = fine_edges(reference)
    assert len(edges) == 101  # 99 percentiles + lo + max, no duplicates: 102 fine buckets
    ref_fine = bucket_counts(edges, reference)
    ref_psi = coarse_counts(ref_fine, DECILES)
    tau = psi_noise_floor(PSI_BUCKETS, N_REFERENCE, WINDOW)
    levels, psis, ds = [], [], []
    for values in rng.normal(shift, 1.0, (windows, WINDOW)):
        cur_fine = bucket_counts(edges, values)
        psi_value = psi(ref_psi, coarse_counts(cur_fine, DECILES))
        ks = ks_binned(ref_fine, cur_fine)
        assert psi_value is not None
        assert ks is not None
        levels.append(feature_level(psi_value, ks[1], WINDOW, tau, FEATURES))
        psis.append(psi_value)
        ds.append(ks[0])
    return levels, psis, ds


def test_no_drift_false_alarm_rate_is_within_the_alpha_bound() -> None:
    """300 windows of M = 2000 values, 10 monitored features each (a fresh N = 20000 normal
    reference per feature), all drawn from the reference distribution.

    Per feature and window, P(level >= INFO) <= P(KS p < alpha/F) + P(PSI > max(0.1, tau))
    <= alpha/F + alpha (tau is PSI's approximate 1 - alpha null quantile), so per window (the
    overall level over F features) the rate is at most (1 + F) alpha = 0.011: 3.3 expected false
    alarms in 300 windows. The bound allowed is the binomial 99.9 % quantile,
    binom.ppf(0.999, 300, 0.011) = 10 windows (3.3 %). The components are checked on the 3000
    feature-windows too: KS rejections <= binom.ppf(0.999, 3000, 1e-4) = 3 and PSI above tau
    (not just above 0.1) <= binom.ppf(0.999, 3000, 1e-3) = 10.
    """
    rng = np.random.default_rng(20240611)
    alpha = DEFAULT_THRESHOLDS.alpha
    per_feature = [_feature_scores(rng, 300, 0.0) for _ in range(FEATURES)]
    levels = np.array([scores[0] for scores in per_feature]).T  # windows x features
    window_levels = [overall_level(Level(int(x)) for x in row) for row in levels]
    false_alarms = sum(level >= Level.INFO for level in window_levels)
    allowed = int(binom.ppf(0.999, 300, (1 + FEATURES) * alpha))
    assert allowed == 10
    assert false_alarms <= allowed, f"{false_alarms} of 300 windows alarmed (bound {allowed})"
    # No PSI-driven level at all: at M = 2000 PSI noise is far below 0.1.
    assert int(levels.max()) <= Level.INFO
    tau = psi_noise_floor(PSI_BUCKETS, N_REFERENCE, WINDOW)
    above_tau = sum(p > tau for scores in per_feature for p in scores[1])
    assert above_tau <= int(binom.ppf(0.999, 3000, alpha))
    rejections = int(np.sum(levels == Level.INFO))
    assert rejections <= int(binom.ppf(0.999, 3000, alpha / FEATURES))


@pytest.mark.parametrize(
    ("shift", "minimum", "psi_range"),
    [(0.25, Level.INFO, (0.04, 0.09)), (0.5, Level.WARNING, (0.18, 0.35))],
)
def test_mean_shift_is_detected_at_window_2000(
    shift: float, minimum: Level, psi_range: tuple[float, float]
) -> None:
    """100 windows of M = 2000 values (N = 20000 reference, F = 10 Bonferroni): a 0.25 sigma mean
    shift reaches at least INFO, a 0.5 sigma shift WARNING or CRITICAL, in >= 95 % of windows; the
    mean PSI is near STATS.md's figures (~0.06 and ~0.25)."""
    rng = np.random.default_rng(7 + int(shift * 100))
    levels, psis, ds = _feature_scores(rng, 100, shift)
    detected = sum(level >= minimum for level in levels)
    assert detected >= 95, f"{detected} of 100 windows reached {minimum.name}"
    assert psi_range[0] <= float(np.mean(psis)) <= psi_range[1]
    if shift == 0.25:
        assert 0.08 <= float(np.mean(ds)) <= 0.12  # D ~ 0.10


# --- missing-rate test ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "window"),
    [((200, 10_000), (12, 400)), ((1_000, 20_000), (70, 1_000)), ((9_000, 10_000), (880, 1_000))],
)
def test_the_missing_rate_test_is_the_pooled_two_proportion_z_test(
    reference: tuple[int, int], window: tuple[int, int]
) -> None:
    """Every expected count of the 2 x 2 table at least MIN_EXPECTED: the two-sided z-test with
    the pooled standard error, by its formula."""
    (ref_missing, ref_total), (win_missing, win_total) = reference, window
    pooled = (ref_missing + win_missing) / (ref_total + win_total)
    assert min(pooled, 1 - pooled) * min(ref_total, win_total) >= MIN_EXPECTED
    result = missing_rate_test(ref_missing, ref_total, win_missing, win_total)
    assert result is not None
    shift = win_missing / win_total - ref_missing / ref_total
    se = math.sqrt(pooled * (1 - pooled) * (1 / ref_total + 1 / win_total))
    assert result[0] == pytest.approx(shift, abs=1e-15)
    assert result[1] == pytest.approx(2 * float(scipy_norm.sf(abs(shift) / se)), rel=1e-12)


@pytest.mark.parametrize(
    ("reference", "window"),
    [((0, 20_000), (1, 600)), ((0, 20_000), (2, 600)), ((1, 20_000), (2, 600)), ((10, 20_000), (3, 600))],
)
def test_a_few_missing_values_are_tested_exactly(reference: tuple[int, int], window: tuple[int, int]) -> None:
    """An expected count under MIN_EXPECTED: Fisher's exact test (the z-test gave p = 8e-9 for one
    missing value in 600 against none in 20 000, the exact test 0.03)."""
    (ref_missing, ref_total), (win_missing, win_total) = reference, window
    result = missing_rate_test(ref_missing, ref_total, win_missing, win_total)
    assert result is not None
    table = [[ref_missing, ref_total - ref_missing], [win_missing, win_total - win_missing]]
    assert result[1] == pytest.approx(float(fisher_exact(table).pvalue), rel=1e-12)
    assert result[0] == pytest.approx(win_missing / win_total - ref_missing / ref_total, abs=1e-15)
    if reference == (0, 20_000) and window == (1, 600):
        assert result[1] > 0.02


def test_the_missing_rate_test_needs_two_samples_and_variance() -> None:
    assert missing_rate_test(0, 0, 1, 10) is None
    assert missing_rate_test(1, 10, 0, 0) is None
    assert missing_rate_test(0, 100, 0, 50) is None  # nothing missing anywhere: no variance
    assert missing_rate_test(100, 100, 50, 50) is None  # everything missing


def test_sigma_level_with_a_floor_takes_the_larger_spread() -> None:
    """`floor(mu)` is the least sigma: a history quieter than the value's own noise judges the
    value by that noise; a noisier one by its own spread, as without a floor."""
    flat = np.zeros(50)
    assert sigma_level(flat, 0.01, floor=lambda mu: 0.01) is Level.OK
    assert sigma_level(flat, 0.031, floor=lambda mu: 0.01) is Level.WARNING
    assert sigma_level(flat, 0.061, floor=lambda mu: 0.01) is Level.CRITICAL
    history = np.random.default_rng(3).normal(100.0, 10.0, 200)
    mu, sigma = float(history.mean()), float(history.std(ddof=1))
    assert sigma_level(history, mu + 3.1 * sigma, floor=lambda m: 0.01 * m) is Level.WARNING
    assert sigma_level(history, mu + 3.1 * sigma, floor=lambda m: 0.2 * m) is Level.OK


def test_a_rare_class_that_jumps_is_tested_as_a_two_by_two_table() -> None:
    """0.05 % of the reference, 20 % of the window: the rare class is sparse in the reference's
    expected counts, and pooling it into the only other column would leave nothing to test."""
    result = chi2_homogeneity(np.array([19_990, 10]), np.array([400, 100]))
    assert result is not None
    expected = chi2_contingency(np.array([[19_990, 10], [400, 100]]))
    assert result == pytest.approx((expected[0], expected[1]), abs=1e-12)
    assert result[1] < 1e-10
