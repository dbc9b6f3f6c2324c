"""The server-side history the status page plots (`stats/score_history.py`): one point per interval,
the newest equal to the current view, bounded in points and features, and only monitored features;
through the aggregator, its values are those the model view reports."""

from __future__ import annotations

import numpy as np

from modeltap.export.history_json import history_document
from modeltap.reference import numeric_profile_document, parse_reference
from modeltap.snapshot import FeatureView, ModelView
from modeltap.stats.aggregator import StatsAggregator
from modeltap.stats.drift_state import WindowConfig
from modeltap.stats.score_history import ScoreHistory

HTTP = (("http.request.method", "POST"),)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def feature(name: str, psi: float | None, *, monitored: bool = True) -> FeatureView:
    return FeatureView(
        name=name, role="input", kind="numeric", count=10, missing=0, mean=None, std=None, min=None,
        max=None, psi=psi, monitored=monitored,
    )  # fmt: skip


def model_view(
    requests: int, errors: int = 0, p99: float | None = 0.02, features: tuple[FeatureView, ...] = ()
) -> ModelView:
    return ModelView(
        name="churn", version="1", requests=requests, errors=errors, decoded_rows=0, features=features,
        latency_count=requests, latency_sum_s=0.0, latency_max_s=None, latency_p50_s=0.005,
        latency_p95_s=0.01, latency_p99_s=p99,
    )  # fmt: skip


def test_one_point_per_interval_the_last_one_live() -> None:
    wall = FakeClock(1_700_000_000.0)
    history = ScoreHistory(interval_s=60.0, wall_clock=wall)

    history.attach(model_view(10, 1, p99=0.05, features=(feature("age", 0.01),)), now=0.0)
    wall.now += 30
    first = history.attach(model_view(40, 2, p99=0.04, features=(feature("age", 0.02),)), now=30.0)
    assert first.history is not None
    assert len(first.history.points) == 1  # the same interval: the point was overwritten
    wall.now += 40
    second = history.attach(model_view(100, 8, p99=0.03, features=(feature("age", 0.3),)), now=70.0)

    assert second.history is not None
    finished, live = second.history.points
    # A finished interval keeps what its last snapshot saw.
    assert (finished.unix_s, finished.requests, finished.latency_p99_s) == (1_700_000_030.0, 40, 0.04)
    assert finished.error_rate == 2 / 40
    assert finished.psi == (0.02,)
    # The live point is the current view; its requests are those since the last interval's.
    assert (live.unix_s, live.requests, live.latency_p99_s, live.psi) == (1_700_000_070.0, 60, 0.03, (0.3,))
    assert live.error_rate == 6 / 60
    assert second.history.features == ("age",)
    assert second.history.interval_s == 60.0


def test_points_and_features_are_bounded() -> None:
    history = ScoreHistory(interval_s=1.0, max_points=120, max_features=4)
    many = tuple(feature(f"f{i}", 0.01 * i) for i in range(50))
    view = model_view(0)
    for step in range(500):
        view = history.attach(model_view(step, features=many), now=float(step))

    assert view.history is not None
    assert len(view.history.points) == 120
    assert view.history.features == ("f0", "f1", "f2", "f3")
    assert all(len(point.psi) == 4 for point in view.history.points)
    assert [p.requests for p in view.history.points][-3:] == [1, 1, 1]


def test_only_monitored_features_are_kept() -> None:
    """A feature without a reference distribution may be named by a payload: it never enters."""
    history = ScoreHistory(interval_s=60.0)
    view = history.attach(
        model_view(5, features=(feature("age", 0.1), feature("user@example.com", None, monitored=False))),
        now=0.0,
    )

    assert view.history is not None
    assert view.history.features == ("age",)
    document = history_document(view)
    assert document is not None
    assert list(document["psi"]) == ["age"]


def test_a_feature_seen_later_has_no_values_before() -> None:
    history = ScoreHistory(interval_s=1.0)
    history.attach(model_view(1, features=(feature("age", 0.1),)), now=0.0)
    view = history.attach(model_view(2, features=(feature("age", 0.1), feature("income", 0.2))), now=1.0)

    document = history_document(view)
    assert document is not None
    assert document["psi"] == {"age": [0.1, 0.1], "income": [None, 0.2]}
    assert document["requests"] == [1, 1]


def test_through_the_aggregator_the_history_holds_what_the_views_report() -> None:
    rng = np.random.default_rng(5)
    names = ("age", "income")
    training = np.column_stack([rng.normal(40, 10, 3000), rng.normal(5000, 800, 3000)])
    reference = parse_reference(numeric_profile_document(names, training, model_name="churn"))
    clock = FakeClock()
    stats = StatsAggregator(
        series_limit=100,
        duration_bounds=(0.01, 0.1),
        reference=reference,
        window=WindowConfig(slots=5, slot_s=10.0),
        clock=clock,
    )
    model = (("modeltap.model.name", "churn"), ("modeltap.model.version", "1"))
    reported = []
    for step in range(6):
        shift = 0.0 if step < 3 else 15.0  # drift in the second half
        rows = np.column_stack([rng.normal(40 + shift, 10, 600), rng.normal(5000, 800, 600)])
        stats.observe_matrix(model, "input", names, rows, 1)
        stats.observe_latency(model, HTTP, rng.lognormal(-4.0, 0.5, 60), 1, step)
        clock.now += 10.0  # one slot per step
        stats.invalidate_scores()
        (view,) = stats.model_views()
        reported.append(view)

    history = reported[-1].history
    assert history is not None
    assert history.interval_s == 10.0
    assert history.features == names
    assert len(history.points) == 6
    for point, view in zip(history.points, reported, strict=True):
        psi = {f.name: f.psi for f in view.features}
        assert point.latency_p50_s == view.latency_p50_s
        assert point.latency_p95_s == view.latency_p95_s
        assert point.latency_p99_s == view.latency_p99_s
        assert point.psi == (psi["age"], psi["income"])
    assert [p.requests for p in history.points] == [60] * 6
    assert [p.error_rate for p in history.points] == [step / 60 for step in range(6)]
    assert sum(p.requests for p in history.points) == reported[-1].requests
    age = [p.psi[0] for p in history.points if p.psi[0] is not None]
    assert len(age) == 6
    assert max(age[:3]) < 0.1 < age[-1]  # the drift shows in the second half
