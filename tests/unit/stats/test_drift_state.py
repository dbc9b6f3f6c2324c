"""Drift state of one model version and its exposure through `StatsAggregator.model_views()`
(STATS.md "Runtime state", "Scores", "Alert levels", "Validation").

The reference is built by `profile_builder.build_profile` and read back by
`reference.parse_reference`, as in production. Every expected score is recomputed here from the
RAW reference and window values (numpy bucket counts, scipy tests), not from the state's counts."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, kstwo

from modeltap.reference.builder import build_profile
from modeltap.reference.document import ReferenceProfile, parse_reference
from modeltap.snapshot import Attributes, FeatureView, ModelView
from modeltap.stats.aggregator import MODEL_NAME, MODEL_VERSION, StatsAggregator
from modeltap.stats.drift_state import SCORE_INTERVAL_S, DriftState, FeatureScores, WindowConfig
from modeltap.stats.scores import Level, Thresholds

N_REFERENCE = 20_000
PLANS = ("basic", "pro", "team", "enterprise")
PLAN_SHARES = (0.4, 0.3, 0.2, 0.1)
AGE_SIGMA = 10.0
SCORE_SIGMA = math.sqrt(2 * 5 / ((2 + 5) ** 2 * (2 + 5 + 1)))  # std of Beta(2, 5)
INPUT_NUMERIC = ("age", "income", "const", "zero")
INPUT_CATEGORICAL = ("plan", "const_cat")
FEATURES = (
    ("input", "age"),
    ("input", "income"),
    ("input", "const"),
    ("input", "zero"),
    ("input", "plan"),
    ("input", "const_cat"),
    ("output", "score"),
    ("output", "decision"),
    ("label", "churned"),
)
PSI_FLOOR = 1e-4  # STATS.md: empty buckets get 1e-4, no renormalisation

Columns = dict[str, Any]


def make_columns(
    rng: np.random.Generator,
    rows: int,
    *,
    age_shift: float = 0.0,
    score_shift: float = 0.0,
    plan_shares: Sequence[float] = PLAN_SHARES,
    churn_rate: float = 0.2,
    new_plan_rate: float = 0.0,
) -> Columns:
    """One batch of rows: shifts are in units of the column's standard deviation."""
    plan = rng.choice(np.array(PLANS, dtype=object), rows, p=plan_shares)
    plan[rng.random(rows) < 0.02] = None
    plan[rng.random(rows) < new_plan_rate] = "free"
    return {
        "age": rng.normal(40.0 + age_shift * AGE_SIGMA, AGE_SIGMA, rows),
        "income": rng.lognormal(8.0, 0.5, rows),
        "const": np.full(rows, 3.25),
        "zero": np.zeros(rows),
        "plan": plan.tolist(),
        "const_cat": ["same"] * rows,
        "score": rng.beta(2.0, 5.0, rows) + score_shift * SCORE_SIGMA,
        "decision": rng.integers(0, 2, rows),
        "churned": (rng.random(rows) < churn_rate).astype(np.int64),
    }


@dataclass(frozen=True)
class Reference:
    columns: Columns
    document: dict[str, Any]
    profile: ReferenceProfile

    def feature(self, role: str, name: str) -> dict[str, Any]:
        (found,) = [f for f in self.document["features"] if f["name"] == name and f["role"] == role]
        assert isinstance(found, dict)
        return found


@pytest.fixture(scope="module")
def reference() -> Reference:
    columns = make_columns(np.random.default_rng(2024), N_REFERENCE)
    document = build_profile(
        columns, target="churned", prediction=["score", "decision"], numeric=["const", "zero"]
    )
    profile = parse_reference(document)
    assert [(f.role, f.name) for f in profile.features] == list(FEATURES)
    kinds = {f.name: f.kind for f in profile.features}
    assert kinds == {
        "age": "numeric",
        "income": "numeric",
        "const": "numeric",
        "zero": "numeric",
        "plan": "categorical",
        "const_cat": "categorical",
        "score": "numeric",
        "decision": "categorical",
        "churned": "categorical",
    }
    return Reference(columns, document, profile)


def new_state(reference: Reference, thresholds: Thresholds | None = None) -> DriftState:
    return DriftState(reference.profile, WindowConfig(), thresholds or Thresholds())


def feed(state: DriftState, columns: Columns, now: float, weight: int = 1) -> None:
    """The way the worker hands data over: numeric matrices and general-path columns, per role."""
    matrix = np.column_stack([columns[name] for name in INPUT_NUMERIC])
    state.add_matrix("input", INPUT_NUMERIC, matrix, weight, now)
    state.add_columns("input", {name: columns[name] for name in INPUT_CATEGORICAL}, weight, now)
    outputs = np.column_stack((columns["score"], columns["decision"].astype(np.float64)))
    state.add_matrix("output", ("score", "decision"), outputs, weight, now)
    state.add_columns("label", {"churned": [float(v) for v in columns["churned"]]}, weight, now)


def levels(scores: dict[tuple[str, str], FeatureScores]) -> dict[tuple[str, str], Level]:
    return {key: s.level for key, s in scores.items()}


# --- independent expectations ---------------------------------------------------------------------


def psi_by_hand(expected: np.ndarray, actual: np.ndarray) -> float:
    e = expected / expected.sum()
    a = actual / actual.sum()
    e = np.where(e == 0, PSI_FLOOR, e)
    a = np.where(a == 0, PSI_FLOOR, a)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Expected:
    psi: float
    js: float
    ks_statistic: float | None
    ks_pvalue: float | None
    chi2_pvalue: float | None
    window_count: int
    window_missing: int
    window_out_of_range: int


def expected_numeric(feature: dict[str, Any], reference_values: np.ndarray, window: np.ndarray) -> Expected:
    """PSI/JS over the decile (psi_edges) buckets and binned KS at the fine edges, from raw values."""
    ref = reference_values[np.isfinite(reference_values)]
    cur = window[np.isfinite(window)]
    fine = np.asarray(feature["fine_edges"])
    coarse = np.asarray(feature["psi_edges"])
    ref_coarse = np.bincount(np.searchsorted(coarse, ref, side="left"), minlength=len(coarse) + 1)
    cur_coarse = np.bincount(np.searchsorted(coarse, cur, side="left"), minlength=len(coarse) + 1)
    n, m = len(ref), len(cur)
    # Empirical CDFs of the raw samples at each fine edge (fraction <= edge).
    f_ref = np.searchsorted(np.sort(ref), fine, side="right") / n
    f_cur = np.searchsorted(np.sort(cur), fine, side="right") / m
    d = float(np.max(np.abs(f_cur - f_ref)))
    en = round(max(n, m) * min(n, m) / (n + m))
    return Expected(
        psi=psi_by_hand(ref_coarse, cur_coarse),
        js=float(jensenshannon(ref_coarse / n, cur_coarse / m, base=2)),
        ks_statistic=d,
        ks_pvalue=float(kstwo.sf(d, en)),
        chi2_pvalue=None,
        window_count=m,
        window_missing=len(window) - m,
        window_out_of_range=int(np.count_nonzero((cur <= fine[0]) | (cur > fine[-1]))),
    )


def category_of(value: Any) -> str | None:
    """Canonical category of the values these tests use, by hand (STATS.md's rules)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (float, int, np.integer, np.floating)) and float(value).is_integer():
        return str(int(value))
    raise AssertionError(f"no canonical form written for {value!r}")


def category_counts(vocabulary: Sequence[str], values: Sequence[Any]) -> np.ndarray:
    """[vocabulary..., __other__, __missing__] counts of raw values."""
    tally = Counter(category_of(v) for v in values)
    missing = tally.pop(None, 0)
    inside = [tally.pop(word, 0) for word in vocabulary]
    return np.array([*inside, sum(tally.values()), missing], dtype=np.int64)


def expected_categorical(
    feature: dict[str, Any], reference_values: Sequence[Any], window: Sequence[Any]
) -> Expected:
    vocabulary = feature["vocabulary"]
    ref = category_counts(vocabulary, reference_values)
    cur = category_counts(vocabulary, window)
    table = np.vstack((ref, cur))
    kept = table[:, table.sum(axis=0) > 0]
    chi2_p = float(chi2_contingency(kept)[1]) if kept.shape[1] >= 2 else None
    return Expected(
        psi=psi_by_hand(ref, cur),
        js=float(jensenshannon(ref / ref.sum(), cur / cur.sum(), base=2)),
        ks_statistic=None,
        ks_pvalue=None,
        chi2_pvalue=chi2_p,
        window_count=int(cur[:-1].sum()),
        window_missing=int(cur[-1]),
        window_out_of_range=int(cur[-2]),
    )


def expected_scores(reference: Reference, role: str, name: str, window: Columns) -> Expected:
    feature = reference.feature(role, name)
    if feature["kind"] == "numeric":
        return expected_numeric(
            feature, np.asarray(reference.columns[name], dtype=np.float64), np.asarray(window[name])
        )
    return expected_categorical(feature, list(reference.columns[name]), list(window[name]))


def assert_scores_match(got: FeatureScores | FeatureView, expected: Expected) -> None:
    assert got.window_count == expected.window_count
    assert got.window_missing == expected.window_missing
    assert got.window_out_of_range == expected.window_out_of_range
    assert got.psi is not None
    assert got.js is not None
    assert abs(got.psi - expected.psi) <= 1e-12
    assert abs(got.js - expected.js) <= 1e-12
    if expected.ks_statistic is None:
        assert got.ks_statistic is None
        assert got.ks_pvalue is None
    else:
        assert got.ks_statistic is not None
        assert got.ks_pvalue is not None
        assert expected.ks_pvalue is not None
        assert abs(got.ks_statistic - expected.ks_statistic) <= 1e-12
        assert math.isclose(got.ks_pvalue, expected.ks_pvalue, rel_tol=1e-9, abs_tol=1e-300)
    if expected.chi2_pvalue is None:
        assert got.chi2_pvalue is None
    else:
        assert got.chi2_pvalue is not None
        assert math.isclose(got.chi2_pvalue, expected.chi2_pvalue, rel_tol=1e-12, abs_tol=0.0)


# --- DriftState: levels ---------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "rows"), [(1, 2000), (2, 2000), (3, 5000)])
def test_no_drift_gives_ok_on_every_feature(reference: Reference, seed: int, rows: int) -> None:
    state = new_state(reference)
    window = make_columns(np.random.default_rng(seed), rows)
    feed(state, window, now=100.0)
    scores = state.scores(now=100.0)
    assert set(scores) == set(FEATURES)
    assert levels(scores) == dict.fromkeys(FEATURES, Level.OK)
    for key in FEATURES:
        assert_scores_match(scores[key], expected_scores(reference, *key, window))


@pytest.mark.parametrize(("role", "name"), [("input", "age"), ("output", "score")])
def test_half_sigma_shift_flags_exactly_that_feature(reference: Reference, role: str, name: str) -> None:
    state = new_state(reference)
    window = make_columns(
        np.random.default_rng(7),
        3000,
        age_shift=0.5 if name == "age" else 0.0,
        score_shift=0.5 if name == "score" else 0.0,
    )
    feed(state, window, now=100.0)
    scores = state.scores(now=100.0)
    assert scores[(role, name)].level in (Level.WARNING, Level.CRITICAL)
    assert {key: level for key, level in levels(scores).items() if key != (role, name)} == {
        key: Level.OK for key in FEATURES if key != (role, name)
    }
    expected = expected_scores(reference, role, name, window)
    assert_scores_match(scores[(role, name)], expected)
    # STATS.md: the binned D is a lower bound of the exact statistic, within one fine bucket's mass.
    feature = reference.feature(role, name)
    exact = float(ks_2samp(reference.columns[name], window[name]).statistic)
    reference_counts = np.asarray(feature["counts"])
    window_counts = np.asarray(scores[(role, name)].window)
    mass = max(float((reference_counts / reference_counts.sum()).max()), float((window_counts / 3000).max()))
    assert expected.ks_statistic is not None
    assert expected.ks_statistic <= exact + 1e-12
    assert exact <= expected.ks_statistic + mass + 1e-12


def test_categorical_share_change_chi2_equals_scipy(reference: Reference) -> None:
    state = new_state(reference)
    # A mild change, so that the p-value is a moderate number (a category absent from the
    # reference would make it tiny: the strong-change test below has one).
    window = make_columns(np.random.default_rng(11), 2500, plan_shares=(0.37, 0.3, 0.21, 0.12))
    feed(state, window, now=50.0)
    scores = state.scores(now=50.0)
    plan = scores[("input", "plan")]
    expected = expected_categorical(
        reference.feature("input", "plan"), reference.columns["plan"], window["plan"]
    )
    assert expected.chi2_pvalue is not None
    assert 1e-12 < expected.chi2_pvalue < 1.0
    assert_scores_match(plan, expected)
    assert plan.categories == (*PLANS, "__other__", "__missing__")
    assert plan.reference == tuple(category_counts(PLANS, reference.columns["plan"]).tolist())
    assert plan.window == tuple(category_counts(PLANS, window["plan"]).tolist())


def test_strong_categorical_change_flags_that_feature_and_label_too(reference: Reference) -> None:
    state = new_state(reference)
    window = make_columns(
        np.random.default_rng(12), 3000, plan_shares=(0.1, 0.2, 0.3, 0.4), churn_rate=0.45, new_plan_rate=0.01
    )
    feed(state, window, now=50.0)
    scores = state.scores(now=50.0)
    flagged = {key for key, level in levels(scores).items() if level != Level.OK}
    assert flagged == {("input", "plan"), ("label", "churned")}
    assert scores[("input", "plan")].level == Level.CRITICAL
    assert scores[("label", "churned")].level in (Level.WARNING, Level.CRITICAL)
    for key in (("input", "plan"), ("label", "churned")):
        assert_scores_match(scores[key], expected_scores(reference, *key, window))


def test_outputs_and_labels_are_tracked_like_inputs(reference: Reference) -> None:
    state = new_state(reference)
    for key in FEATURES:
        assert state.tracks(*key)
    assert not state.tracks("input", "score")  # the role is part of the key
    assert not state.tracks("output", "age")
    window = make_columns(np.random.default_rng(13), 1000)
    feed(state, window, now=5.0)
    scores = state.scores(now=5.0)
    for key in (("output", "score"), ("output", "decision"), ("label", "churned")):
        assert_scores_match(scores[key], expected_scores(reference, *key, window))


# --- DriftState: empty windows, min_samples, constant columns -------------------------------------


def _assert_empty(scores: FeatureScores) -> None:
    assert scores.window_count == 0
    assert scores.psi is None
    assert scores.js is None
    assert scores.ks_statistic is None
    assert scores.ks_pvalue is None
    assert scores.chi2_pvalue is None
    assert scores.level == Level.OK


def test_empty_window_scores_are_none_and_ok(reference: Reference) -> None:
    state = new_state(reference)
    scores = state.scores(now=0.0)
    assert set(scores) == set(FEATURES)
    for value in scores.values():
        _assert_empty(value)
        assert sum(value.window) == 0
        assert sum(value.cumulative) == 0


def test_window_that_emptied_over_time_scores_none_but_keeps_cumulative(reference: Reference) -> None:
    state = new_state(reference)
    window = make_columns(np.random.default_rng(14), 1000, age_shift=3.0)
    feed(state, window, now=0.0)
    assert state.scores(now=1.0)[("input", "age")].level == Level.CRITICAL
    later = state.scores(now=WindowConfig().slots * WindowConfig().slot_s)  # 15 slots later
    for key in FEATURES:
        _assert_empty(later[key])
    assert sum(later[("input", "age")].cumulative) == 1000


def test_missing_only_window_scores_none(reference: Reference) -> None:
    state = new_state(reference)
    state.add_matrix("input", ("age",), np.full((800, 1), math.nan), 1, now=0.0)
    age = state.scores(now=0.0)[("input", "age")]
    _assert_empty(age)
    assert age.window_missing == 800


@pytest.mark.parametrize(("rows", "level"), [(1, Level.OK), (499, Level.OK), (500, Level.CRITICAL)])
def test_no_level_above_ok_below_min_samples(reference: Reference, rows: int, level: Level) -> None:
    state = new_state(reference)  # min_samples = 500
    shifted = np.random.default_rng(15).normal(40.0 + 5 * AGE_SIGMA, AGE_SIGMA, (rows, 1))
    state.add_matrix("input", ("age",), shifted, 1, now=0.0)
    age = state.scores(now=0.0)[("input", "age")]
    assert age.window_count == rows
    assert age.level == level
    # STATS.md only asks for the level to stay OK; the scores may be shown or withheld (None),
    # but never NaN, and when shown they are the window's true values.
    expected = expected_numeric(reference.feature("input", "age"), reference.columns["age"], shifted[:, 0])
    assert expected.psi > 0.2
    if age.psi is not None:
        assert abs(age.psi - expected.psi) <= 1e-12
    for score in (age.js, age.ks_statistic, age.ks_pvalue):
        assert score is None or math.isfinite(score)


def test_min_samples_is_configurable(reference: Reference) -> None:
    state = new_state(reference, Thresholds(min_samples=50))
    shifted = np.random.default_rng(16).normal(40.0 + 5 * AGE_SIGMA, AGE_SIGMA, (60, 1))
    state.add_matrix("input", ("age",), shifted, 1, now=0.0)
    assert state.scores(now=0.0)[("input", "age")].level == Level.CRITICAL


def test_constant_reference_columns(reference: Reference) -> None:
    const = reference.feature("input", "const")
    assert const["fine_edges"] == [float(np.nextafter(3.25, -np.inf)), 3.25]
    assert const["counts"] == [0, N_REFERENCE, 0]

    state = new_state(reference)
    rows = 1000
    same = make_columns(np.random.default_rng(17), rows)
    same["zero"] = np.full(rows, -0.0)  # -0.0 is the reference's 0.0: in range
    feed(state, same, now=0.0)
    scores = state.scores(now=0.0)
    for name in ("const", "zero", "const_cat"):
        value = scores[("input", name)]
        assert value.level == Level.OK
        assert value.psi == 0.0
        assert value.js == 0.0
        assert value.window_out_of_range == 0
    assert scores[("input", "const")].ks_statistic == 0.0
    assert scores[("input", "const")].ks_pvalue == 1.0
    assert scores[("input", "zero")].window == (0, rows, 0)
    assert scores[("input", "const_cat")].chi2_pvalue is None  # one non-empty column: no test

    moved = make_columns(np.random.default_rng(18), rows)
    moved["const"] = np.full(rows, 4.0)  # above the reference max: out of range
    moved["const_cat"] = ["other"] * rows  # a new category
    state = new_state(reference)
    feed(state, moved, now=0.0)
    scores = state.scores(now=0.0)
    # By hand: reference (-inf, lo], (lo, c], (c, inf) = [0, 1, 0], window [0, 0, 1]; with the
    # 1e-4 floor PSI = (1e-4 - 1) ln(1e-4) + (1 - 1e-4) ln(1e4) = 2 (1 - 1e-4) ln(1e4).
    by_hand = 2 * (1 - 1e-4) * math.log(1e4)
    const_scores = scores[("input", "const")]
    assert const_scores.window == (0, 0, rows)
    assert const_scores.window_out_of_range == rows
    assert const_scores.psi is not None
    assert abs(const_scores.psi - by_hand) <= 1e-12
    assert const_scores.ks_statistic == 1.0
    assert const_scores.level == Level.CRITICAL
    # Categorical: reference [same, __other__, __missing__] = [20000, 0, 0], window [0, 1000, 0].
    cat = scores[("input", "const_cat")]
    assert cat.window == (0, rows, 0)
    assert cat.psi is not None
    assert abs(cat.psi - by_hand) <= 1e-12
    assert cat.chi2_pvalue is not None
    assert math.isclose(
        cat.chi2_pvalue, float(chi2_contingency(np.array([[N_REFERENCE, 0], [0, rows]]))[1]), rel_tol=1e-12
    )
    assert cat.level == Level.CRITICAL


# --- DriftState: the two input paths, the cache ---------------------------------------------------


def test_add_columns_and_add_matrix_agree(reference: Reference) -> None:
    rng = np.random.default_rng(19)
    rows = 1200
    age = rng.normal(41.0, 10.0, rows)
    income = rng.lognormal(8.1, 0.5, rows)
    # Mixed Python values in the general path: strings, None, booleans and non-finite floats in a
    # numeric feature all count as missing there.
    mixed_age: list[Any] = [float(v) for v in age]
    oddities: list[Any] = ["41", "abc", None, True, math.nan, math.inf, -math.inf, ""]
    positions = rng.choice(rows, size=len(oddities) * 20, replace=False)
    for i, position in enumerate(positions):
        mixed_age[position] = oddities[i % len(oddities)]
    matrix_age = np.array([v if isinstance(v, float) else math.nan for v in mixed_age])
    assert np.count_nonzero(~np.isfinite(matrix_age)) == len(positions)

    by_columns = new_state(reference)
    consumed = by_columns.add_columns(
        "input",
        {"age": mixed_age, "income": [float(v) for v in income], "unknown": [1.0] * rows},
        1,
        now=0.0,
    )
    assert consumed == {"age", "income"}
    by_matrix = new_state(reference)
    consumed = by_matrix.add_matrix(
        "input",
        ("income", "unknown", "age"),
        np.column_stack((income, np.ones(rows), matrix_age)),
        1,
        now=0.0,
    )
    assert consumed == {"age", "income"}

    left, right = by_columns.scores(now=0.0), by_matrix.scores(now=0.0)
    assert left == right
    age_scores = left[("input", "age")]
    assert age_scores.window_missing == len(positions)
    assert age_scores.window_count == rows - len(positions)
    expected = expected_numeric(reference.feature("input", "age"), reference.columns["age"], matrix_age)
    assert_scores_match(age_scores, expected)


def test_add_matrix_canonicalises_categorical_numbers(reference: Reference) -> None:
    # "decision" is a categorical output with vocabulary "0"/"1": 1.0 in a matrix is category "1".
    state = new_state(reference)
    decisions = np.array([[1.0], [0.0], [1.0], [2.0], [math.nan], [-0.0]])
    state.add_matrix("output", ("decision",), decisions, 1, now=0.0)
    vocabulary = reference.feature("output", "decision")["vocabulary"]
    assert sorted(vocabulary) == ["0", "1"]
    window = dict(
        zip(
            (*vocabulary, "__other__", "__missing__"),
            state.scores(now=0.0)[("output", "decision")].window,
            strict=True,
        )
    )
    assert window == {"0": 2, "1": 2, "__other__": 1, "__missing__": 1}


def test_add_columns_canonicalises_label_values(reference: Reference) -> None:
    state = new_state(reference)
    # 1.0, "1" (and 1) are one category; True is "true", not "1"; 0.0 is "0".
    state.add_columns("label", {"churned": [1.0, "1", 1, True, 0.0, "0", None, "yes"]}, 1, now=0.0)
    scores = state.scores(now=0.0)[("label", "churned")]
    window = dict(zip(scores.categories, scores.window, strict=True))
    assert window == {"0": 2, "1": 3, "__other__": 2, "__missing__": 1}


def test_weight_multiplies_the_window_counts(reference: Reference) -> None:
    single, weighted = new_state(reference), new_state(reference)
    window = make_columns(np.random.default_rng(20), 300)
    feed(single, window, now=0.0)
    feed(weighted, window, now=0.0, weight=4)
    one, four = single.scores(now=0.0), weighted.scores(now=0.0)
    for key in FEATURES:
        assert four[key].window == tuple(4 * c for c in one[key].window)
        assert four[key].window_count == 4 * one[key].window_count
        # The tests read the decoded values behind the weighted counts: the same p-values.
        assert (four[key].ks_pvalue, four[key].chi2_pvalue) == (one[key].ks_pvalue, one[key].chi2_pvalue)
        assert (four[key].missing_shift, four[key].missing_pvalue) == (
            one[key].missing_shift,
            one[key].missing_pvalue,
        )
    assert one[("input", "plan")].missing_pvalue is not None  # `plan` has missing values to test


def test_score_cache_and_invalidate(reference: Reference) -> None:
    state = new_state(reference)
    feed(state, make_columns(np.random.default_rng(21), 1000), now=100.0)
    first = state.scores(now=100.0)
    assert first[("input", "age")].window_count == 1000
    feed(state, make_columns(np.random.default_rng(22), 500), now=101.0)
    # Within SCORE_INTERVAL_S the same object comes back, stale counts included.
    assert state.scores(now=100.0 + SCORE_INTERVAL_S - 0.001) is first
    # invalidate(): fresh numbers right away.
    state.invalidate()
    fresh = state.scores(now=102.0)
    assert fresh is not first
    assert fresh[("input", "age")].window_count == 1500
    assert state.scores(now=102.0 + SCORE_INTERVAL_S / 2) is fresh
    # After SCORE_INTERVAL_S they are recomputed without an invalidate.
    feed(state, make_columns(np.random.default_rng(23), 100), now=103.0)
    later = state.scores(now=102.0 + SCORE_INTERVAL_S)
    assert later is not fresh
    assert later[("input", "age")].window_count == 1600


@pytest.mark.parametrize(
    ("slot_s", "interval_s"), [(0.25, 1.0), (1.0, 1.0), (2.5, 2.5), (60.0, SCORE_INTERVAL_S)]
)
def test_scores_follow_a_short_window_once_a_slot(
    reference: Reference, slot_s: float, interval_s: float
) -> None:
    # With slots shorter than SCORE_INTERVAL_S, a window of a few seconds would move by more than
    # its length between two scores: they are worked out again once a slot, at most once a second.
    state = DriftState(reference.profile, WindowConfig(slots=8, slot_s=slot_s), Thresholds())
    assert state.score_interval_s == interval_s
    feed(state, make_columns(np.random.default_rng(24), 200), now=100.0)
    first = state.scores(now=100.0)
    feed(state, make_columns(np.random.default_rng(25), 100), now=100.0)
    assert state.scores(now=100.0 + interval_s - 0.001) is first
    later = state.scores(now=100.0 + interval_s)
    assert later[("input", "age")].window_count == 300


# --- StatsAggregator ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def model_attributes(version: str) -> Attributes:
    return ((MODEL_NAME, "churn"), (MODEL_VERSION, version))


HTTP: Attributes = (("http.request.method", "POST"),)


def observe(stats: StatsAggregator, model: Attributes, columns: Columns) -> None:
    matrix = np.column_stack([columns[name] for name in INPUT_NUMERIC])
    stats.observe_matrix(model, "input", INPUT_NUMERIC, matrix, 1)
    stats.observe_columns(model, "input", {name: columns[name] for name in INPUT_CATEGORICAL}, 1)
    outputs = np.column_stack((columns["score"], columns["decision"].astype(np.float64)))
    stats.observe_matrix(model, "output", ("score", "decision"), outputs, 1)
    stats.observe_columns(model, "label", {"churned": [float(v) for v in columns["churned"]]}, 1)


def view_of(views: Sequence[ModelView], version: str) -> ModelView:
    (found,) = [v for v in views if v.name == "churn" and v.version == version]
    return found


def features_of(view: ModelView) -> dict[tuple[str, str], FeatureView]:
    return {(f.role, f.name): f for f in view.features}


def test_model_views_expose_scores_levels_and_latency(reference: Reference) -> None:
    clock = FakeClock()
    stats = StatsAggregator(
        series_limit=100, duration_bounds=(0.005, 0.01, 0.1, 1.0), reference=reference.profile, clock=clock
    )
    model = model_attributes("1")
    rng = np.random.default_rng(30)
    window = make_columns(rng, 3000, age_shift=0.5)
    observe(stats, model, window)
    durations = rng.lognormal(-3.0, 0.8, 20_000)
    for part in np.array_split(durations, 20):
        stats.observe_latency(model, HTTP, part, 1, 0)
        clock.now += 1.0  # 20 s of traffic, well within the 15-minute window

    view = view_of(stats.model_views(), "1")
    features = features_of(view)
    assert set(FEATURES) <= set(features)
    for key in FEATURES:
        feature_view = features[key]
        assert feature_view.monitored
        assert_scores_match(feature_view, expected_scores(reference, *key, window))
    assert features[("input", "age")].level in (int(Level.WARNING), int(Level.CRITICAL))
    assert {key for key in FEATURES if features[key].level != int(Level.OK)} == {("input", "age")}
    assert view.level == features[("input", "age")].level
    # Numeric export: bounds are the fine edges, counts over len(bounds) + 1 buckets.
    age = features[("input", "age")]
    assert list(age.bounds) == reference.feature("input", "age")["fine_edges"]
    assert sum(age.cumulative_counts) == 3000
    assert list(age.reference_counts) == reference.feature("input", "age")["counts"]

    assert view.latency_count == 20_000
    for got, q in ((view.latency_p50_s, 0.5), (view.latency_p95_s, 0.95), (view.latency_p99_s, 0.99)):
        exact = float(np.quantile(durations, q, method="inverted_cdf"))
        assert got is not None
        assert abs(got - exact) <= 0.01 * exact, (q, got, exact)
    assert view.latency_max_s == float(durations.max())


def test_new_model_version_gets_its_own_state(reference: Reference) -> None:
    clock = FakeClock()
    stats = StatsAggregator(
        series_limit=100, duration_bounds=(0.01, 0.1), reference=reference.profile, clock=clock
    )
    rng = np.random.default_rng(31)
    drifted = make_columns(rng, 3000, age_shift=0.5)
    steady = make_columns(rng, 1000)
    observe(stats, model_attributes("1"), drifted)
    stats.observe_latency(model_attributes("1"), HTTP, np.full(10, 0.2), 1, 0)
    observe(stats, model_attributes("2"), steady)
    stats.observe_latency(model_attributes("2"), HTTP, np.full(4, 0.05), 1, 0)

    views = stats.model_views()
    first, second = features_of(view_of(views, "1")), features_of(view_of(views, "2"))
    for key in FEATURES:
        assert_scores_match(first[key], expected_scores(reference, *key, drifted))
        assert_scores_match(second[key], expected_scores(reference, *key, steady))
    assert sum(first[("input", "age")].cumulative_counts) == 3000
    assert sum(second[("input", "age")].cumulative_counts) == 1000
    assert first[("input", "age")].level in (int(Level.WARNING), int(Level.CRITICAL))
    assert {key: f.level for key, f in second.items() if key in FEATURES} == dict.fromkeys(FEATURES, 0)
    assert view_of(views, "1").latency_count == 10
    assert view_of(views, "2").latency_count == 4
    p99 = view_of(views, "2").latency_p99_s
    assert p99 is not None
    assert abs(p99 - 0.05) <= 0.01 * 0.05


def test_aggregator_window_follows_its_clock(reference: Reference) -> None:
    clock = FakeClock(5000.0)
    stats = StatsAggregator(
        series_limit=100, duration_bounds=(0.01, 0.1), reference=reference.profile, clock=clock
    )
    model = model_attributes("1")
    observe(stats, model, make_columns(np.random.default_rng(32), 800, age_shift=3.0))
    stats.observe_latency(model, HTTP, np.array([0.02, 0.03]), 1, 0)
    age = features_of(view_of(stats.model_views(), "1"))[("input", "age")]
    assert age.window_count == 800
    assert age.level == int(Level.CRITICAL)
    clock.now += stats.window_s  # the whole window later: nothing is left in it
    view = view_of(stats.model_views(), "1")
    age = features_of(view)[("input", "age")]
    assert age.window_count == 0
    assert age.psi is None
    assert age.level == int(Level.OK)
    assert sum(age.cumulative_counts) == 800
    assert view.latency_p50_s is None
    assert view.latency_count == 2
