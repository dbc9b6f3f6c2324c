"""The drift numbers of a snapshot as metric points, shared by the OTLP and Prometheus views."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from modeltap.snapshot import Attributes, CounterPoint, HistogramPoint, Snapshot

Rows = list[tuple[Attributes, float]]


@dataclass
class DriftPoints:
    histograms: list[HistogramPoint] = field(default_factory=list)
    missing: list[CounterPoint] = field(default_factory=list)
    categories: list[CounterPoint] = field(default_factory=list)
    confusion: list[CounterPoint] = field(default_factory=list)
    score_histograms: list[HistogramPoint] = field(default_factory=list)
    residuals: list[HistogramPoint] = field(default_factory=list)
    regression: list[CounterPoint] = field(default_factory=list)
    labels: list[CounterPoint] = field(default_factory=list)
    performance_levels: Rows = field(default_factory=list)
    accuracy: Rows = field(default_factory=list)
    alerts: Rows = field(default_factory=list)
    scores: Rows = field(default_factory=list)
    pvalues: Rows = field(default_factory=list)
    levels: Rows = field(default_factory=list)
    quantiles: Rows = field(default_factory=list)

    def gauges(self) -> Iterator[tuple[str, str, str, Rows]]:
        """(name, description, unit, rows) of every non-empty gauge."""
        table = (
            (
                "modeltap.drift.score",
                "Window drift score against the reference (per replica).",
                "1",
                self.scores,
            ),
            (
                "modeltap.drift.pvalue",
                "Window test p-value against the reference (per replica).",
                "1",
                self.pvalues,
            ),
            ("modeltap.drift.level", "Alert level: 0 OK, 1 INFO, 2 WARNING, 3 CRITICAL.", "1", self.levels),
            ("modeltap.latency.quantile", "Window latency quantiles from a 1 % sketch.", "s", self.quantiles),
            (
                "modeltap.performance.level",
                "Realised-performance level against the baseline: 0 OK, 2 WARNING, 3 CRITICAL.",
                "{level}",
                self.performance_levels,
            ),
            (
                "modeltap.alerts.firing",
                "Firing alerts, by severity and subject (1 while firing).",
                "{alert}",
                self.alerts,
            ),
            (
                "modeltap.performance.accuracy",
                "Window accuracy of joined labels (per replica; sum the confusion counts for the fleet).",
                "1",
                self.accuracy,
            ),
        )
        return (row for row in table if row[3])


def drift_points(snap: Snapshot) -> DriftPoints:
    points = DriftPoints()
    reference: Attributes = (("modeltap.reference.id", snap.reference_id),) if snap.reference_id else ()
    for model in snap.models:
        model_attrs: Attributes = (
            ("modeltap.model.name", model.name),
            ("modeltap.model.version", model.version),
        )
        for quantile, value in (
            ("0.5", model.latency_p50_s),
            ("0.95", model.latency_p95_s),
            ("0.99", model.latency_p99_s),
        ):
            if value is not None:
                points.quantiles.append(((*model_attrs, ("modeltap.quantile", quantile)), value))
        if any(f.monitored for f in model.features):
            points.levels.append(((*model_attrs, *reference), float(model.level)))
        for feature in model.features:
            attrs: Attributes = (
                *model_attrs,
                ("modeltap.feature.name", feature.name),
                ("modeltap.feature.role", feature.role),
                *reference,
            )
            if not feature.monitored:
                # A name no reference lists came from payloads: shown locally, never an attribute.
                continue
            points.missing.append(CounterPoint(attrs, float(feature.missing)))
            points.levels.append((attrs, float(feature.level)))
            if feature.bounds and feature.cumulative_counts:
                counts = feature.cumulative_counts
                points.histograms.append(
                    HistogramPoint(attrs, feature.bounds, counts, sum(counts), None, None, None)
                )
            elif feature.categories and len(feature.cumulative_counts) == len(feature.categories):
                # The reference vocabulary plus __other__ and __missing__: values the reference
                # vouches for, so they may be attributes (a backend sums them across replicas).
                points.categories.extend(
                    CounterPoint((*attrs, ("modeltap.feature.category", category)), float(count))
                    for category, count in zip(feature.categories, feature.cumulative_counts, strict=True)
                )
            for method, value in (("psi", feature.psi), ("js", feature.js), ("ks", feature.ks_statistic)):
                if value is not None:
                    points.scores.append(((*attrs, ("modeltap.drift.method", method)), value))
            for test, value in (("ks", feature.ks_pvalue), ("chi2", feature.chi2_pvalue)):
                if value is not None:
                    points.pvalues.append(((*attrs, ("modeltap.drift.test", test)), value))
    for summary in snap.performance:
        attrs = (("modeltap.model.name", summary.model), ("modeltap.model.version", summary.version))
        for true, predicted, count in summary.confusion:
            points.confusion.append(
                CounterPoint(
                    (*attrs, ("modeltap.label.true", true), ("modeltap.label.predicted", predicted)), count
                )
            )
        for positive, counts in summary.score_counts:
            points.score_histograms.append(
                HistogramPoint(
                    (*attrs, ("modeltap.label.positive", positive)),
                    summary.score_bounds,
                    counts,
                    sum(counts),
                    None,
                    None,
                    None,
                )
            )
        if summary.residual_bounds and summary.residual_counts:
            counts = summary.residual_counts
            points.residuals.append(
                HistogramPoint(attrs, summary.residual_bounds, counts, sum(counts), None, None, None)
            )
        if summary.regression_sums is not None:
            for name, value in zip(REGRESSION_SUMS, summary.regression_sums, strict=True):
                points.regression.append(CounterPoint((*attrs, ("modeltap.performance.sum", name)), value))
        if summary.kind == "classification":
            points.performance_levels.append((attrs, float(summary.level)))
            accuracy = dict(summary.window).get("accuracy")
            if accuracy is not None:
                points.accuracy.append((attrs, accuracy))
    for alert in snap.alerts:
        if alert.state == "firing":
            points.alerts.append(
                (
                    (
                        ("modeltap.model.name", alert.model),
                        ("modeltap.model.version", alert.version),
                        ("modeltap.alert.severity", alert.severity),
                        ("modeltap.alert.subject", alert.subject),
                    ),
                    1.0,
                )
            )
    for outcome, count in snap.labels:
        points.labels.append(CounterPoint((("modeltap.label.outcome", outcome),), float(count)))
    return points


# Names of `PerformanceSummary.regression_sums`, in order.
REGRESSION_SUMS = ("labels", "abs_error", "squared_error", "label", "label_squared")
