"""What traffic can make the statistics keep, and what they show (issue "trust", items 3, 4, 6, 8,
9): features per the reference or a cap, private categories, class-label outputs, rejected
exchanges that feed no state, and identities that expire with their series."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modeltap._types import Value
from modeltap.reference.builder import build_profile
from modeltap.reference.document import ReferenceProfile, parse_reference
from modeltap.snapshot import Attributes, FeatureView, ModelView
from modeltap.stats.aggregator import StateCaps, StatsAggregator
from modeltap.stats.feature_summary import MAX_DISTINCT
from modeltap.stats.scores import Level, Thresholds

HTTP: Attributes = (("http.request.method", "POST"),)
PLANS = ("basic", "pro", "team")


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reference(with_outputs: bool = True) -> ReferenceProfile:
    rng = np.random.default_rng(7)
    rows = 2000
    data: dict[str, Any] = {
        "age": rng.normal(40, 10, rows),
        "plan": rng.choice(PLANS, rows).tolist(),
    }
    prediction: tuple[str, ...] = ()
    if with_outputs:
        data["churned"] = rng.choice([0, 1], rows, p=[0.7, 0.3])  # integral classes: categorical
        prediction = ("churned",)
    document = build_profile(data, prediction=prediction, model_name="churn")
    return parse_reference(document, "reference.json")


def aggregator(
    profile: ReferenceProfile | None,
    clock: FakeClock | None = None,
    thresholds: Thresholds | None = None,
    **caps: Any,
) -> StatsAggregator:
    return StatsAggregator(
        series_limit=1000,
        duration_bounds=(0.01, 0.1),
        reference=profile,
        clock=clock or FakeClock(),
        thresholds=thresholds,
        caps=StateCaps(**caps),
    )


def only_view(stats: StatsAggregator) -> ModelView:
    (view,) = stats.model_views()
    return view


def features(view: ModelView) -> dict[tuple[str, str], FeatureView]:
    return {(f.role, f.name): f for f in view.features}


def violations(stats: StatsAggregator) -> dict[str, int]:
    return {
        str(dict(p.attributes)["modeltap.violation.reason"]): int(p.value) for p in stats.violation_points()
    }


# ---- item 4: features per the reference, or a cap ---------------------------------------------------


def test_input_names_the_reference_does_not_list_are_schema_violations_not_state() -> None:
    stats = aggregator(reference())
    model = stats.identity("churn", "1", accepted=True)
    columns: dict[str, list[Value]] = {"age": [41.0], "plan": ["pro"]}
    columns.update({f"junk{i}": [float(i)] for i in range(1100)})
    stats.observe_columns(model, "input", columns, 1)
    stats.observe_matrix(model, "input", ("age", "bogus"), np.array([[30.0, 1.0]]), 1)

    seen = features(only_view(stats))
    assert {name for role, name in seen if role == "input"} == {"age", "plan"}
    assert violations(stats) == {"schema": 1100 + 1 + 1}  # 1100 unknown, "bogus", "plan" absent


def test_without_a_reference_inputs_are_capped() -> None:
    stats = aggregator(None, max_features=10)
    model = stats.identity("m", None, accepted=True)
    for start in range(0, 100, 25):
        stats.observe_columns(model, "input", {f"k{i}": [1.0] for i in range(start, start + 25)}, 1)
    names = {name for role, name in features(only_view(stats)) if role == "input"}
    assert names == {f"k{i}" for i in range(10)}
    assert violations(stats) == {"schema": 90}


def test_names_longer_than_the_cap_are_schema_violations_not_state() -> None:
    """The client chooses the names of unlisted inputs and outputs: a long one is not kept (it
    would be held, and shown in /status, for as long as the version lives)."""
    stats = aggregator(None, max_name_chars=16)
    model = stats.identity("m", None, accepted=True)
    long_name = "k" * 17
    stats.observe_columns(model, "input", {"k" * 16: [1.0], long_name: [2.0], "x" * 200_000: [3.0]}, 1)
    stats.observe_matrix(model, "output", ("score", "s" * 17), np.array([[0.5, 0.5]]), 1)

    seen = features(only_view(stats))
    assert set(seen) == {("input", "k" * 16), ("output", "score")}
    assert violations(stats) == {"schema": 3}
    assert long_name not in repr(stats.model_views())


def test_long_names_the_reference_lists_are_tracked() -> None:
    """A reference vouches for its names, however long."""
    listed = "feature_" + "x" * 200
    document = build_profile({listed: np.linspace(0, 1, 500)}, model_name="m")
    stats = aggregator(parse_reference(document, "reference.json"))
    model = stats.identity("m", None, accepted=True)
    stats.observe_columns(model, "input", {listed: [0.5]}, 1)

    assert ("input", listed) in features(only_view(stats))
    assert violations(stats) == {}


def test_outputs_are_the_models_own_within_their_cap() -> None:
    stats = aggregator(reference(), max_outputs=3)
    model = stats.identity("churn", "1", accepted=True)
    outputs: dict[str, list[Value]] = {"churned": [1.0], **{f"p{i}": [0.5] for i in range(5)}}
    stats.observe_columns(model, "output", outputs, 1)
    names = {name for role, name in features(only_view(stats)) if role == "output"}
    assert names == {"churned", "p0", "p1", "p2"}
    assert violations(stats) == {"schema": 2}  # beyond the cap; extra outputs are no violation


# ---- item 6: categories outside the vocabulary are counted, never shown ------------------------------


SECRETS: list[Value] = ["alice@example.com", "4111 1111 1111 1111", "bob@example.com", "alice@example.com"]


def test_values_outside_the_vocabulary_are_counted_not_shown() -> None:
    stats = aggregator(reference())
    model = stats.identity("churn", "1", accepted=True)
    stats.observe_columns(model, "input", {"age": [30.0] * 6, "plan": ["pro", "basic", *SECRETS]}, 1)
    plan = features(only_view(stats))[("input", "plan")]
    assert dict(plan.top_categories) == {"pro": 1, "basic": 1}
    assert (plan.unlisted_values, plan.unlisted_distinct, plan.unlisted_distinct_capped) == (4, 3, False)
    assert plan.unlisted_top == ()
    shown = repr(stats.model_views())
    assert not any(str(secret) in shown for secret in SECRETS)


def test_without_a_reference_no_category_is_shown() -> None:
    stats = aggregator(None)
    model = stats.identity("m", None, accepted=True)
    stats.observe_columns(model, "input", {"email": SECRETS}, 1)
    email = features(only_view(stats))[("input", "email")]
    assert email.kind == "categorical"
    assert email.top_categories == ()
    assert (email.count, email.unlisted_values, email.unlisted_distinct) == (4, 4, 3)


def test_exposed_values_are_shown_truncated() -> None:
    stats = aggregator(reference(), expose_values=True)
    model = stats.identity("churn", "1", accepted=True)
    long_value = "x" * 500
    stats.observe_columns(model, "input", {"plan": ["pro", *SECRETS, long_value]}, 1)
    plan = features(only_view(stats))[("input", "plan")]
    assert dict(plan.top_categories) == {"pro": 1}
    assert dict(plan.unlisted_top) == {
        "alice@example.com": 2,
        "4111 1111 1111 1111": 1,
        "bob@example.com": 1,
        "x" * 64: 1,
    }


def test_a_million_distinct_values_keep_the_summary_bounded() -> None:
    stats = aggregator(None)
    model = stats.identity("m", None, accepted=True)
    for start in range(0, 200_000, 10_000):
        stats.observe_columns(
            model, "input", {"user": [f"user-{i}" for i in range(start, start + 10_000)]}, 1
        )
    user = features(only_view(stats))[("input", "user")]
    assert user.unlisted_values == 200_000
    assert (user.unlisted_distinct, user.unlisted_distinct_capped) == (MAX_DISTINCT, True)


# ---- item 8: class-label outputs are categories --------------------------------------------------------


@pytest.mark.parametrize("path", ["matrix", "columns"])
def test_class_label_outputs_are_counted_and_compared_as_categories(path: str) -> None:
    profile = reference()
    churned = profile.feature("output", "churned")
    assert churned is not None
    assert churned.kind == "categorical"
    stats = aggregator(profile, thresholds=Thresholds(min_samples=0))
    model = stats.identity("churn", "1", accepted=True)
    labels = [1.0] * 900 + [0.0] * 100  # the reference has 30 % churners: prior shift
    if path == "matrix":
        stats.observe_matrix(model, "output", ("churned",), np.array([[v] for v in labels]), 1)
    else:
        stats.observe_columns(model, "output", {"churned": list[Value](labels)}, 1)
    view = features(only_view(stats))[("output", "churned")]
    assert violations(stats) == {}
    assert view.count == 1000
    assert dict(view.top_categories) == {"1": 900, "0": 100}
    assert view.monitored
    assert view.window_count == 1000
    assert view.chi2_pvalue is not None
    assert view.chi2_pvalue < 1e-6
    assert view.psi is not None
    assert view.psi > 0.2
    assert view.level == int(Level.CRITICAL)


# ---- item 9: the rolling mean of numeric outputs on every path -------------------------------------------


def test_rolling_mean_of_outputs_from_columns() -> None:
    stats = aggregator(None)
    model = stats.identity("m", None, accepted=True)
    stats.observe_columns(model, "output", {"probability": [0.2, 0.4, None]}, 1)
    stats.observe_columns(model, "output", {"probability": [0.6]}, 1)
    probability = features(only_view(stats))[("output", "probability")]
    assert probability.rolling_mean == pytest.approx(0.4)


# ---- item 3: rejected exchanges feed nothing but their data quality --------------------------------------


def test_rejected_exchanges_count_violations_and_feed_no_state() -> None:
    profile = reference()
    stats = aggregator(profile)
    model = stats.identity("churn", "1", accepted=True)
    age = profile.feature("input", "age")
    assert age is not None
    assert age.max is not None
    stats.observe_matrix(
        model, "input", ("age", "plan"), np.array([[age.max + 1.0, np.nan]]), 1, accepted=False
    )
    stats.observe_columns(model, "input", {"age": ["forty"], "plan": ["pro"], "x": [1.0]}, 1, accepted=False)
    stats.observe_latency(model, HTTP, np.array([0.05, 0.05]), 1, 0)
    view = only_view(stats)
    assert view.decoded_rows == 0
    assert all(f.count == 0 and f.missing == 0 and f.window_count == 0 for f in view.features)
    assert violations(stats) == {"out_of_range": 1, "missing": 1, "type": 1, "schema": 1}


# ---- item 4: idle identities expire with their series ----------------------------------------------------


def test_idle_versions_expire_with_their_series() -> None:
    clock = FakeClock()
    stats = aggregator(reference(), clock=clock)
    old = stats.identity("churn", "1", accepted=True)
    stats.observe_latency(old, HTTP, np.array([0.05]), 1, 0)
    stats.count_violation(old, "missing", 2)
    clock.now += stats.window_s
    new = stats.identity("churn", "2", accepted=True)
    stats.observe_latency(new, HTTP, np.array([0.05]), 1, 0)
    assert stats.expire() == 0
    clock.now += stats.window_s + 1
    stats.identity("churn", "2", accepted=True)  # version 2 is still in use
    assert stats.expire() == 1
    assert [(v.name, v.version) for v in stats.model_views()] == [("churn", "2")]
    assert all(old[1] not in point.attributes for point in stats.duration_points())
    assert stats.violation_points() == ()
    # A series that comes back starts counting again, and says when.
    again = stats.identity("churn", "1", accepted=True)
    stats.observe_latency(again, HTTP, np.array([0.05]), 1, 0)
    starts = {dict(p.attributes)["modeltap.model.version"]: p.start_unix_ns for p in stats.duration_points()}
    assert starts["1"] > starts["2"] > 0
