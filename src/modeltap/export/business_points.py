"""The business outcomes of a snapshot as metric points, shared by the OTLP and Prometheus views.

Counts and sums are cumulative and summable across replicas (a fleet's conversion rate is the sum
of conversions over the sum of exposures); the figures, the revenue impact and the level are
per-replica gauges, as the drift scores are.
"""

from __future__ import annotations

from dataclasses import dataclass

from modeltap.snapshot import Attributes, CounterPoint, Snapshot

Rows = list[tuple[Attributes, float]]


@dataclass(frozen=True)
class CounterSeries:
    name: str
    description: str
    unit: str
    points: tuple[CounterPoint, ...]
    monotonic: bool = True
    whole: bool = True


def _model(model: str, version: str) -> Attributes:
    return (("modeltap.model.name", model), ("modeltap.model.version", version))


def business_counters(snap: Snapshot) -> list[CounterSeries]:
    """Exposures, outcomes and outcome value sums per model version, and every outcome's fate."""
    exposures: list[CounterPoint] = []
    outcomes: list[CounterPoint] = []
    sums: list[CounterPoint] = []
    for summary in snap.business:
        attrs = _model(summary.model, summary.version)
        exposures.append(CounterPoint(attrs, float(summary.total.exposures)))
        for name, count, total, _ in summary.total.sums:
            named = (*attrs, ("modeltap.outcome.name", name))
            outcomes.append(CounterPoint(named, float(count)))
            sums.append(CounterPoint(named, total))
    fates = tuple(CounterPoint((("modeltap.outcome.result", r),), float(n)) for r, n in snap.outcomes)
    series = [
        CounterSeries(
            "modeltap.business.exposures",
            "Answered rows business outcomes can join (the traffic of the revenue impact).",
            "{row}",
            tuple(exposures),
        ),
        CounterSeries(
            "modeltap.business.outcomes",
            "Business outcomes joined to their answered rows, by outcome name.",
            "{outcome}",
            tuple(outcomes),
        ),
        CounterSeries(
            "modeltap.business.outcome.value",
            "Sum of the joined outcomes' values, by outcome name (conversions; order value).",
            "1",
            tuple(sums),
            monotonic=False,  # an order value may be a refund
            whole=False,
        ),
        CounterSeries(
            "modeltap.outcomes",
            "Business outcomes fed back, by what became of them (joined, duplicate, conflict, early, "
            "unmatched, rejected; no_join_key, expired and evicted count answered rows).",
            "{outcome}",
            fates,
        ),
    ]
    return [s for s in series if s.points]


def business_gauges(snap: Snapshot) -> list[tuple[str, str, str, Rows]]:
    """(name, description, unit, rows): window figures, revenue impact and level per version."""
    figures: Rows = []
    impact: Rows = []
    levels: Rows = []
    for summary in snap.business:
        attrs = _model(summary.model, summary.version)
        for name, value in summary.window_figures:
            if value is not None:
                figures.append(((*attrs, ("modeltap.business.figure", name)), value))
        revenue = summary.revenue_impact
        if revenue is not None:
            for estimate, value in (
                ("value", revenue.value),
                ("ci_low", revenue.ci_low),
                ("ci_high", revenue.ci_high),
            ):
                impact.append(((*attrs, ("modeltap.estimate", estimate)), value))
        levels.append((attrs, float(summary.level)))
    table = [
        (
            "modeltap.business.figure",
            "Window business figures (conversion_rate, average_order_value, revenue_per_prediction, "
            "outcomes_per_request; per replica).",
            "1",
            figures,
        ),
        (
            "modeltap.business.revenue_impact",
            "Revenue impact over the window against the baseline, with its 95 % interval (per replica).",
            "1",
            impact,
        ),
        ("modeltap.business.level", "Business level: 0 OK, 4 EMERGENCY.", "{level}", levels),
    ]
    return [row for row in table if row[3]]
