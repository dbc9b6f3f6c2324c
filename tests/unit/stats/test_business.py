"""Business outcomes: joins counted exactly, figures and revenue impact against the formula,
EMERGENCY only when the drop is both past the threshold and significant."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from modeltap.snapshot import BusinessSummary, OutcomeTally
from modeltap.stats.business import (
    BusinessOutcomes,
    BusinessSettings,
    lower_p_value,
    moments,
    revenue_impact,
)
from modeltap.stats.scores import Level

SLOT_S = 60.0


def _key(request: int, row: int = 0) -> tuple[str, ...]:
    return ("id", f"r{request}", str(row))


def _business(**settings: object) -> BusinessOutcomes:
    return BusinessOutcomes(slots=10, slot_s=SLOT_S, settings=BusinessSettings(**settings))  # type: ignore[arg-type]


def _serve(
    business: BusinessOutcomes,
    version: str,
    first: int,
    count: int,
    conversions: int,
    order_value: float | None,
    now: float,
) -> None:
    """`count` single-row requests of `version`; the first `conversions` of them convert, each
    with `order_value` when given, and the others' results are reported as 0."""
    for i in range(first, first + count):
        business.add_exposures("shop", version, [_key(i)], now)
    for i in range(first, first + count):
        converted = i < first + conversions
        assert business.add_outcome("shop", _key(i), "conversion", float(converted), now) == "joined"
        if converted and order_value is not None:
            assert business.add_outcome("shop", _key(i), "order_value", order_value, now) == "joined"


def _view(business: BusinessOutcomes, version: str, now: float) -> BusinessSummary:
    return next(v for v in business.views(now) if v.version == version)


def test_outcomes_join_exactly_and_every_fate_is_counted() -> None:
    business = _business()
    now = 1000.0
    business.add_exposures("shop", "1", [_key(1, 0), _key(1, 1), None], now)
    assert business.add_outcome("shop", _key(1, 0), "conversion", 1.0, now) == "joined"
    assert business.add_outcome("shop", _key(1, 0), "conversion", 1.0, now) == "duplicate"
    assert business.add_outcome("shop", _key(1, 0), "conversion", 0.0, now) == "conflict"
    assert business.add_outcome("shop", _key(1, 0), "order_value", 30.0, now) == "joined"
    assert business.add_outcome("shop", _key(1, 1), "conversion", 0.0, now) == "joined"
    # An outcome before its exposure waits for it, then joins.
    assert business.add_outcome("shop", _key(2), "conversion", 1.0, now) == "waiting"
    business.add_exposures("shop", "1", [_key(2)], now + 1)
    # One that never meets an exposure is unmatched after the early TTL.
    assert business.add_outcome("shop", _key(9), "conversion", 1.0, now) == "waiting"
    view = _view(business, "1", now + 61)
    counts = business.outcome_counts()
    assert counts == {
        "joined": 4,
        "duplicate": 1,
        "conflict": 1,
        "early": 2,
        "unmatched": 1,
        "no_join_key": 1,
    }
    assert view.total.requests == 2
    assert view.total.exposures == 3
    assert view.total.outcomes == 4
    assert view.total.sum_of("conversion") == (3, 2.0, 2.0)
    assert view.total.sum_of("order_value") == (1, 30.0, 900.0)
    figures = dict(view.total_figures)
    assert figures["conversion_rate"] == pytest.approx(2 / 3)
    assert figures["average_order_value"] == 30.0
    assert figures["revenue_per_prediction"] == pytest.approx(10.0)
    assert figures["outcomes_per_request"] == 2.0


def test_exposures_are_bounded_and_evictions_counted() -> None:
    business = BusinessOutcomes(slots=10, slot_s=SLOT_S, max_exposures=100)
    for i in range(250):
        business.add_exposures("shop", "1", [_key(i)], 0.0)
    assert business.outcome_counts()["evicted"] == 150
    assert business.add_outcome("shop", _key(0), "conversion", 1.0, 1.0) == "waiting"
    assert business.add_outcome("shop", _key(249), "conversion", 1.0, 1.0) == "joined"


def test_no_rate_for_a_version_whose_conversions_are_never_posted() -> None:
    business = _business()
    business.add_exposures("shop", "1", [_key(1)], 0.0)
    figures = dict(_view(business, "1", 0.0).window_figures)
    assert figures["conversion_rate"] is None
    assert figures["average_order_value"] is None


def test_an_outcome_counts_in_the_window_slot_of_its_exposure() -> None:
    business = _business()
    business.add_exposures("shop", "1", [_key(1)], 0.0)
    business.add_exposures("shop", "1", [_key(2)], 9 * SLOT_S)
    # 11 slots later the first exposure has left the 10-slot window: its conversion counts in
    # the totals only; the second's lands in its own slot.
    business.add_outcome("shop", _key(1), "conversion", 1.0, 10 * SLOT_S + 1)
    business.add_outcome("shop", _key(2), "conversion", 1.0, 10 * SLOT_S + 1)
    view = _view(business, "1", 10 * SLOT_S + 1)
    assert view.window.exposures == 1
    assert view.window.sum_of("conversion")[1] == 1.0
    assert view.total.exposures == 2
    assert view.total.sum_of("conversion")[1] == 2.0


def test_revenue_impact_is_the_formula_with_its_delta_method_interval() -> None:
    business = _business()
    now = 0.0
    _serve(business, "1", 0, 2000, 200, 50.0, now)  # the baseline: 10 %, AOV 50
    _serve(business, "2", 10_000, 1000, 60, None, now + 1)
    for i, value in enumerate((40.0, 60.0) * 30):  # version 2's order values: mean 50, sd ≈ 10
        business.add_outcome("shop", _key(10_000 + i), "order_value", value, now + 1)
    view = _view(business, "2", now + 2)
    impact = view.revenue_impact
    assert impact is not None
    assert view.baseline_source == "version"
    assert view.baseline_version == "1"
    p_v, p_b, traffic = 0.06, 0.10, 1000
    values = np.array((40.0, 60.0) * 30)
    aov, aov_var = values.mean(), values.var(ddof=1)
    assert impact.traffic == traffic
    assert impact.delta_conversion == pytest.approx(p_v - p_b)
    assert impact.average_order_value == pytest.approx(aov)
    assert impact.value == pytest.approx((p_v - p_b) * traffic * aov)  # -2000
    # Sample variances of the 0/1 values (n/(n-1) times p(1-p)).
    var_v = p_v * (1 - p_v) * 1000 / 999
    var_b = p_b * (1 - p_b) * 2000 / 1999
    se = math.sqrt(
        (traffic * aov) ** 2 * (var_v / 1000 + var_b / 2000) + (traffic * (p_v - p_b)) ** 2 * aov_var / 60
    )
    z = scipy_stats.norm.ppf(0.975)
    assert impact.ci_low == pytest.approx(impact.value - z * se)
    assert impact.ci_high == pytest.approx(impact.value + z * se)


def test_welch_p_value_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 2.0, 400), rng.normal(1.3, 1.0, 900)
    current = moments(
        OutcomeTally(exposures=0, sums=(("order_value", 400, a.sum(), (a * a).sum()),)),
        "average_order_value",
    )
    baseline = moments(
        OutcomeTally(exposures=0, sums=(("order_value", 900, b.sum(), (b * b).sum()),)),
        "average_order_value",
    )
    assert current is not None
    assert baseline is not None
    assert current.variance == pytest.approx(a.var(ddof=1))
    expected = scipy_stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue
    # The normal approximation of Welch's t at these sizes: within 1e-3 of scipy's t-test.
    assert lower_p_value(current, baseline) == pytest.approx(expected, abs=1e-3)


def test_emergency_only_when_the_drop_is_past_the_threshold_and_significant() -> None:
    # A large significant drop: 10 % -> 6 % on 1000 exposures (z ≈ -3.9).
    business = _business(min_samples=500)
    _serve(business, "1", 0, 2000, 200, None, 0.0)
    _serve(business, "2", 10_000, 1000, 60, None, 1.0)
    view = _view(business, "2", 2.0)
    assert view.level == Level.EMERGENCY
    assert view.threshold == pytest.approx(0.09)
    assert view.p_value is not None
    assert view.p_value < 0.001
    # The baseline version itself (against its history: none before the window) stays OK.
    assert _view(business, "1", 2.0).level == Level.OK

    # The same rates on 100 exposures: past the threshold, not significant (z ≈ -1.2), too few.
    small = _business(min_samples=50)
    _serve(small, "1", 0, 200, 20, None, 0.0)
    _serve(small, "2", 10_000, 100, 6, None, 1.0)
    view = _view(small, "2", 2.0)
    assert view.p_value is not None
    assert 0.05 < view.p_value < 0.5
    assert view.level == Level.OK

    # Significant but small: 10 % -> 9.5 % on 200 000 exposures is within the 10 % drop allowed.
    mild = _business()
    _serve(mild, "1", 0, 200_000, 20_000, None, 0.0)
    _serve(mild, "2", 1_000_000, 200_000, 19_000, None, 1.0)
    view = _view(mild, "2", 2.0)
    assert view.p_value is not None
    assert view.p_value < 0.01
    assert view.level == Level.OK

    # Too few window values: never EMERGENCY whatever the drop.
    few = _business(min_samples=500)
    _serve(few, "1", 0, 2000, 200, None, 0.0)
    _serve(few, "2", 10_000, 400, 0, None, 1.0)
    business_view = _view(few, "2", 2.0)
    # A version none of whose rows converts has a rate of 0 (the model's conversions are posted).
    assert dict(business_view.window_figures)["conversion_rate"] == 0.0
    assert business_view.p_value is not None
    assert business_view.p_value < 1e-10
    assert business_view.level == Level.OK


def test_a_floor_without_a_baseline_judges_the_window_against_the_floor() -> None:
    business = _business(floor=0.08, min_samples=500)
    _serve(business, "1", 0, 1000, 50, None, 0.0)  # 5 % against a floor of 8 %, no baseline
    view = _view(business, "1", 1.0)
    assert view.baseline_source == "none"
    assert view.threshold == 0.08
    assert view.p_value is not None
    assert view.p_value < 1e-4
    assert view.level == Level.EMERGENCY


def test_the_baseline_version_is_judged_against_its_own_history() -> None:
    business = _business(min_samples=500)
    _serve(business, "1", 0, 2000, 200, None, 0.0)  # 10 %, long ago
    _serve(business, "1", 10_000, 1000, 50, None, 20 * SLOT_S)  # 5 % in the current window
    view = _view(business, "1", 20 * SLOT_S)
    assert view.baseline_source == "history"
    assert view.baseline_version == "1"
    assert dict(view.baseline_figures)["conversion_rate"] == pytest.approx(0.10)
    assert dict(view.window_figures)["conversion_rate"] == pytest.approx(0.05)
    assert view.level == Level.EMERGENCY


def test_a_configured_baseline_version_wins() -> None:
    business = _business(baseline_version="2")
    _serve(business, "1", 0, 1000, 100, 20.0, 0.0)
    _serve(business, "2", 10_000, 1000, 50, 20.0, 1.0)
    view = _view(business, "1", 2.0)
    assert view.baseline_source == "version"
    assert view.baseline_version == "2"
    impact = view.revenue_impact
    assert impact is not None
    assert impact.value == pytest.approx((0.10 - 0.05) * 1000 * 20.0)


def test_revenue_impact_needs_conversions_and_an_order_value() -> None:
    tally = OutcomeTally(requests=10, exposures=10, outcomes=1, sums=(("conversion", 1, 1.0, 1.0),))
    assert revenue_impact(tally, tally, tally) is None  # no order value anywhere


def test_a_repeat_stays_a_duplicate_for_as_long_as_its_row_is_kept() -> None:
    """Two outcome names per row, the store at its bound: a retried delivery never counts twice."""
    business = BusinessOutcomes(slots=10, slot_s=SLOT_S, max_exposures=4)
    for i in range(4):
        business.add_exposures("shop", "1", [_key(i)], 0.0)
        assert business.add_outcome("shop", _key(i), "conversion", 1.0, 0.0) == "joined"
        assert business.add_outcome("shop", _key(i), "order_value", 10.0, 0.0) == "joined"
    for i in range(4):
        assert business.add_outcome("shop", _key(i), "conversion", 1.0, 1.0) == "duplicate"
    assert _view(business, "1", 1.0).total.sum_of("conversion") == (4, 4.0, 4.0)


def test_figures_too_large_to_square_give_no_figure_and_never_raise() -> None:
    business = _business(min_samples=1)
    business.add_exposures("shop", "1", [_key(1), _key(2)], 0.0)
    for key in (_key(1), _key(2)):
        business.add_outcome("shop", key, "conversion", 1.0, 0.0)
        business.add_outcome("shop", key, "order_value", 1e200, 0.0)  # past the parser's cap
    view = _view(business, "1", 0.0)
    assert dict(view.window_figures)["average_order_value"] is None
    assert view.revenue_impact is None


def test_a_baseline_of_a_handful_of_rows_is_no_baseline() -> None:
    business = _business(min_samples=500)
    _serve(business, "1", 0, 3, 3, None, 0.0)  # 3 rows, all converted
    _serve(business, "2", 10_000, 600, 300, None, 1.0)  # 50 % on 600 rows
    view = _view(business, "2", 2.0)
    assert view.baseline_source == "none"
    assert view.level == Level.OK


def test_a_version_idle_for_two_windows_makes_room_for_a_new_one() -> None:
    business = BusinessOutcomes(slots=10, slot_s=SLOT_S, max_versions=2)
    business.add_exposures("shop", "1", [_key(1)], 0.0)
    business.add_exposures("shop", "2", [_key(2)], 0.0)
    business.add_exposures("shop", "3", [_key(3)], 10 * SLOT_S)  # both still within two windows
    assert business.outcome_counts()["over_version_cap"] == 1
    business.add_exposures("shop", "2", [_key(4)], 15 * SLOT_S)
    business.add_exposures("shop", "3", [_key(5)], 21 * SLOT_S)  # version 1 idle for 21 slots
    assert business.outcome_counts()["versions_retired"] == 1
    assert [v.version for v in business.views(21 * SLOT_S)] == ["2", "3"]


def test_sampled_exchanges_count_in_the_traffic_with_their_weight() -> None:
    business = _business()
    business.add_exposures("shop", "1", [_key(1, 0), _key(1, 1)], 0.0, weight=4)
    view = _view(business, "1", 0.0)
    assert (view.window.requests, view.window.exposures) == (4, 8)


def test_the_revenue_impact_interval_covers_the_true_impact_95_percent_of_the_time() -> None:
    """Monte Carlo: 2000 draws of two versions' conversions and order values with known rates and
    mean order value; the delta-method interval must hold the true impact in 93-97 % of them."""
    rng = np.random.default_rng(2026)
    p_v, p_b, traffic, n_b, aov = 0.07, 0.10, 2000, 5000, 50.0
    truth = (p_v - p_b) * traffic * aov
    covered = 0
    runs = 2000
    for _ in range(runs):
        converted_v = int(rng.binomial(traffic, p_v))
        converted_b = int(rng.binomial(n_b, p_b))
        values = rng.gamma(4.0, aov / 4.0, converted_v)  # skewed order values, mean 50
        current = OutcomeTally(
            requests=traffic,
            exposures=traffic,
            sums=(
                ("conversion", traffic, float(converted_v), float(converted_v)),
                ("order_value", converted_v, float(values.sum()), float((values * values).sum())),
            ),
        )
        baseline = OutcomeTally(
            exposures=n_b, sums=(("conversion", n_b, float(converted_b), float(converted_b)),)
        )
        impact = revenue_impact(current, baseline, current)
        assert impact is not None
        covered += impact.ci_low <= truth <= impact.ci_high
    assert 0.93 <= covered / runs <= 0.97, covered / runs
