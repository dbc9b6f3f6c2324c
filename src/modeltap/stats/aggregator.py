"""Everything the worker accumulates, keyed by model name and version, and its snapshot."""

from __future__ import annotations

import math
from collections.abc import Mapping

from modeltap.snapshot import (
    Attributes,
    CounterPoint,
    HistogramPoint,
    ModelView,
)
from modeltap.stats.feature_summary import FeatureSummary
from modeltap.stats.histogram import ExplicitHistogram
from modeltap.stats.observation import Observation, Value
from modeltap.stats.reference import ReferenceProfile
from modeltap.stats.series import SeriesTable

MODEL_NAME = "modeltap.model.name"
MODEL_VERSION = "modeltap.model.version"
# Features tracked per model version; more distinct names than this are not a tabular model.
MAX_FEATURES_PER_MODEL = 1024


class _ModelState:
    __slots__ = ("decoded_rows", "errors", "features", "latency_count", "latency_max", "latency_sum", "requests")

    def __init__(self) -> None:
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
        stats.observe(observation)
        points = stats.duration_points()
    """

    def __init__(
        self,
        series_limit: int,
        duration_bounds: tuple[float, ...],
        reference: ReferenceProfile | None = None,
    ) -> None:
        self._bounds = duration_bounds
        self._reference = reference
        self._durations: SeriesTable[ExplicitHistogram] = SeriesTable(
            series_limit, lambda: ExplicitHistogram(duration_bounds)
        )
        self._violations: SeriesTable[list[int]] = SeriesTable(series_limit, lambda: [0])
        self._drops: SeriesTable[list[int]] = SeriesTable(series_limit, lambda: [0])
        self._models: SeriesTable[_ModelState] = SeriesTable(series_limit, _ModelState)

    def observe(self, obs: Observation) -> None:
        model_attrs: Attributes = ((MODEL_NAME, obs.model_name), (MODEL_VERSION, obs.model_version))
        weight = obs.weight
        self._durations.get(obs.http_attributes + model_attrs).add(obs.duration_s, weight)
        state = self._models.get(model_attrs)
        state.requests += weight
        state.errors += weight if obs.is_error else 0
        state.decoded_rows += obs.rows * weight
        if math.isfinite(obs.duration_s):
            state.latency_count += weight
            state.latency_sum += obs.duration_s * weight
            state.latency_max = max(state.latency_max, obs.duration_s)
        violations = dict(obs.violations)
        if self._reference is not None and obs.rows:
            self._check_reference(obs.features, "input", violations)
            self._check_reference(obs.outputs, "output", violations)
        self._add_columns(state, obs.features, "input", weight, violations)
        self._add_columns(state, obs.outputs, "output", weight, violations)
        for reason, count in violations.items():
            if count:
                self.count_violation(model_attrs, reason, count * weight)

    def _add_columns(
        self,
        state: _ModelState,
        columns: Mapping[str, list[Value]],
        role: str,
        weight: int,
        violations: dict[str, int],
    ) -> None:
        for name, values in columns.items():
            summary = state.features.get((role, name))
            if summary is None:
                if len(state.features) >= MAX_FEATURES_PER_MODEL:
                    violations["schema"] = violations.get("schema", 0) + 1
                    continue
                summary = state.features[(role, name)] = FeatureSummary(name, role)
                known = self._reference.feature(role, name) if self._reference is not None else None
                if known is not None:
                    summary.kind = known.kind
            wrong = summary.add(values, weight)
            if wrong:
                violations["type"] = violations.get("type", 0) + wrong

    def _check_reference(self, columns: Mapping[str, list[Value]], role: str, violations: dict[str, int]) -> None:
        """Schema, type and range checks against the reference (counted, never raised)."""
        assert self._reference is not None
        expected = {f.name: f for f in self._reference.features if f.role == role}
        if not expected:
            return
        schema = sum(1 for name in columns if name not in expected)
        schema += sum(1 for name in expected if name not in columns) if columns else 0
        out_of_range = 0
        for name, values in columns.items():
            feature = expected.get(name)
            if feature is None or feature.kind != "numeric":
                continue
            low = feature.min if feature.min is not None else -math.inf
            high = feature.max if feature.max is not None else math.inf
            out_of_range += sum(1 for v in values if isinstance(v, float) and (v < low or v > high))
        # Type mismatches are counted by the feature summary, whose kind comes from the reference.
        for reason, count in (("schema", schema), ("out_of_range", out_of_range)):
            if count:
                violations[reason] = violations.get(reason, 0) + count

    def count_violation(self, model_attrs: Attributes, reason: str, count: int) -> None:
        self._violations.get((*model_attrs, ("modeltap.violation.reason", reason)))[0] += count

    def count_drop(self, model_attrs: Attributes, reason: str, count: int) -> None:
        self._drops.get((*model_attrs, ("modeltap.drop.reason", reason)))[0] += count

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

    def model_views(self) -> tuple[ModelView, ...]:
        views = []
        for attrs, state in self._models.items():
            values = dict(attrs)
            views.append(
                ModelView(
                    name=str(values.get(MODEL_NAME, "")),
                    version=str(values.get(MODEL_VERSION, "")),
                    requests=state.requests,
                    errors=state.errors,
                    decoded_rows=state.decoded_rows,
                    features=tuple(s.view() for s in list(state.features.values())),
                    latency_count=state.latency_count,
                    latency_sum_s=state.latency_sum,
                    latency_max_s=state.latency_max if state.latency_count else None,
                )
            )
        return tuple(views)
