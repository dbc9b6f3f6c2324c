"""Ground truth: predictions joined to the labels fed back later, and the performance they give.

The worker hands each answered row's prediction here with its join key (the request id and the
row, or the value of the `label_key` input column); a feedback request hands labels. A label
meets its prediction in the `JoinStore`; the pair lands in the performance counts of the model
version that made the prediction, over the drift window (tumbling slots) and cumulatively.

What is a class and what is a number comes from the reference, never from the client: the
label feature (role `label`, `modeltap profile --target`) or else the prediction output says
whether the model classifies (the vocabularies are the classes; anything else is `__other__`)
or regresses. Without either there is nothing to judge, and feedback is refused.

Thread-safe: the worker adds predictions while feedback requests add labels from the server's
event loop; one lock guards the store and the counts (held for microseconds per call).
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modeltap.reference.calibration import Calibration
from modeltap.reference.document import ReferenceProfile, canonical_category
from modeltap.snapshot import PerformanceSummary
from modeltap.stats.cbpe import ExpectedConfusion, estimated_metrics
from modeltap.stats.join_store import Joined, JoinStore, Prediction
from modeltap.stats.performance import (
    BinaryScores,
    ClassificationMetrics,
    ConfusionCounts,
    RankingCounts,
    RankingMetrics,
    RegressionCounts,
    RegressionMetrics,
    binary_score_metrics,
    classification_metrics,
    ranking_metrics,
    regression_metrics,
    residual_bounds,
)
from modeltap.stats.performance_level import PerformanceThresholds, performance_level
from modeltap.stats.recent_names import RecentNames
from modeltap.stats.slot_ring import SlotRing

Counts = ConfusionCounts | RegressionCounts | RankingCounts
Numbers = tuple[tuple[str, float | None], ...]  # metric name -> value
Value = str | float | int | bool | None | tuple[str | float, ...]
MAX_PENDING_LABELS = 100_000
FIRST_LABELS_BASELINE = 100
"""Without a reference baseline, the accuracy of this many first joined labels is the baseline."""


@dataclass(frozen=True)
class LabelOutcome:
    """What became of one label: `joined`, `waiting` (its prediction has not come yet),
    `duplicate`, or a rejection reason (`conflict`, `bad_label`)."""

    status: str


def _kind(reference: ReferenceProfile | None) -> tuple[str | None, tuple[str, ...], str | None]:
    """(kind, classes, the output that is the prediction) from the reference."""
    if reference is None:
        return None, (), None
    labels = [f for f in reference.features if f.role == "label"]
    score = reference.performance.score_column if reference.performance is not None else None
    outputs = [f for f in reference.features if f.role == "output" and f.name != score]
    prediction = next((f for f in outputs if f.name == "prediction"), outputs[0] if outputs else None)
    source = labels[0] if labels else prediction
    if source is None:
        return None, (), None
    if source.kind == "categorical":
        classes = list(source.vocabulary)
        if prediction is not None and prediction.kind == "categorical":
            classes += [c for c in prediction.vocabulary if c not in classes]
        return "classification", tuple(classes), prediction.name if prediction else None
    return "regression", (), prediction.name if prediction else None


class _Slots:
    """Per-slot performance counts over a tumbling window, plus the cumulative counts."""

    def __init__(
        self,
        kind: str,
        classes: tuple[str, ...],
        slots: int,
        slot_s: float,
        positive: str | None = None,
        segmented: bool = True,
        residual_bounds: tuple[float, ...] = (),
        ranking_k: int = 10,
    ) -> None:
        self.kind = kind
        self.classes = classes
        self.slots = slots
        self.slot_s = slot_s
        self.positive = positive  # the class a score is the probability of (binary scores)
        self.residual_bounds = residual_bounds
        self.ranking_k = ranking_k
        self.ring: SlotRing[Counts] = SlotRing(self._new, slots, slot_s)
        self.total = self._new()
        self.scores = SlotRing(BinaryScores, slots, slot_s)
        self.scores_total = BinaryScores()
        # Expected confusion (CBPE) of every scored prediction, labelled or not.
        self.expected = SlotRing(ExpectedConfusion, slots, slot_s)
        # Per segment (bounded by the reference's vocabulary); a segment's own counts are not split.
        self.segmented = segmented
        self.segments: dict[str, _Slots] = {}
        self.delays: list[float] = []
        # Without a reference baseline, the first labels joined are the baseline.
        self.first_hits = 0
        self.first_labels = 0

    def _new(self) -> Counts:
        if self.kind == "classification":
            return ConfusionCounts(self.classes)
        if self.kind == "ranking":
            return RankingCounts(self.ranking_k)
        return RegressionCounts(self.residual_bounds)

    def add(self, joined: Joined, now: float) -> bool:
        segment = joined.prediction.segment
        if segment is not None and self.segmented:
            inner = self.segments.get(segment)
            if inner is None:
                inner = _Slots(self.kind, self.classes, self.slots, self.slot_s, segmented=False)
                self.segments[segment] = inner
            inner.add(joined, now)
        current = self.ring.current(now)
        if isinstance(current, RankingCounts):
            ranked = joined.prediction.predicted
            relevant = _relevant(joined.label)
            if not isinstance(ranked, tuple) or not relevant:
                return False
            for counts in (current, self.total):
                assert isinstance(counts, RankingCounts)
                counts.add(ranked, relevant)
        elif isinstance(current, ConfusionCounts):
            true = canonical_category(joined.label)
            predicted = canonical_category(joined.prediction.predicted)
            if true is None or predicted is None:
                return False
            for counts in (current, self.total):
                assert isinstance(counts, ConfusionCounts)
                counts.add_one(true, predicted)
            if self.first_labels < FIRST_LABELS_BASELINE:
                self.first_labels += 1
                self.first_hits += int(true == predicted)
            score = joined.prediction.score
            if score is not None and self.positive is not None:
                for scores in (self.scores.current(now), self.scores_total):
                    scores.add_one(true == self.positive, score)
        else:
            label, predicted_value = _number(joined.label), _number(joined.prediction.predicted)
            if label is None or predicted_value is None:
                return False
            for counts in (current, self.total):
                assert isinstance(counts, RegressionCounts)
                counts.add_one(label, predicted_value)
        self.delays.append(joined.delay_s)
        if len(self.delays) > 2048:
            del self.delays[:1024]
        return True

    def window(self, now: float) -> Counts:
        return self.ring.window(now, _merge_counts)


def _number(value: Value) -> float | None:
    if isinstance(value, (bool, tuple)) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class GroundTruth:
    """Join and performance state for every model version. See the module notes."""

    def __init__(
        self,
        reference: ReferenceProfile | None,
        *,
        slots: int,
        slot_s: float,
        store: JoinStore | None = None,
        max_versions: int = 64,
        default_model: str | None = None,
        segment_feature: str | None = None,
        ranking_k: int | None = None,
    ) -> None:
        self.reference = reference
        self.kind, self.classes, self.prediction_output = _kind(reference)
        self.ranking_k = ranking_k or 10
        if ranking_k is not None:  # a ranker: each answer is a ranked list, whatever the reference
            self.kind, self.classes = "ranking", ()
        performance = reference.performance if reference is not None else None
        # The reference's accuracy on its (validation) rows, when it has one.
        self.baseline = (
            (performance.hits, performance.labels)
            if performance is not None
            and performance.kind == "classification"
            and performance.hits is not None
            else None
        )
        self.thresholds = PerformanceThresholds()
        label = next((f for f in reference.features if f.role == "label"), None) if reference else None
        self.residual_bounds = residual_bounds(
            label.std if label is not None and label.kind == "numeric" else None
        )
        # A binary classifier's score (profiled with --score): its output, positive class and
        # calibration, for AUC, log loss, Brier and the estimate before labels (CBPE).
        has_score = performance is not None and performance.score_column is not None
        self.score_output = performance.score_column if has_score and performance else None
        self.positive_class = performance.positive_class if has_score and performance else None
        self.calibration = (
            Calibration(
                performance.calibration_edges, performance.calibration_rates, performance.calibration_centers
            )
            if has_score and performance
            else None
        )
        self.slots = slots
        self.slot_s = slot_s
        self.store = store or JoinStore()
        self.max_versions = max_versions
        # The model a label without `model_name` belongs to: the configured (or only) model.
        self.default_model = default_model
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], _Slots] = {}
        self._models = RecentNames(self.store.ttl_s)  # unnamed labels go to the only one
        # Joined labels for the label distribution's drift (prior shift), handed to the worker
        # that owns the drift state; bounded (older ones dropped, counted) if it falls behind.
        self.label_feature = (
            next((f.name for f in reference.features if f.role == "label"), None)
            if reference is not None
            else None
        )
        self._for_drift: deque[tuple[str, str, Value]] = deque()
        # Segments come from the reference's vocabulary of a categorical input only.
        segment = reference.feature("input", segment_feature) if reference and segment_feature else None
        self.segment_feature = segment.name if segment is not None and segment.kind == "categorical" else None
        self.segment_values = frozenset(segment.vocabulary) if segment is not None else frozenset()

    @property
    def enabled(self) -> bool:
        return self.kind is not None

    def add_predictions(
        self,
        model: str,
        version: str,
        keys: Sequence[Hashable | None],
        predictions: Sequence[Value],
        now: float,
        scores: Sequence[Value] | None = None,
        segments: Sequence[Value] | None = None,
    ) -> None:
        """One exchange's rows: `keys[i]` joins row i (None: it cannot be joined, counted);
        `scores[i]`, when the model answers one, is row i's positive-class probability."""
        if not self.enabled:
            return
        with self._lock:
            self._models.add(model, now)
            positive: list[bool] = []
            raw_scores: list[float] = []
            for row, (key, predicted) in enumerate(zip(keys, predictions, strict=False)):
                value: str | float | int | tuple[str, ...] | None
                if isinstance(predicted, (list, tuple)):
                    value = _relevant(predicted)
                else:
                    value = predicted if isinstance(predicted, (str, float, int)) else None
                score = _probability(scores[row]) if scores is not None and row < len(scores) else None
                if score is not None and self.calibration is not None and value is not None:
                    raw_scores.append(score)
                    positive.append(canonical_category(value) == self.positive_class)
                raw_segment = segments[row] if segments is not None and row < len(segments) else None
                segment = self._segment(raw_segment)
                if key is None:
                    self.counts["no_join_key"] += 1
                    continue
                joined = self.store.add_prediction(
                    (model, key),
                    Prediction(model, version, value, score=score, segment=segment, created_s=now),
                    now,
                )
                if joined is not None:
                    self._record(joined, now)
            if raw_scores and self.calibration is not None:
                # The expected confusion (CBPE) of the exchange's scored rows, in one numpy step.
                slots = self._slots(model, version)
                if slots is not None:
                    values = np.asarray(raw_scores)
                    calibrated_values = self.calibration.apply(values)
                    slots.expected.current(now).add(calibrated_values, np.asarray(positive), values)

    def add_label(self, model: str | None, key: Hashable, label: Value, now: float) -> LabelOutcome:
        if not self.enabled:
            return LabelOutcome("not_enabled")
        if isinstance(label, tuple) and self.kind != "ranking":
            return LabelOutcome("bad_label")  # a list of relevant items is a ranker's label
        if label is None or (self.kind == "regression" and _number(label) is None):
            return LabelOutcome("bad_label")
        with self._lock:
            name = model if model is not None else self._only_model(now)
            if name is None:
                return LabelOutcome("unknown_model")
            joined = self.store.add_label((name, key), _stored_label(label), now)
            if isinstance(joined, str):  # early labels wait for their prediction
                return LabelOutcome("waiting" if joined == "early" else joined)
            self._record(joined, now)
            return LabelOutcome("joined")

    def _only_model(self, now: float) -> str | None:
        if self.default_model is not None:
            return self.default_model
        return self._models.only(now)

    def _segment(self, value: Value) -> str | None:
        if self.segment_feature is None:
            return None
        text = canonical_category(value)
        if text is None:
            return "__missing__"
        return text if text in self.segment_values else "__other__"

    def _slots(self, model: str, version: str) -> _Slots | None:
        slots = self._versions.get((model, version))
        if slots is None:
            if len(self._versions) >= self.max_versions:
                self.counts["over_version_cap"] += 1
                return None
            assert self.kind is not None
            slots = _Slots(
                self.kind,
                self.classes,
                self.slots,
                self.slot_s,
                self.positive_class,
                residual_bounds=self.residual_bounds,
                ranking_k=self.ranking_k,
            )
            self._versions[(model, version)] = slots
        return slots

    def _record(self, joined: Joined, now: float) -> None:
        slots = self._slots(joined.prediction.model, joined.prediction.version)
        if slots is not None and not slots.add(joined, now):
            self.counts["unusable_label"] += 1
        if self.label_feature is not None:
            if len(self._for_drift) >= MAX_PENDING_LABELS:
                self._for_drift.popleft()
                self.counts["label_drift_dropped"] += 1
            self._for_drift.append((joined.prediction.model, joined.prediction.version, joined.label))

    def drain_labels(self) -> dict[tuple[str, str], list[Value]]:
        """Joined labels since the last call, by model and version (for the drift state)."""
        with self._lock:
            pending, self._for_drift = self._for_drift, deque()
        grouped: dict[tuple[str, str], list[Value]] = {}
        for model, version, label in pending:
            grouped.setdefault((model, version), []).append(label)
        return grouped

    def views(self, now: float) -> tuple[PerformanceSummary, ...]:
        with self._lock:
            self.store.expire(now)
            return tuple(
                self._view(model, version, slots, now)
                for (model, version), slots in sorted(self._versions.items())
            )

    def _view(self, model: str, version: str, slots: _Slots, now: float) -> PerformanceSummary:
        window = slots.window(now)
        total = slots.total
        window_labels, window_numbers = _labels_and_numbers(window)
        total_labels, total_numbers = _labels_and_numbers(total)
        extra: dict[str, Any] = {}
        if isinstance(window, ConfusionCounts) and isinstance(total, ConfusionCounts):
            source, (base_hits, base_n) = self._baseline(slots)
            level = (
                performance_level(
                    base_hits, base_n, int(np.trace(window.matrix)), window.total, self.thresholds
                )
                if source != "none"
                else 0
            )
            scores = slots.scores_total
            window_numbers += _score_numbers(slots.scores.window(now, BinaryScores.merge))
            total_numbers += _score_numbers(scores)
            extra = {
                "estimated": _estimated(slots.expected.window(now, ExpectedConfusion.merge)),
                "per_class": _per_class(classification_metrics(window)),
                "level": int(level),
                "baseline_source": source,
                "baseline_accuracy": base_hits / base_n if base_n else None,
                "baseline_labels": base_n,
                "confusion": _cells(total),
            }
            if scores.count:
                extra["score_bounds"] = tuple(float(b) for b in scores.edges)
                extra["score_counts"] = (
                    ("true", tuple(int(c) for c in scores.positive)),
                    ("false", tuple(int(c) for c in scores.negative)),
                )
        elif isinstance(total, RegressionCounts):
            extra = {
                "regression_sums": _sums(total),
                "residual_bounds": total.bounds,
                "residual_counts": tuple(int(c) for c in total.residuals),
            }
        return PerformanceSummary(
            model,
            version,
            slots.kind,
            window_labels,
            total_labels,
            window=window_numbers,
            total=total_numbers,
            segments=_segment_numbers(slots, now),
            label_delay_p50_s=float(np.median(slots.delays)) if slots.delays else None,
            **extra,
        )

    def _baseline(self, slots: _Slots) -> tuple[str, tuple[int, int]]:
        if self.baseline is not None:
            return "reference", self.baseline
        if slots.first_labels >= FIRST_LABELS_BASELINE:
            return "first_labels", (slots.first_hits, slots.first_labels)
        return "none", (0, 0)

    def counts_rejected(self, count: int) -> None:
        """Labels a feedback request rejected before any join (bad items, unknown keys)."""
        if count:
            with self._lock:
                self.counts["rejected"] += count

    def label_counts(self) -> dict[str, int]:
        """Every label's fate so far (joined, duplicate, conflict, early, unmatched, expired,
        evicted) and the predictions that could not be joined (`no_join_key`)."""
        with self._lock:
            return dict(self.store.counts + self.counts)


def _classification_numbers(metrics: ClassificationMetrics | None) -> Numbers:
    if metrics is None:
        return ()
    return (
        ("accuracy", metrics.accuracy),
        ("macro_precision", metrics.macro_precision),
        ("macro_recall", metrics.macro_recall),
        ("macro_f1", metrics.macro_f1),
    )


def _per_class(
    metrics: ClassificationMetrics | None,
) -> tuple[tuple[str, tuple[tuple[str, float], ...]], ...]:
    if metrics is None:
        return ()
    return tuple(
        (
            name,
            (("precision", m.precision), ("recall", m.recall), ("f1", m.f1), ("support", float(m.support))),
        )
        for name, m in metrics.per_class.items()
    )


def _regression_numbers(metrics: RegressionMetrics | None) -> Numbers:
    if metrics is None:
        return ()
    return (("mae", metrics.mae), ("rmse", metrics.rmse), ("r2", metrics.r2))


def _cells(counts: ConfusionCounts) -> tuple[tuple[str, str, int], ...]:
    rows, cols = np.nonzero(counts.matrix)
    return tuple(
        (counts.classes[r], counts.classes[c], int(counts.matrix[r, c]))
        for r, c in zip(rows, cols, strict=True)
    )


def _sums(counts: RegressionCounts) -> tuple[float, float, float, float, float]:
    n = counts.count
    label_sum = counts.label_mean * n
    return (
        float(n),
        counts.abs_error_sum,
        counts.sq_error_sum,
        label_sum,
        counts.label_m2 + n * counts.label_mean * counts.label_mean,
    )


def _probability(value: Value) -> float | None:
    number = _number(value)
    return number if number is not None and 0.0 <= number <= 1.0 else None


def _score_numbers(scores: BinaryScores) -> Numbers:
    metrics = binary_score_metrics(scores)
    if metrics is None:
        return ()
    return (
        ("auc", metrics.auc),
        ("auc_bound", metrics.auc_bound),
        ("log_loss", metrics.log_loss),
        ("brier", metrics.brier),
    )


def _estimated(expected: ExpectedConfusion) -> Numbers:
    metrics = estimated_metrics(expected)
    if metrics is None:
        return ()
    return (
        ("predictions", float(metrics.count)),
        ("accuracy", metrics.accuracy),
        ("precision", metrics.precision),
        ("recall", metrics.recall),
        ("auc", metrics.auc),
    )


def _labels_and_numbers(counts: Counts) -> tuple[int, Numbers]:
    """How many labels the counts hold, and their metrics (by the model's kind)."""
    if isinstance(counts, ConfusionCounts):
        return counts.total, _classification_numbers(classification_metrics(counts))
    if isinstance(counts, RankingCounts):
        return counts.queries, _ranking_numbers(ranking_metrics(counts))
    return counts.count, _regression_numbers(regression_metrics(counts))


def _segment_numbers(slots: _Slots, now: float) -> tuple[tuple[str, Numbers], ...]:
    out: list[tuple[str, Numbers]] = []
    for name, inner in sorted(slots.segments.items()):
        labels, numbers = _labels_and_numbers(inner.window(now))
        out.append((name, (("labels", float(labels)), *numbers)))
    return tuple(out)


def _relevant(label: object) -> tuple[str, ...]:
    items = label if isinstance(label, (list, tuple)) else (label,)
    return tuple(c for c in (canonical_category(item) for item in items) if c is not None)


def _ranking_numbers(metrics: RankingMetrics | None) -> Numbers:
    if metrics is None:
        return ()
    return (("mrr", metrics.mrr), ("ndcg", metrics.ndcg), ("k", float(metrics.k)))


def _stored_label(label: Value) -> str | float | tuple[str, ...]:
    """A label as the join store keeps it: relevant items of a ranking as canonical texts,
    booleans as their category ("true"/"false"), numbers as floats."""
    if isinstance(label, tuple):
        return _relevant(label)
    if isinstance(label, bool) or label is None:
        return canonical_category(label) or ""
    if isinstance(label, int):
        return float(label)
    return label


def _merge_counts(into: Counts, other: Counts) -> None:
    """Add `other` to `into` (of one kind: a version's slots all hold the same kind)."""
    # One branch per kind, so the type checker knows each merge's types.
    if isinstance(into, ConfusionCounts) and isinstance(other, ConfusionCounts):  # noqa: SIM114
        into.merge(other)
    elif isinstance(into, RegressionCounts) and isinstance(other, RegressionCounts):  # noqa: SIM114
        into.merge(other)
    elif isinstance(into, RankingCounts) and isinstance(other, RankingCounts):
        into.merge(other)
