"""Build OpenTelemetry `MetricsData` from a snapshot, by hand, in the export thread.

The SDK's instruments are not used: `Histogram.record` costs about 12 µs per call and drops
negative values, so modeltap aggregates in its own state and hands finished points to the
OTLP exporter (see DESIGN.md). All metrics are cumulative.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from modeltap._version import __version__
from modeltap.export.business_points import business_counters, business_gauges
from modeltap.export.drift_points import drift_points
from modeltap.snapshot import Attributes, CounterPoint, HistogramPoint, Snapshot

SCOPE = InstrumentationScope("modeltap", __version__)
HTTP_SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
CUMULATIVE = AggregationTemporality.CUMULATIVE


def _counter(
    name: str,
    description: str,
    unit: str,
    points: Sequence[CounterPoint],
    snap: Snapshot,
    monotonic: bool = True,
    whole: bool = True,
) -> Metric:
    """A cumulative sum; `whole`: counts (integers), else seconds and the like (floats)."""
    return Metric(
        name=name,
        description=description,
        unit=unit,
        data=Sum(
            data_points=[
                NumberDataPoint(
                    dict(p.attributes),
                    p.start_unix_ns or snap.start_unix_ns,
                    snap.taken_unix_ns,
                    int(p.value) if whole else p.value,
                )
                for p in points
            ],
            aggregation_temporality=CUMULATIVE,
            is_monotonic=monotonic,
        ),
    )


def _histogram(
    name: str, description: str, unit: str, points: Sequence[HistogramPoint], snap: Snapshot
) -> Metric:
    return Metric(
        name=name,
        description=description,
        unit=unit,
        data=Histogram(
            data_points=[
                HistogramDataPoint(
                    attributes=dict(p.attributes),
                    start_time_unix_nano=p.start_unix_ns or snap.start_unix_ns,
                    time_unix_nano=snap.taken_unix_ns,
                    count=p.count,
                    # None leaves the optional OTLP fields unset (a feature's values can be negative).
                    sum=p.sum,  # type: ignore[arg-type]
                    bucket_counts=list(p.counts),
                    explicit_bounds=list(p.bounds),
                    min=p.min,  # type: ignore[arg-type]
                    max=p.max,  # type: ignore[arg-type]
                )
                for p in points
            ],
            aggregation_temporality=CUMULATIVE,
        ),
    )


def _gauge(
    name: str, description: str, unit: str, points: Sequence[tuple[Attributes, float]], now: int
) -> Metric:
    return Metric(
        name=name,
        description=description,
        unit=unit,
        data=Gauge(data_points=[NumberDataPoint(dict(a), 0, now, v) for a, v in points]),
    )


def self_monitoring_metrics(snap: Snapshot) -> list[Metric]:
    mon = snap.monitoring
    now = snap.taken_unix_ns
    metrics = [
        _gauge("modeltap.queue.depth", "Exchanges captured but not yet processed.", "{exchange}",
               [((), float(mon.queue_depth))], now),
        _gauge("modeltap.worker.lag", "Age of the oldest unprocessed exchange.", "s",
               [((), mon.worker_lag_s)], now),
        _gauge("modeltap.capture.sampling_stride",
               "1 in N exchanges is captured while the worker is behind (1 = all).", "1",
               [((), float(mon.sampling_stride))], now),
        _gauge("modeltap.capture.payload_sampling_stride",
               "Payloads are decoded for 1 in N captured exchanges while over the CPU budget (1 = all).",
               "1", [((), float(mon.payload_sampling_stride))], now),
    ]  # fmt: skip
    if mon.export_failures:
        failures = [
            CounterPoint((("modeltap.signal", signal),), float(count))
            for signal, count in mon.export_failures
        ]
        metrics.append(
            _counter("modeltap.export.failures", "Failed OTLP export calls.", "{export}", failures, snap)
        )
    if mon.last_export_unix_s:
        metrics.append(
            _gauge(
                "modeltap.export.last_success",
                "Unix time of the last successful OTLP export.",
                "s",
                [((("modeltap.signal", signal),), when) for signal, when in mon.last_export_unix_s],
                now,
            )
        )
    return metrics


def resource_metrics(snap: Snapshot) -> list[Metric]:
    """What each process costs, under the OpenTelemetry semantic-convention names (`process.*`,
    `cpython.gc.collections`) where one exists, `modeltap.gc.pause` and `modeltap.event_loop.lag`
    where none does; each point names its process (`process.pid`, and `modeltap.process.role`:
    serving or monitor)."""
    now = snap.taken_unix_ns
    metrics = [*_container_metrics(snap), *gpu_metrics(snap)]
    if not snap.resources:
        return metrics
    cpu: list[CounterPoint] = []
    utilization: list[tuple[Attributes, float]] = []
    memory: list[tuple[Attributes, float]] = []
    threads: list[tuple[Attributes, float]] = []
    files: list[tuple[Attributes, float]] = []
    collections: list[CounterPoint] = []
    pauses: list[CounterPoint] = []
    loop_lag: list[tuple[Attributes, float]] = []
    for r in snap.resources:
        who: Attributes = (("process.pid", r.pid), ("modeltap.process.role", r.role))
        cpu += [
            CounterPoint((*who, ("cpu.mode", "user")), r.cpu_user_s),
            CounterPoint((*who, ("cpu.mode", "system")), r.cpu_system_s),
        ]
        if r.cpu_utilization is not None:
            utilization.append((who, r.cpu_utilization))
        memory.append((who, float(r.memory_rss_bytes)))
        threads.append((who, float(r.threads)))
        if r.open_fds is not None:
            files.append((who, float(r.open_fds)))
        collections += [
            CounterPoint((*who, ("cpython.gc.generation", g)), n) for g, n in enumerate(r.gc_collections)
        ]
        pauses.append(CounterPoint(who, r.gc_pause_s))
        # As `modeltap.latency.quantile`: the 99th percentile, and the largest as quantile 1.
        for quantile, lag in (("0.99", r.loop_lag_p99_s), ("1", r.loop_lag_max_s)):
            if lag is not None:
                loop_lag.append(((*who, ("modeltap.quantile", quantile)), lag))
    metrics += [
        _counter("process.cpu.time", "CPU seconds used by the process.", "s", cpu, snap, whole=False),
        _gauge("process.memory.usage", "Resident memory of the process.", "By", memory, now),
        _gauge("process.thread.count", "Threads of the process.", "{thread}", threads, now),
        _counter(
            "cpython.gc.collections",
            "Garbage collections, per generation.",
            "{collection}",
            collections,
            snap,
        ),
        _counter("modeltap.gc.pause", "Time spent in garbage collections.", "s", pauses, snap, whole=False),
    ]
    if utilization:
        metrics.append(
            _gauge(
                "process.cpu.utilization",
                "Share of one CPU used since the previous sample.",
                "1",
                utilization,
                now,
            )
        )
    if loop_lag:
        metrics.append(
            _gauge(
                "modeltap.event_loop.lag",
                "How late the serving event loop ran a probe due every 0.5 s, over the last minute.",
                "s",
                loop_lag,
                now,
            )
        )
    if files:
        metrics.append(
            _gauge(
                "process.unix.file_descriptor.count",
                "Open file descriptors.",
                "{file_descriptor}",
                files,
                now,
            )
        )
    return metrics


def gpu_metrics(snap: Snapshot) -> list[Metric]:
    """Each GPU under the OpenTelemetry hardware semantic conventions (`hw.gpu.*`, development
    status): memory in use and its size as UpDownCounters (non-monotonic sums) in bytes, memory
    use and utilisation as gauges of fractions; `hw.id` is the device's UUID."""
    if not snap.gpus:
        return []
    now = snap.taken_unix_ns
    used: list[CounterPoint] = []
    total: list[CounterPoint] = []
    memory_use: list[tuple[Attributes, float]] = []
    utilization: list[tuple[Attributes, float]] = []
    for gpu in snap.gpus:
        device: Attributes = (
            ("hw.id", gpu.hw_id),
            ("hw.name", f"gpu{gpu.index}"),  # nvidia-smi's index
            ("hw.model", gpu.name),
            ("hw.vendor", "NVIDIA"),
            ("hw.type", "gpu"),
        )
        used.append(CounterPoint(device, float(gpu.memory_used_bytes)))
        total.append(CounterPoint(device, float(gpu.memory_total_bytes)))
        if gpu.memory_use is not None:
            memory_use.append((device, gpu.memory_use))
        if gpu.utilization is not None:
            utilization.append(((*device, ("hw.gpu.task", "general")), gpu.utilization))
    metrics = [
        _counter("hw.gpu.memory.usage", "GPU memory used.", "By", used, snap, monotonic=False),
        _counter("hw.gpu.memory.limit", "Size of the GPU memory.", "By", total, snap, monotonic=False),
    ]
    if memory_use:
        metrics.append(
            _gauge("hw.gpu.memory.utilization", "Fraction of GPU memory used.", "1", memory_use, now)
        )
    if utilization:
        description = "Fraction of time a kernel ran, over the driver's last sample period."
        metrics.append(_gauge("hw.gpu.utilization", description, "1", utilization, now))
    return metrics


def _container_metrics(snap: Snapshot) -> list[Metric]:
    """The container's cgroup v2 figures: throttled CPU time, memory and its limit."""
    container = snap.container
    if container is None:
        return []
    metrics: list[Metric] = []
    if container.cpu_throttled_s is not None:
        metrics.append(
            _counter(
                "modeltap.container.cpu.throttled_time",
                "Time the container's threads waited for CPU quota (cgroup v2 throttled_usec).",
                "s",
                [CounterPoint((), container.cpu_throttled_s)],
                snap,
                whole=False,
            )
        )
    now = snap.taken_unix_ns
    if container.memory_bytes is not None:
        usage = "The container's memory (cgroup v2 memory.current)."
        metrics.append(
            _gauge("modeltap.container.memory.usage", usage, "By", [((), float(container.memory_bytes))], now)
        )
    if container.memory_limit_bytes is not None:
        limit = "The container's memory limit (cgroup v2 memory.max)."
        metrics.append(
            _gauge(
                "modeltap.container.memory.limit",
                limit,
                "By",
                [((), float(container.memory_limit_bytes))],
                now,
            )
        )
    return metrics


def drift_metrics(snap: Snapshot) -> list[Metric]:
    """Per-feature distributions, missing counters, window scores, p-values, levels and latency
    quantiles, per model version (see `drift_points`)."""
    points = drift_points(snap)
    now = snap.taken_unix_ns
    metrics: list[Metric] = []
    if points.histograms:
        metrics.append(
            _histogram(
                "modeltap.feature.values",
                "Distribution of each monitored numeric feature over its reference fine buckets.",
                "1",
                points.histograms,
                snap,
            )
        )
    if points.categories:
        metrics.append(
            _counter(
                "modeltap.feature.categories",
                "Values of each monitored categorical feature by reference category "
                "(the vocabulary, __other__, __missing__).",
                "{value}",
                points.categories,
                snap,
            )
        )
    if points.confusion:
        metrics.append(
            _counter(
                "modeltap.performance.confusion",
                "Joined labels by true and predicted class (a classifier's confusion matrix, "
                "summable across replicas).",
                "{label}",
                points.confusion,
                snap,
            )
        )
    if points.score_histograms:
        metrics.append(
            _histogram(
                "modeltap.performance.scores",
                "A binary classifier's positive-class scores of joined labels, for labels of the "
                "positive class (true) and the others (false): ROC AUC of any set of replicas.",
                "1",
                points.score_histograms,
                snap,
            )
        )
    if points.residuals:
        metrics.append(
            _histogram(
                "modeltap.performance.residuals",
                "A regressor's residuals (label - prediction) of joined labels; bounds in steps of "
                "the reference label's standard deviation.",
                "1",
                points.residuals,
                snap,
            )
        )
    if points.regression:
        metrics.append(
            _counter(
                "modeltap.performance.regression",
                "A regressor's joined labels and sums (labels, abs_error, squared_error, label, "
                "label_squared): MAE, RMSE and R2 of any set of replicas follow from their sums.",
                "1",
                points.regression,
                snap,
                monotonic=False,  # the sum of the labels can go down
            )
        )
    if points.labels:
        metrics.append(
            _counter(
                "modeltap.labels",
                "Labels fed back, by what became of them (joined, duplicate, conflict, early, "
                "unmatched, expired, evicted, rejected; no_join_key counts predictions).",
                "{label}",
                points.labels,
                snap,
            )
        )
    for name, description, unit, rows in points.gauges():
        metrics.append(_gauge(name, description, unit, rows, now))
    if points.missing:
        metrics.append(
            _counter(
                "modeltap.feature.missing",
                "Missing or non-finite feature values.",
                "{value}",
                points.missing,
                snap,
            )
        )
    return metrics


def build_metrics_data(snap: Snapshot, resource: Resource) -> MetricsData:
    duration = _histogram(
        "http.server.request.duration", "Duration of HTTP server requests.", "s", snap.duration, snap
    )
    metrics = [duration]
    metrics.append(
        _counter(
            "modeltap.capture.dropped",
            "Exchanges or telemetry items modeltap dropped, by reason.",
            "{item}",
            snap.dropped,
            snap,
        )
    )
    metrics.append(
        _counter(
            "modeltap.data_quality.violations",
            "Data-quality violations found in decoded payloads, by reason.",
            "{violation}",
            snap.violations,
            snap,
        )
    )
    if snap.proxy_errors is not None:
        metrics.append(
            _counter(
                "modeltap.proxy.errors",
                "Requests the sidecar answered or aborted itself, by error code (x-modeltap-error).",
                "{request}",
                snap.proxy_errors,
                snap,
            )
        )
    if snap.proxy_retries is not None:
        metrics.append(
            _counter(
                "modeltap.proxy.retries",
                "Requests the sidecar replayed on a new connection after a reused one closed unanswered.",
                "{request}",
                (CounterPoint((), float(snap.proxy_retries)),),
                snap,
            )
        )
    metrics.extend(drift_metrics(snap))
    for series in business_counters(snap):
        metrics.append(
            _counter(
                series.name,
                series.description,
                series.unit,
                series.points,
                snap,
                monotonic=series.monotonic,
                whole=series.whole,
            )
        )
    for name, description, unit, rows in business_gauges(snap):
        metrics.append(_gauge(name, description, unit, rows, snap.taken_unix_ns))
    metrics.extend(self_monitoring_metrics(snap))
    metrics.extend(resource_metrics(snap))
    # A metric with no points is encoded with no data at all, which the Collector logs as an
    # error on every export ("data_type": "Empty"): before the first request, for instance.
    metrics = [metric for metric in metrics if metric.data.data_points]
    scope_metrics = ScopeMetrics(scope=SCOPE, metrics=metrics, schema_url=HTTP_SCHEMA_URL)
    return MetricsData(
        resource_metrics=[ResourceMetrics(resource=resource, scope_metrics=[scope_metrics], schema_url="")]
    )
