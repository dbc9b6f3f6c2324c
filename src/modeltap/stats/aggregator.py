"""Everything the worker accumulates, keyed by model name and version, and its snapshot.

The worker groups a micro-batch first (by series, by model and feature set) and calls these
methods once per group with numpy arrays, so the per-exchange cost stays a few microseconds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modeltap._types import Value
from modeltap.reference.document import ReferenceFeature, ReferenceProfile
from modeltap.snapshot import Attributes, CounterPoint, FeatureView, HistogramPoint, ModelView
from modeltap.stats.drift_state import DriftState, FeatureScores, WindowConfig
from modeltap.stats.feature_summary import FeatureSummary
from modeltap.stats.freshness import freshness_level
from modeltap.stats.histogram import ExplicitHistogram
from modeltap.stats.identities import UNKNOWN, IdentityBook
from modeltap.stats.latency_window import LatencyWindow, RateWindow
from modeltap.stats.rolling import RollingMean
from modeltap.stats.score_history import ScoreHistory
from modeltap.stats.scores import Level, Thresholds, overall_level
from modeltap.stats.series import SeriesTable
from modeltap.stats.served_versions import ServedVersions
from modeltap.stats.sketch import QuantileSketch
from modeltap.stats.slot_history import SlotHistory

MODEL_NAME = "modeltap.model.name"
MODEL_VERSION = "modeltap.model.version"


@dataclass(frozen=True)
class StateCaps:
    """Bounds on what traffic can make the statistics keep (DESIGN.md, "bounded state").

    Inputs the reference lists are tracked; with a reference that lists inputs, any other input
    name is a `schema` violation and creates no state. Without one, at most `max_features` input
    names per model version are tracked. Outputs are named by the model's own answers and
    tracked up to `max_outputs` per version besides those the reference lists. A name the
    reference does not list is tracked only up to `max_name_chars` characters long (the client
    chooses it; it is kept and shown in `/status`): a longer one is a `schema` violation.
    """

    max_names: int = 16
    max_versions: int = 8
    max_features: int = 256
    max_outputs: int = 16
    max_name_chars: int = 128
    expose_values: bool = False


class _ModelState:
    __slots__ = (
        "client_disconnected",
        "cold_latency",
        "cold_requests",
        "decoded_rows",
        "drift",
        "errors",
        "features",
        "freshness",
        "freshness_future",
        "history",
        "latency_count",
        "latency_max",
        "latency_sum",
        "latency_window",
        "rate",
        "requests",
        "rolling",
        "score_history",
        "unlisted",
    )

    def __init__(self, drift: DriftState | None, latency_window: LatencyWindow, history: SlotHistory) -> None:
        self.drift = drift
        self.latency_window = latency_window
        self.rolling: dict[str, RollingMean] = {}  # per numeric output: mean of the last w values
        self.history = history
        self.score_history = ScoreHistory(history.slot_s)  # what the status page plots
        self.requests = 0
        self.errors = 0
        self.client_disconnected = 0
        self.decoded_rows = 0
        self.latency_count = 0
        self.latency_sum = 0.0
        self.latency_max = -math.inf
        self.features: dict[tuple[str, str], FeatureSummary] = {}
        # Throughput over the window, and the cold start's latency, kept apart from the steady state.
        self.rate = RateWindow(latency_window.slots, latency_window.slot_s)
        self.cold_latency = QuantileSketch()
        self.cold_requests = 0
        # Ages of the event times in `freshness_key` over the window; those in the future.
        self.freshness = LatencyWindow(latency_window.slots, latency_window.slot_s)
        self.freshness_future = 0
        # Per role: features tracked that the reference does not list (bounded by StateCaps).
        self.unlisted: dict[str, int] = {}


class StatsAggregator:
    """Cumulative counts since start: duration histograms, drops, violations, per-model summaries.

    Example::

        stats = StatsAggregator(series_limit=2000, duration_bounds=(0.005, 0.01, 0.1, 1.0))
        model = stats.identity("churn", "3", accepted=True)
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
        caps: StateCaps | None = None,
        trusted_names: Iterable[str] = (),
        fixed_version: str | None = None,
        freshness_max_age_s: float | None = None,
    ) -> None:
        self._window = window or WindowConfig()
        self._freshness_bound = freshness_max_age_s
        self._thresholds = thresholds or Thresholds()
        self._clock = clock
        self._caps = caps or StateCaps()
        self._bounds = duration_bounds
        self._bounds_array = np.asarray(duration_bounds, dtype=np.float64)
        self._reference = reference
        self._expected_by_role: dict[str, dict[str, ReferenceFeature]] = {
            role: {f.name: f for f in reference.features if f.role == role} if reference else {}
            for role in ("input", "output", "label")
        }
        # Idle versions expire after two windows: long enough that a quiet night does not lose a
        # live version's window, short enough that rotating versions do not pile up.
        self.identities = IdentityBook(
            max_names=self._caps.max_names,
            max_versions=self._caps.max_versions,
            idle_expiry_s=2 * self.window_s,
            trusted_names=[*trusted_names, *(reference.model_names() if reference else ())],
            fixed_version=fixed_version,
        )
        # The versions the answers carry (not the configured one), for version mismatches.
        self.served = ServedVersions(self._caps.max_versions)
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

    # ---- identities ---------------------------------------------------------------------

    def identity(
        self, name: str | None, version: str | None, *, accepted: bool, count: int = 1
    ) -> Attributes:
        """The model attributes an exchange is filed under (see `IdentityBook.resolve`); `count`:
        how many alike exchanges this stands for."""
        resolved = self.identities.resolve(name, version, accepted=accepted, now=self._clock(), count=count)
        return self.identities.attributes(resolved)

    def note_served(self, model: Attributes, version: str, count: int = 1) -> None:
        """`count` 2xx answers of `model` carried `version` (a header or the body): the version serving."""
        name = dict(model).get(MODEL_NAME)
        if isinstance(name, str) and name != UNKNOWN:
            self.served.observe(name, version, self._clock(), count)

    def expire(self) -> int:
        """Drop the state and series of identities idle for two windows, and the served versions
        not answered for as long; returns how many identities went."""
        now = self._clock()
        self.served.forget(now, 2 * self.window_s)
        gone = self.identities.expire(now)
        if not gone:
            return 0
        doomed = set(gone)
        for table in (self._durations, self._violations, self._drops):
            table.remove_if(lambda key: any(_owned_by(key, model) for model in doomed))
        self._models.remove_if(lambda key: key in doomed)
        return len(gone)

    # ---- requests -----------------------------------------------------------------------

    def observe_latency(
        self,
        model: Attributes,
        http_attributes: Attributes,
        durations_s: np.ndarray,
        weight: int,
        errors: int,
        client_gone: int = 0,
        cold: bool = False,
    ) -> None:
        """One series' durations from a batch; `errors` of them failed (5xx or exception) and
        `client_gone` ended because the client left (neither an error nor in the error rate).
        `cold`: a serving process's first exchanges, counted and exported like any, but their
        latency is reported apart and kept out of the window's percentiles and the baseline (their
        requests and errors still count in the error rate)."""
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
        state.client_disconnected += client_gone * weight
        state.rate.add(int(durations_s.size) * weight, self._clock())
        if cold:
            # Errors still count in the error rate; only the latency is set apart.
            state.cold_requests += int(durations_s.size) * weight
            state.cold_latency.add_many(finite, weight)
            state.history.add_counts(int(durations_s.size), errors, weight, self._clock())
        else:
            state.history.add(finite, errors, weight, self._clock())
            if finite.size:
                state.latency_window.add(finite, weight, self._clock())
        if finite.size:
            state.latency_count += int(finite.size) * weight
            state.latency_sum += float(finite.sum()) * weight
            state.latency_max = max(state.latency_max, float(finite.max()))

    def observe_freshness(self, model: Attributes, ages_s: np.ndarray, weight: int) -> None:
        """The ages (seconds) of one exchange's event times; negative ones (the future) count as 0."""
        state = self._models.get(model)
        future = int(np.count_nonzero(ages_s < 0))
        if future:
            state.freshness_future += future * weight
            ages_s = np.maximum(ages_s, 0.0)
        if ages_s.size:
            state.freshness.add(ages_s, weight, self._clock())

    # ---- features -----------------------------------------------------------------------

    def _summary(self, state: _ModelState, role: str, name: str) -> FeatureSummary | None:
        """The feature's summary, created within the caps; None = not tracked (see StateCaps)."""
        summary = state.features.get((role, name))
        if summary is not None:
            return summary
        expected = self._expected_by_role.get(role, {})
        known = expected.get(name)
        if known is None:
            if expected and role == "input":
                return None  # the reference lists the inputs: this one is a schema violation
            if len(name) > self._caps.max_name_chars:
                return None  # counted as untracked, a schema violation
            cap = self._caps.max_features if role == "input" else self._caps.max_outputs
            if state.unlisted.get(role, 0) >= cap:
                return None
            state.unlisted[role] = state.unlisted.get(role, 0) + 1
        summary = state.features[(role, name)] = FeatureSummary(
            name,
            role,
            kind=known.kind if known is not None else None,
            vocabulary=known.vocabulary if known is not None and known.kind == "categorical" else (),
            expose_values=self._caps.expose_values,
        )
        return summary

    def _schema_violations(self, role: str, names: Sequence[str]) -> int:
        """Inputs the reference does not list, plus listed inputs or outputs absent from the
        payload (an output the reference does not list is the model's own, not a violation)."""
        expected = self._expected_by_role.get(role, {})
        if not expected or not names:
            return 0
        present = set(names)
        unknown = sum(1 for n in names if n not in expected) if role == "input" else 0
        return unknown + sum(1 for n in expected if n not in present)

    def _untracked(self, role: str, names: Iterable[str], tracked: int) -> int:
        """Names beyond the caps where no reference lists the role (schema violations)."""
        if self._expected_by_role.get(role) and role == "input":
            return 0  # counted as unknown names by `_schema_violations`
        return sum(1 for _ in names) - tracked

    def observe_matrix(
        self,
        model: Attributes,
        role: str,
        names: tuple[str, ...],
        matrix: np.ndarray,
        weight: int,
        exchanges: int = 1,
        accepted: bool = True,
    ) -> None:
        """A rows-by-features float matrix (NaN/inf = missing) decoded from `exchanges` exchanges.

        Moments are computed for all columns at once; only the hand-over is per feature. An
        exchange the model rejected (`accepted=False`: not a 2xx) has its data quality counted
        but never feeds summaries or drift windows.
        """
        expected = self._expected_by_role.get(role, {})
        rows = int(matrix.shape[0])
        finite = np.isfinite(matrix)
        counts = finite.sum(axis=0)
        missing = rows * len(names) - int(counts.sum())
        out_of_range = 0
        for j, name in enumerate(names):
            feature = expected.get(name)
            if (
                feature is not None
                and feature.kind == "numeric"
                and (feature.min is not None or feature.max is not None)
            ):
                column = matrix[:, j]
                low = -math.inf if feature.min is None else feature.min
                high = math.inf if feature.max is None else feature.max
                # Finite values only: ±inf is missing (counted above), never out of range too.
                outside = (column < low) | (column > high)
                out_of_range += int(np.count_nonzero(outside & finite[:, j]))
        untracked = 0
        if accepted:
            untracked = self._add_matrix(model, role, names, matrix, weight, finite, counts)
        for reason, count in (
            ("missing", missing),
            ("out_of_range", out_of_range),
            ("schema", (self._schema_violations(role, names) + untracked) * exchanges),
        ):
            if count:
                self.count_violation(model, reason, count * weight)

    def _add_matrix(
        self,
        model: Attributes,
        role: str,
        names: tuple[str, ...],
        matrix: np.ndarray,
        weight: int,
        finite: np.ndarray,
        counts: np.ndarray,
    ) -> int:
        """Feed an accepted matrix to the state; returns the names beyond the caps."""
        state = self._models.get(model)
        rows = int(matrix.shape[0])
        if role == "input":
            state.decoded_rows += rows * weight
        if state.drift is not None:
            state.drift.add_matrix(role, names, matrix, weight, self._clock())
        # Each column's mean and sum of squared deviations from it (not the sum of squares,
        # which cancels for values far from 0); a column without numbers has mean 0.
        clean = np.where(finite, matrix, 0.0)
        means = np.divide(clean.sum(axis=0), counts, out=np.zeros(matrix.shape[1]), where=counts > 0)
        deviations = np.where(finite, matrix - means, 0.0)
        m2s = np.einsum("ij,ij->j", deviations, deviations)
        lows = np.where(finite, matrix, np.inf).min(axis=0)
        highs = np.where(finite, matrix, -np.inf).max(axis=0)
        tracked = 0
        for j, name in enumerate(names):
            summary = self._summary(state, role, name)
            if summary is None:
                continue
            tracked += 1
            if summary.kind == "categorical":
                # Class labels: numbers the reference lists as categories ("0", "1").
                present = finite[:, j]
                summary.add(
                    [float(v) if ok else None for v, ok in zip(matrix[:, j], present, strict=True)], weight
                )
                continue
            n = int(counts[j])
            summary.add_moments(
                n, rows - n, float(means[j]), float(m2s[j]), float(lows[j]), float(highs[j]), weight
            )
            if role == "output":
                self._rolling(state, name, matrix[:, j])
        return self._untracked(role, names, tracked)

    def _rolling(self, state: _ModelState, name: str, values: np.ndarray) -> None:
        tail = state.rolling.get(name)
        if tail is None:
            tail = state.rolling[name] = RollingMean()  # outputs are capped, so is this
        tail.add(values)

    def observe_columns(
        self,
        model: Attributes,
        role: str,
        columns: Mapping[str, list[Value]],
        weight: int,
        accepted: bool = True,
    ) -> None:
        """The general path: columns of mixed Python values from one exchange (see
        `observe_matrix` for `accepted`)."""
        expected = self._expected_by_role.get(role, {})
        wrong_type = out_of_range = untracked = 0
        for name, values in columns.items():
            feature = expected.get(name)
            if feature is not None and feature.kind == "numeric":
                low = -math.inf if feature.min is None else feature.min
                high = math.inf if feature.max is None else feature.max
                out_of_range += sum(1 for v in values if isinstance(v, float) and (v < low or v > high))
        if accepted:
            wrong_type, untracked = self._add_columns(model, role, columns, weight)
        else:
            # No state to learn a kind from: judge by what the reference says.
            for name, values in columns.items():
                feature = expected.get(name)
                if feature is not None and feature.kind == "numeric":
                    wrong_type += sum(1 for v in values if v is not None and not isinstance(v, float))
        for reason, count in (
            ("type", wrong_type),
            ("out_of_range", out_of_range),
            ("schema", self._schema_violations(role, list(columns)) + untracked),
        ):
            if count:
                self.count_violation(model, reason, count * weight)

    def _add_columns(
        self, model: Attributes, role: str, columns: Mapping[str, list[Value]], weight: int
    ) -> tuple[int, int]:
        """Feed accepted columns to the state; returns (type violations, names beyond the caps)."""
        state = self._models.get(model)
        if role == "input" and columns:
            state.decoded_rows += len(next(iter(columns.values()))) * weight
        if state.drift is not None:
            state.drift.add_columns(role, columns, weight, self._clock())
        wrong_type = tracked = 0
        for name, values in columns.items():
            summary = self._summary(state, role, name)
            if summary is None:
                continue
            tracked += 1
            wrong_type += summary.add(values, weight)
            if role == "output" and summary.kind == "numeric":
                numbers = np.array([v if isinstance(v, float) else np.nan for v in values], dtype=np.float64)
                self._rolling(state, name, numbers)
        return wrong_type, self._untracked(role, columns, tracked)

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
                start_unix_ns=self._durations.created_unix_ns(attrs),
            )
            for attrs, h in self._durations.items()
        )

    def violation_points(self) -> tuple[CounterPoint, ...]:
        table = self._violations
        return tuple(
            CounterPoint(attrs, float(v[0]), table.created_unix_ns(attrs)) for attrs, v in table.items()
        )

    def drop_points(self) -> tuple[CounterPoint, ...]:
        table = self._drops
        return tuple(
            CounterPoint(attrs, float(v[0]), table.created_unix_ns(attrs)) for attrs, v in table.items()
        )

    def _freshness(
        self, state: _ModelState, now: float
    ) -> tuple[int, float | None, float | None, float | None, int, int] | None:
        """(rows, p50, p95, max, rows in the future, level) of the window's event-time ages."""
        sketch = state.freshness.merged(now)
        if not sketch.count and not state.freshness_future:
            return None
        p50, p95 = sketch.quantiles((0.5, 0.95))
        level = freshness_level(p95, self._freshness_bound, int(sketch.count))
        return int(sketch.count), p50, p95, sketch.max, state.freshness_future, int(level)

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
            for (role, name), feature_scores in scores.items():
                if (role, name) not in seen:
                    known = self._expected_by_role[role][name]
                    unseen = FeatureSummary(name, role, kind=known.kind)
                    features.append(_feature_view(unseen, feature_scores))
            p50, p95, p99, window_max = state.latency_window.summary(now)
            latency_level, error_level = state.history.levels(now, self._thresholds.sigma_k)
            freshness = self._freshness(state, now)
            stale = Level(freshness[5]) if freshness is not None else Level.OK
            views.append(
                ModelView(
                    name=str(values.get(MODEL_NAME, "")),
                    version=str(values.get(MODEL_VERSION, "")),
                    requests=state.requests,
                    errors=state.errors,
                    client_disconnected=state.client_disconnected,
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
                    requests_per_s=state.rate.rate(now),
                    freshness=freshness,
                    cold_requests=state.cold_requests,
                    cold_latency_p50_s=state.cold_latency.quantiles((0.5,))[0]
                    if state.cold_requests
                    else None,
                    level=int(
                        overall_level(
                            [*(Level(f.level) for f in features), latency_level, error_level, stale]
                        )
                    ),
                )
            )
            views[-1] = state.score_history.attach(views[-1], now)
        return tuple(views)


def _owned_by(key: Attributes, model: Attributes) -> bool:
    """Whether a series key carries both attributes of a model identity."""
    return model[0] in key and model[1] in key


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
        psi_noise_floor=scores.psi_noise_floor,
        cumulative_counts=scores.cumulative,
        window_counts=scores.window,
        reference_counts=scores.reference,
        bounds=scores.bounds,
        categories=scores.categories,
    )
