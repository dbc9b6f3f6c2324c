"""Immutable snapshots: what the statistics hand to export (OTLP, /status, /metrics).

A leaf module so that `stats` (producer) and `export` (consumer) never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

AttributeValue = str | int | float | bool
Attributes = tuple[tuple[str, AttributeValue], ...]


@dataclass(frozen=True)
class HistogramPoint:
    """A cumulative explicit-bucket histogram series: counts[i] is the bucket (bounds[i-1], bounds[i]]."""

    attributes: Attributes
    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float | None  # None when values can be negative (OTLP asks to leave it unset then)
    min: float | None
    max: float | None


@dataclass(frozen=True)
class CounterPoint:
    attributes: Attributes
    value: float


@dataclass(frozen=True)
class FeatureView:
    """The running summary of one feature, input or output, for one model version."""

    name: str
    role: str  # input | output | label
    kind: str  # numeric | categorical
    count: int
    missing: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    top_categories: tuple[tuple[str, int], ...] = ()

    @property
    def missing_rate(self) -> float | None:
        total = self.count + self.missing
        return None if total == 0 else self.missing / total


@dataclass(frozen=True)
class ModelView:
    name: str
    version: str
    requests: int
    errors: int
    decoded_rows: int
    features: tuple[FeatureView, ...]
    latency_count: int
    latency_sum_s: float
    latency_max_s: float | None


@dataclass(frozen=True)
class SelfMonitoring:
    """Numbers that say whether the monitor itself can be trusted."""

    queue_depth: int = 0
    queue_bytes: int = 0
    worker_lag_s: float = 0.0
    sampling_stride: int = 1
    payload_sampling_stride: int = 1
    records_processed: int = 0
    internal_errors: tuple[tuple[str, int], ...] = ()
    export_failures: tuple[tuple[str, int], ...] = ()  # by signal
    last_export_unix_s: tuple[tuple[str, float], ...] = ()  # by signal, successful exports only
    spans_exported: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Everything exported at one instant; counts are cumulative since `start_unix_ns`."""

    taken_unix_ns: int
    start_unix_ns: int
    instance_id: str
    pid: int
    duration: tuple[HistogramPoint, ...] = ()
    dropped: tuple[CounterPoint, ...] = ()
    violations: tuple[CounterPoint, ...] = ()
    models: tuple[ModelView, ...] = ()
    monitoring: SelfMonitoring = field(default_factory=SelfMonitoring)
