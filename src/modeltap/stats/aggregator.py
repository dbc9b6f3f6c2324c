"""Everything the worker accumulates, keyed by model name and version, and its snapshot.

The worker groups a micro-batch first (by series, by model and feature set) and calls these
methods once per group with numpy arrays, so the per-exchange cost stays a few microseconds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from modeltap._types import Value
from modeltap.snapshot import Attributes, CounterPoint, FeatureView, HistogramPoint, ModelView
from modeltap.stats.drift_state import DriftState, FeatureScores, WindowConfig
from modeltap.stats.feature_summary import FeatureSummary
from modeltap.stats.histogram import ExplicitHistogram
from modeltap.stats.latency_window import LatencyWindow
from modeltap.stats.reference import ReferenceFeature, ReferenceProfile
from modeltap.stats.rolling import MAX_TRACKED_OUTPUTS, RollingMean
from modeltap.stats.scores import Level, Thresholds, overall_level
from modeltap.stats.series import SeriesTable
from modeltap.stats.slot_history import SlotHistory

MODEL_NAME = "modeltap.model.name"
MODEL_VERSION = "modeltap.model.version"
# Features tracked per model version; more distinct names than this are not a tabular model.
MAX_FEATURES_PER_MODEL = 1024


class _ModelState:
    __slots__ = (
        "decoded_rows",
        "drift",
        "errors",
        "features",
        "history",
        "latency_count",
        "latency_max",
        "latency_sum",
        "latency_window",
        "requests",
        "rolling",
    )

    def __init__(self, drift: DriftState | None, latency_window: LatencyWindow, history: SlotHistory) -> None:
        self.drift = drift
        self.latency_window = latency_window
        self.rolling: dict[str, RollingMean] = {}  # per numeric output: mean of the last w values
        self.history = history
        self.requests = 0
        self.errors = 0
        self.decoded_rows = 0
        self.latency_count = 0
        self.latency_sum = 0.0
        self.latency_max = -math.inf
        self.features: dict[tuple[str, str], FeatureSummary] = {}


class StatsAggregator:
    """Cumulative counts since start: duration histograms, drops, violations, per-model summaries.

    Example::

        stats = StatsAggregator(series_limit=2000, duration_bounds=(0.005, 0.01, 0.1, 1.0))
        model = (("modeltap.model.name", "churn"), ("modeltap.model.version", "3"))
        stats.observe_latency(model, (("http.request.method", "POST"),), np.array([0.004]), 1, 0)
        stats.observe_matrix(model, "input", ("age", "income"), np.array([[41.0, 5200.0]]), 1)
    """

    def __init__(
        self,
        series_limit: int,
        duration_bounds: tuple[float, ...],
        reference: ReferenceProfile | None = None,
        window: WindowConfig | None = None,
        thresholds: Thresholds | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window or WindowConfig()
        self._thresholds = thresholds or Thresholds()
        self._clock = clock
        self._bounds = duration_bounds
        self._bounds_array = np.asarray(duration_bounds, dtype=np.float64)
        self._reference = reference
        self._durations: SeriesTable[ExplicitHistogram] = SeriesTable(
            series_limit, lambda: ExplicitHistogram(duration_bounds)
        )
        self._violations: SeriesTable[list[int]] = SeriesTable(series_limit, lambda: [0])
        self._drops: SeriesTable[list[int]] = SeriesTable(series_limit, lambda: [0])
        self._models: SeriesTable[_ModelState] = SeriesTable(series_limit, self._new_model_state)

    def _new_model_state(self) -> _ModelState:
        # Every model version gets its own drift state: a new version starts its own window.
        drift = None
        if self._reference is not None and any(f.has_distribution for f in self._reference.features):
            drift = DriftState(self._reference, self._window, self._thresholds)
        return _ModelState(
            drift, LatencyWindow(self._window.slots, self._window.slot_s), SlotHistory(self._window.slot_s)
        )

    @property
    def window_s(self) -> float:
        return self._window.slots * self._window.slot_s

    # ---- requests -----------------------------------------------------------------------

    def observe_latency(
        self,
        model: Attributes,
        http_attributes: Attributes,
        durations_s: np.ndarray,
        weight: int,
        errors: int,
    ) -> None:
        """One series' durations from a batch; `errors` of them failed (5xx or exception)."""
        finite = durations_s[np.isfinite(durations_s)]
        histogram = self._durations.get(http_attributes + model)
        if finite.size:
            buckets = np.searchsorted(self._bounds_array, finite, side="left")
            counts = np.bincount(buckets, minlength=len(histogram.counts))
            for i in np.flatnonzero(counts):
                histogram.counts[i] += int(counts[i]) * weight
            histogram.count += int(finite.size) * weight
            histogram.sum += float(finite.sum()) * weight
            histogram.min = min(histogram.min, float(finite.min()))
            histogram.max = max(histogram.max, float(finite.max()))
        state = self._models.get(model)
        state.requests += int(durations_s.size) * weight
        state.errors += errors * weight
        state.history.add(finite, errors, weight, self._clock())
        if finite.size:
            state.latency_window.add(finite, weight, self._clock())
            state.latency_count += int(finite.size) * weight
            state.latency_sum += float(finite.sum()) * weight
            state.latency_max = max(state.latency_max, float(finite.max()))

    # ---- features -----------------------------------------------------------------------

    def _summary(self, state: _ModelState, role: str, name: str) -> FeatureSummary | None:
        summary = state.features.get((role, name))
        if summary is None:
            if len(state.features) >= MAX_FEATURES_PER_MODEL:
                return None
            summary = state.features[(role, name)] = FeatureSummary(name, role)
            known = self._reference.feature(role, name) if self._reference is not None else None
            if known is not None:
                summary.kind = known.kind
        return summary

    def _expected(self, role: str) -> dict[str, ReferenceFeature]:
        if self._reference is None:
            return {}
        return {f.name: f for f in self._reference.features if f.role == role}

    def _schema_violations(self, role: str, names: Sequence[str]) -> int:
        """Names the reference does not know, plus reference names absent from the payload."""
        expected = self._expected(role)
        if not expected or not names:
            return 0
        present = set(names)
        return sum(1 for n in names if n not in expected) + sum(1 for n in expected if n not in present)

    def observe_matrix(
        self,
        model: Attributes,
        role: str,
        names: tuple[str, ...],
        matrix: np.ndarray,
        weight: int,
        exchanges: int = 1,
    ) -> None:
        """A rows-by-features float matrix (NaN/inf = missing) decoded from `exchanges` exchanges.

        Moments are computed for all columns at once; only the hand-over is per feature.
        """
        state = self._models.get(model)
        if role == "input":
            state.decoded_rows += int(matrix.shape[0]) * weight
        if state.drift is not None:
            state.drift.add_matrix(role, names, matrix, weight, self._clock())
        if role == "output":
            for j, name in enumerate(names):
                tail = state.rolling.get(name)
                if tail is None and len(state.rolling) < MAX_TRACKED_OUTPUTS:
                    tail = state.rolling[name] = RollingMean()
                if tail is not None:
                    tail.add(matrix[:, j])
        finite = np.isfinite(matrix)
        counts = finite.sum(axis=0)
        clean = np.where(finite, matrix, 0.0)
        sums = clean.sum(axis=0)
        sums_sq = np.einsum("ij,ij->j", clean, clean)
        lows = np.where(finite, matrix, np.inf).min(axis=0)
        highs = np.where(finite, matrix, -np.inf).max(axis=0)
        rows = int(matrix.shape[0])
        missing = rows * len(names) - int(counts.sum())
        out_of_range = 0
        expected = self._expected(role)
        for j, name in enumerate(names):
            summary = self._summary(state, role, name)
            if summary is None:
                self.count_violation(model, "schema", exchanges * weight)
                continue
            n = int(counts[j])
            summary.add_moments(
                n, rows - n, float(sums[j]), float(sums_sq[j]), float(lows[j]), float(highs[j]), weight
            )
            feature = expected.get(name)
            if (
                feature is not None
                and feature.kind == "numeric"
                and (feature.min is not None or feature.max is not None)
            ):
                column = matrix[:, j]
                low = -math.inf if feature.min is None else feature.min
                high = math.inf if feature.max is None else feature.max
                out_of_range += int(np.count_nonzero((column < low) | (column > high)))
        for reason, count in (
            ("missing", missing),
            ("out_of_range", out_of_range),
            ("schema", self._schema_violations(role, names) * exchanges),
        ):
            if count:
                self.count_violation(model, reason, count * weight)

    def observe_columns(
        self, model: Attributes, role: str, columns: Mapping[str, list[Value]], weight: int
    ) -> None:
        """The general path: columns of mixed Python values from one exchange."""
        state = self._models.get(model)
        if role == "input" and columns:
            state.decoded_rows += len(next(iter(columns.values()))) * weight
        if state.drift is not None:
            state.drift.add_columns(role, columns, weight, self._clock())
        expected = self._expected(role)
        wrong_type = out_of_range = 0
        for name, values in columns.items():
            summary = self._summary(state, role, name)
            if summary is None:
                self.count_violation(model, "schema", weight)
                continue
            wrong_type += summary.add(values, weight)
            feature = expected.get(name)
            if feature is not None and feature.kind == "numeric":
                low = -math.inf if feature.min is None else feature.min
                high = math.inf if feature.max is None else feature.max
                out_of_range += sum(1 for v in values if isinstance(v, float) and (v < low or v > high))
        for reason, count in (
            ("type", wrong_type),
            ("out_of_range", out_of_range),
            ("schema", self._schema_violations(role, list(columns))),
        ):
            if count:
                self.count_violation(model, reason, count * weight)

    # ---- counters -----------------------------------------------------------------------

    def count_violation(self, model: Attributes, reason: str, count: int) -> None:
        self._violations.get((*model, ("modeltap.violation.reason", reason)))[0] += count

    def count_drop(self, model: Attributes, reason: str, count: int) -> None:
        self._drops.get((*model, ("modeltap.drop.reason", reason)))[0] += count

    # ---- snapshot -----------------------------------------------------------------------

    def duration_points(self) -> tuple[HistogramPoint, ...]:
        return tuple(
            HistogramPoint(
                attributes=attrs,
                bounds=self._bounds,
                counts=tuple(h.counts),
                count=h.count,
                sum=h.sum,
                min=h.min if h.count else None,
                max=h.max if h.count else None,
            )
            for attrs, h in self._durations.items()
        )

    def violation_points(self) -> tuple[CounterPoint, ...]:
        return tuple(CounterPoint(attrs, float(v[0])) for attrs, v in self._violations.items())

    def drop_points(self) -> tuple[CounterPoint, ...]:
        return tuple(CounterPoint(attrs, float(v[0])) for attrs, v in self._drops.items())

    def invalidate_scores(self) -> None:
        for _, state in self._models.items():
            if state.drift is not None:
                state.drift.invalidate()

    def model_views(self) -> tuple[ModelView, ...]:
        now = self._clock()
        views = []
        for attrs, state in self._models.items():
            values = dict(attrs)
            scores = state.drift.scores(now) if state.drift is not None else {}
            features = [
                _feature_view(
                    summary, scores.get((role, name)), state.rolling.get(name) if role == "output" else None
                )
                for (role, name), summary in list(state.features.items())
            ]
            # Reference features never seen in traffic are shown too (with zero counts).
            seen = set(state.features)
            for key, feature_scores in scores.items():
                if key not in seen:
                    features.append(_feature_view(FeatureSummary(key[1], key[0]), feature_scores))
            p50, p95, p99, window_max = state.latency_window.summary(now)
            latency_level, error_level = state.history.levels(now, self._thresholds.sigma_k)
            views.append(
                ModelView(
                    name=str(values.get(MODEL_NAME, "")),
                    version=str(values.get(MODEL_VERSION, "")),
                    requests=state.requests,
                    errors=state.errors,
                    decoded_rows=state.decoded_rows,
                    features=tuple(features),
                    latency_count=state.latency_count,
                    latency_sum_s=state.latency_sum,
                    latency_max_s=state.latency_max if state.latency_count else None,
                    latency_p50_s=p50,
                    latency_p95_s=p95,
                    latency_p99_s=p99,
                    latency_window_max_s=window_max,
                    latency_level=int(latency_level),
                    error_rate_level=int(error_level),
                    level=int(
                        overall_level([*(Level(f.level) for f in features), latency_level, error_level])
                    ),
                )
            )
        return tuple(views)


def _feature_view(
    summary: FeatureSummary, scores: FeatureScores | None, rolling: RollingMean | None = None
) -> FeatureView:
    view = summary.view()
    if rolling is not None:
        view = dataclasses.replace(view, rolling_mean=rolling.mean)
    if scores is None:
        return view
    return dataclasses.replace(
        view,
        window_count=scores.window_count,
        window_missing=scores.window_missing,
        window_out_of_range=scores.window_out_of_range,
        psi=scores.psi,
        js=scores.js,
        ks_statistic=scores.ks_statistic,
        ks_pvalue=scores.ks_pvalue,
        chi2_pvalue=scores.chi2_pvalue,
        level=int(scores.level),
        monitored=True,
        missing_shift=scores.missing_shift,
        missing_pvalue=scores.missing_pvalue,
        cumulative_counts=scores.cumulative,
        window_counts=scores.window,
        reference_counts=scores.reference,
        bounds=scores.bounds,
        categories=scores.categories,
    )
