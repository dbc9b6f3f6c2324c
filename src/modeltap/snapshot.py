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
    start_unix_ns: int = 0  # when this series started counting (0: the snapshot's start)


@dataclass(frozen=True)
class CounterPoint:
    attributes: Attributes
    value: float
    start_unix_ns: int = 0  # when this series started counting (0: the snapshot's start)


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
    # Categories shown by name: those of the reference's vocabulary.
    top_categories: tuple[tuple[str, int], ...] = ()
    # Categorical values outside the vocabulary: rows, distinct values (exact below the cap), and
    # only with `expose_values` the most frequent of them (truncated).
    unlisted_values: int = 0
    unlisted_distinct: int = 0
    unlisted_distinct_capped: bool = False
    unlisted_top: tuple[tuple[str, int], ...] = ()
    # Window scores against the reference (None when not computable: no reference, empty window).
    window_count: int = 0  # finite (numeric) or non-missing (categorical) values in the window
    window_missing: int = 0
    window_out_of_range: int = 0  # numeric: outside the reference range; categorical: new categories
    psi: float | None = None
    js: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    chi2_pvalue: float | None = None
    level: int = 0  # 0 OK, 1 INFO, 2 WARNING, 3 CRITICAL
    monitored: bool = False  # has a reference distribution
    missing_shift: float | None = None  # window missing rate minus the reference's
    missing_pvalue: float | None = None
    # PSI's noise floor tau over the window: the level compares PSI with max(threshold, tau).
    psi_noise_floor: float | None = None
    rolling_mean: float | None = None  # outputs: mean of the last 1000 values
    # Export of the distribution: cumulative counts over explicit bounds (numeric: the fine edges,
    # len(bounds) + 1 buckets) or over `categories` (categorical: vocabulary, __other__, __missing__).
    bounds: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    cumulative_counts: tuple[int, ...] = ()
    window_counts: tuple[int, ...] = ()
    reference_counts: tuple[int, ...] = ()

    @property
    def missing_rate(self) -> float | None:
        total = self.count + self.missing
        return None if total == 0 else self.missing / total

    @property
    def window_missing_rate(self) -> float | None:
        total = self.window_count + self.window_missing
        return None if total == 0 else self.window_missing / total

    @property
    def out_of_range_rate(self) -> float | None:
        return None if self.window_count == 0 else self.window_out_of_range / self.window_count


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """What a model version's view said at `unix_s`, the last snapshot of one history interval."""

    unix_s: float
    requests: int  # requests in this point's interval
    error_rate: float | None  # errors / requests in this point's interval
    latency_p50_s: float | None  # window quantiles at `unix_s`
    latency_p95_s: float | None
    latency_p99_s: float | None
    psi: tuple[float | None, ...]  # psi[j] of HistoryView.features[j]; shorter: not yet tracked


@dataclass(frozen=True)
class HistoryView:
    """A bounded history of what the status page plots, oldest point first; the last point is the
    interval in progress. Features are monitored ones only (named by the reference)."""

    interval_s: float
    features: tuple[str, ...]
    points: tuple[HistoryPoint, ...]


@dataclass(frozen=True)
class ModelView:
    name: str
    version: str
    requests: int
    errors: int  # 5xx answers and failures (a client that left is not counted here)
    decoded_rows: int
    features: tuple[FeatureView, ...]
    latency_count: int
    latency_sum_s: float
    latency_max_s: float | None
    client_disconnected: int = 0  # exchanges the client abandoned before the response ended
    # Window latency quantiles from the sketch (seconds), None while empty.
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_p99_s: float | None = None
    latency_window_max_s: float | None = None
    latency_level: int = 0  # current slot's p99 against mu + k sigma of earlier slots
    error_rate_level: int = 0  # likewise for the error rate
    level: int = 0  # the highest of the feature, latency and error-rate levels
    history: HistoryView | None = None  # for the status page's plots
    requests_per_s: float | None = None  # over the window
    # Ages of the `freshness_key` event times over the window: (rows, p50, p95, max, rows with an
    # event time in the future, level); None without such a column.
    freshness: tuple[int, float | None, float | None, float | None, int, int] | None = None
    cold_requests: int = 0  # the serving processes' first exchanges (cold_start_requests each)
    cold_latency_p50_s: float | None = None


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
    # Answered model names or versions beyond the caps (their exchanges are filed under `unknown`).
    identities_over_cap: int = 0
    identities_expired: int = 0  # idle versions whose state was let go
    mode: str = "inline"  # where the analysis runs: "inline" (serving process) or "process" (monitor)
    feeders: tuple[int, ...] = ()  # pids of the serving processes feeding these numbers
    control: tuple[tuple[str, float], ...] = ()  # settings the monitor sent to the serving processes


@dataclass(frozen=True)
class RouteReport:
    """The sidecar's rollback switch as its data planes report it (summed over them)."""

    processes: int = 0
    on_fallback: int = 0
    cause: str = ""
    by: str = ""
    since_unix_s: float | None = None

    @property
    def active(self) -> bool:
        return self.on_fallback > 0


@dataclass(frozen=True)
class ServingCounts:
    """What the serving processes count themselves (the capture hand-off, capture's own errors, the
    sidecar's failures), summed over the processes that feed one analysis."""

    dropped: tuple[tuple[str, int], ...] = ()
    internal_errors: tuple[tuple[str, int], ...] = ()
    proxy_errors: tuple[tuple[str, int], ...] | None = None  # None: no sidecar among them
    proxy_retries: int | None = None
    queue_depth: int = 0
    queue_bytes: int = 0
    worker_lag_s: float = 0.0
    sampling_stride: int = 1
    payload_sampling_stride: int = 1
    feeders: tuple[int, ...] = ()
    control: tuple[tuple[str, float], ...] = ()
    # The rollback switch as the data planes report it; None where no process has one.
    route: RouteReport | None = None
    # Each serving process that answered: (pid, process start, first answer), unix seconds.
    cold_starts: tuple[tuple[int, float, float], ...] = ()
    # What each serving process (and, in process mode, the monitor) costs.
    resources: tuple[ProcessResources, ...] = ()


@dataclass(frozen=True)
class ProcessResources:
    """One process's cost (`modeltap.operations.process_resources`): `role` serving or monitor."""

    pid: int
    role: str
    cpu_user_s: float
    cpu_system_s: float
    cpu_utilization: float | None  # share of one CPU since the previous sample
    memory_rss_bytes: int
    threads: int
    open_fds: int | None
    gc_collections: tuple[int, ...]  # per generation, since the process started
    gc_pause_s: float  # time spent in garbage collections since modeltap started watching
    # How late the serving event loop runs what is due (`modeltap.operations.loop_lag`), over
    # the last minute: largest and 99th percentile; None where no loop is probed (the monitor).
    loop_lag_max_s: float | None = None
    loop_lag_p99_s: float | None = None
    # A serving process's capture: "compiled" (modeltap._speedups) or "python"; None: the monitor.
    capture: str | None = None


@dataclass(frozen=True)
class ContainerResources:
    """The container's cgroup v2 figures (`modeltap.operations.cgroup`); None where not given."""

    cpu_periods: int | None
    cpu_throttled_periods: int | None
    cpu_throttled_s: float | None
    memory_bytes: int | None
    memory_limit_bytes: int | None  # None: no limit

    @property
    def memory_limit_use(self) -> float | None:
        if self.memory_bytes is None or not self.memory_limit_bytes:
            return None
        return self.memory_bytes / self.memory_limit_bytes


@dataclass(frozen=True)
class GpuDevice:
    """One GPU as NVML reports it (`modeltap.operations.gpu`); `level` of its memory use."""

    index: int
    uuid: str
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization: float | None  # share of the driver's last sample period a kernel ran
    level: int = 0  # WARNING above gpu_memory_warning, CRITICAL above gpu_memory_critical

    @property
    def hw_id(self) -> str:
        """The OpenTelemetry `hw.id`: the UUID, stable across reboots and index reorderings."""
        return self.uuid or f"gpu{self.index}"

    @property
    def memory_use(self) -> float | None:
        if not self.memory_total_bytes:
            return None
        return self.memory_used_bytes / self.memory_total_bytes


@dataclass(frozen=True)
class VersionMismatch:
    """The versions answered within the window against `expected_model_version`."""

    model: str
    expected: str
    served: tuple[str, ...]
    level: int  # WARNING while any served version differs from the expected one


@dataclass(frozen=True)
class RollbackView:
    """The sidecar's rollback switch: where new requests go, why, since when, and in how many of
    its data-plane processes; `requested` is what was last asked of them."""

    fallback_upstream: str
    auto: str  # off | emergency
    active: bool
    processes: int
    on_fallback: int
    cause: str
    by: str  # operator | auto
    since_unix_s: float | None
    requested: str | None  # primary | fallback | None (nothing asked since the monitor started)


@dataclass(frozen=True)
class OutcomeTally:
    """The counts behind one model version's business figures over a span of time."""

    requests: int = 0  # exchanges whose rows outcomes can join
    exposures: int = 0  # answered rows with a join key (the traffic of the revenue impact)
    outcomes: int = 0  # outcomes joined
    # Per configured outcome name: (name, outcomes joined, sum of values, sum of squared values).
    sums: tuple[tuple[str, int, float, float], ...] = ()

    def sum_of(self, name: str) -> tuple[int, float, float]:
        return next(((n, s, q) for o, n, s, q in self.sums if o == name), (0, 0.0, 0.0))


@dataclass(frozen=True)
class RevenueImpact:
    """`ΔConversion * Traffic * AOV` over the window against the baseline, with its 95 %
    interval (delta method)."""

    value: float
    ci_low: float
    ci_high: float
    traffic: int  # the version's exposures in the window
    delta_conversion: float
    average_order_value: float


@dataclass(frozen=True)
class BusinessSummary:
    """One model version's business outcomes (`modeltap.stats.business`): its window and
    cumulative counts and figures, the baseline it is judged against, and the level."""

    model: str
    version: str
    window: OutcomeTally
    total: OutcomeTally
    # conversion_rate, average_order_value, revenue_per_prediction, outcomes_per_request.
    window_figures: tuple[tuple[str, float | None], ...] = ()
    total_figures: tuple[tuple[str, float | None], ...] = ()
    baseline_source: str = "none"  # version (another version's totals) | history | none
    baseline_version: str | None = None
    baseline_figures: tuple[tuple[str, float | None], ...] = ()
    revenue_impact: RevenueImpact | None = None
    metric: str = "conversion_rate"  # the figure the level judges
    threshold: float | None = None  # below it (and significantly below the baseline): EMERGENCY
    p_value: float | None = None  # one-sided: the window's figure is below the baseline's
    level: int = 0  # OK, or EMERGENCY


@dataclass(frozen=True)
class PerformanceSummary:
    """One model version's realised performance from joined labels, over the window and since
    start: metric name -> value (None where undefined), per-class numbers of the window."""

    model: str
    version: str
    kind: str  # classification | regression
    window_labels: int
    total_labels: int
    window: tuple[tuple[str, float | None], ...] = ()
    total: tuple[tuple[str, float | None], ...] = ()
    per_class: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    label_delay_p50_s: float | None = None
    # Estimated from the scores before labels arrive (CBPE, window): blind to concept drift.
    estimated: tuple[tuple[str, float | None], ...] = ()
    # Window numbers per segment (segment_feature): (segment, ((metric, value), ...)).
    segments: tuple[tuple[str, tuple[tuple[str, float | None], ...]], ...] = ()
    level: int = 0  # of the window's accuracy against the baseline (classification)
    baseline_source: str = "none"  # reference | first_labels | none (not enough labels yet)
    baseline_accuracy: float | None = None
    baseline_labels: int = 0
    # Cumulative, mergeable counts for a backend: confusion cells (true, predicted, count) of a
    # classifier; (labels, sum |error|, sum error², sum label, sum label²) of a regressor.
    confusion: tuple[tuple[str, str, int], ...] = ()
    regression_sums: tuple[float, float, float, float, float] | None = None
    # A binary classifier's scores since start, per bucket over `score_bounds`, for labels of
    # the positive class ("true") and the others ("false"): AUC of any set of replicas follows.
    score_bounds: tuple[float, ...] = ()
    score_counts: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # A regressor's residuals (label - prediction) since start over `residual_bounds`.
    residual_bounds: tuple[float, ...] = ()
    residual_counts: tuple[int, ...] = ()


@dataclass(frozen=True)
class AlertView:
    """A pending or firing alert (see `modeltap.alerts.state`)."""

    model: str
    version: str
    subject: str
    state: str  # pending | firing
    severity: str  # warning | critical | emergency
    level: int
    score: float | None
    threshold: float | None
    since_unix_s: float


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
    # Sidecar only: its own failures by `modeltap.error.code` (None when not behind the sidecar).
    proxy_errors: tuple[CounterPoint, ...] | None = None
    # Sidecar only: requests replayed on a new connection (None when not behind the sidecar).
    proxy_retries: int | None = None
    models: tuple[ModelView, ...] = ()
    monitoring: SelfMonitoring = field(default_factory=SelfMonitoring)
    reference_id: str | None = None
    window_s: float = 0.0
    performance: tuple[PerformanceSummary, ...] = ()
    # What became of the labels fed back (joined, duplicate, conflict, early, unmatched, expired,
    # evicted) and of predictions without a join key; empty when ground truth is off.
    labels: tuple[tuple[str, int], ...] = ()
    alerts: tuple[AlertView, ...] = ()
    # Notifications: sent, failed (every attempt refused), dropped (queue overflow).
    notifications: tuple[tuple[str, int], ...] = ()
    # WARNING's response in effect: (until, unix seconds; why), or None.
    boost: tuple[float, str] | None = None
    # The sidecar's rollback switch, when it has a fallback upstream.
    rollback: RollbackView | None = None
    # Each serving process that answered: (pid, process start, first answer), unix seconds.
    cold_starts: tuple[tuple[int, float, float], ...] = ()
    # What each serving process (and, in process mode, the monitor) costs.
    resources: tuple[ProcessResources, ...] = ()
    # The container's CPU throttling and memory against its limit (cgroup v2), where there is one.
    container: ContainerResources | None = None
    # The versions the answers carry: (model, version, first answered, last answered; unix s).
    versions_seen: tuple[tuple[str, str, float, float], ...] = ()
    # With an expected version: (model, expected, versions answered within the window, level).
    version_mismatch: VersionMismatch | None = None
    # Business outcomes per model version, and what became of the outcomes fed back.
    business: tuple[BusinessSummary, ...] = ()
    outcomes: tuple[tuple[str, int], ...] = ()
    # Each GPU the analysis's process sees through NVML (none without a GPU or nvidia-ml-py).
    gpus: tuple[GpuDevice, ...] = ()
