"""The tap: the composition root that owns the queue, the worker thread and the exporters.

Request path: `admit()` and `capture` (O(1), see capture/). Worker thread: drain the queue in
micro-batches, decode (protocols), accumulate (stats), build spans, publish snapshots.
Export thread: OTLP calls (export/). It is the only module that knows all ends.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from typing import Any

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

from modeltap._types import ASGIApp
from modeltap.capture.exchange import ExchangeCapture, TraceStarter
from modeltap.capture.record_queue import RecordQueue
from modeltap.capture.trace_context import TraceSampler
from modeltap.config import DEFAULT_DURATION_BUCKETS_S, ModelTapConfig, SamplerConfig
from modeltap.export.exporters import make_metric_exporter, make_span_exporter
from modeltap.export.resource import SERVICE_INSTANCE_ID, build_resource, new_instance_id
from modeltap.export.spans import SpanOptions
from modeltap.export.telemetry_thread import TelemetryExporter
from modeltap.reference.document import ReferenceProfile, load_reference
from modeltap.snapshot import Attributes, CounterPoint, SelfMonitoring, Snapshot
from modeltap.stats import StatsAggregator
from modeltap.stats.aggregator import StateCaps
from modeltap.stats.drift_state import WindowConfig
from modeltap.stats.scores import Thresholds
from modeltap.worker.budget import CpuBudget
from modeltap.worker.pipeline import UNKNOWN, BatchPipeline
from modeltap.worker.sampling import Sampling

_log = logging.getLogger("modeltap")
# Records per micro-batch: large enough to amortise the per-group numpy calls, small enough
# that the worker hands the GIL back to the event loop every millisecond or two.
MAX_BATCH = 256


class Tap:
    """Capture → decode → statistics → export, with every buffer bounded and every drop counted.

    Example::

        tap = Tap(app, ModelTapConfig.from_env(model_name="churn"))
        tap.start()
        ...
        tap.flush()     # process what is queued, publish a snapshot, export now
        tap.shutdown()  # bounded by export.shutdown_timeout_s
    """

    def __init__(self, app: ASGIApp, config: ModelTapConfig, tracer_provider: Any = None) -> None:
        self._app = app
        self.config = config
        self._explicit_tracer_provider = tracer_provider
        self.reference: ReferenceProfile | None = (
            load_reference(config.reference) if config.reference else None
        )
        self._request_wanted = frozenset(
            {b"content-type", b"content-encoding", config.request_id_header.encode()}
        )
        self._response_wanted = frozenset(
            {b"content-type", b"content-encoding", config.version_header.encode(), b"ce-modelid", b"ce-id"}
        )
        self._span_options = SpanOptions(
            capture_payloads=config.capture_payloads,
            max_payload_bytes=config.max_payload_attribute_bytes,
            request_headers=config.capture_request_headers,
            response_headers=config.capture_response_headers,
        )
        self._reset_state()
        self._registered_exit = False
        # A forked worker (gunicorn pre-fork) starts clean: the parent's queue and counts are its own.
        ref = weakref.ref(self)

        def _after_fork_in_child() -> None:
            tap = ref()
            if tap is not None:
                tap._reset_state()

        os.register_at_fork(after_in_child=_after_fork_in_child)

    def _reset_state(self) -> None:
        config = self.config
        # New lock too: in a forked child another thread of the parent may have held the old one.
        self._lock = threading.Lock()
        self.queue = RecordQueue(config.queue_max_records, config.queue_max_bytes)
        self.capture: ExchangeCapture | None = None
        self.started = False
        self.sampling = Sampling(config.overload_watermark)
        self._budget = CpuBudget(config.worker_cpu_budget)
        self._stats = StatsAggregator(
            config.series_limit,
            DEFAULT_DURATION_BUCKETS_S,
            self.reference,
            window=WindowConfig(config.window_slots, config.window_slot_s),
            thresholds=Thresholds(
                psi_warning=config.psi_warning,
                psi_critical=config.psi_critical,
                alpha=config.drift_alpha,
                min_samples=config.min_samples,
                sigma_k=config.sigma_k,
            ),
            caps=StateCaps(
                max_names=config.max_models,
                max_versions=config.max_versions_per_model,
                max_features=config.max_features,
                max_outputs=config.max_outputs,
                expose_values=config.expose_values,
            ),
            trusted_names=[config.model_name] if config.model_name else (),
            fixed_version=config.model_version,
        )
        self._start_unix_ns = time.time_ns()
        # The SDK names each process (`service.instance.id`, one per pid, renewed after a fork);
        # /status reports the same id so a reader can match a replica's page to its series.
        detected = Resource.create({}).attributes.get(SERVICE_INSTANCE_ID)
        self._instance_id = str(detected) if detected else new_instance_id()
        self._records_processed = 0
        self._identities_expired = 0
        self._internal_errors: collections.Counter[str] = collections.Counter()
        # The sidecar's own failures by code; None until a proxy reports (then always exported).
        self._proxy_errors: collections.Counter[str] | None = None
        # Requests the sidecar replayed on a new connection; None until a proxy reports.
        self._proxy_retries: int | None = None
        self._worker_errors: collections.Counter[str] = collections.Counter()
        self._latest: Snapshot | None = None
        self._last_publish = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flush_waiters: list[threading.Event] = []
        self._worker: threading.Thread | None = None
        self._exporter: TelemetryExporter | None = None
        self._provider_processor: Any = None
        self._resource = Resource.get_empty()
        default_name = config.model_name or (self.reference.model_name if self.reference else None) or UNKNOWN
        self._model_attrs: Attributes = (
            ("modeltap.model.name", default_name),
            ("modeltap.model.version", config.model_version or UNKNOWN),
        )
        self._pipeline = BatchPipeline(
            config, self.reference, self._stats, self._span_options, lambda: self._resource, default_name
        )

    # ---- request path -------------------------------------------------------------------

    def note_internal_error(self, where: str) -> None:
        self._internal_errors[where] += 1

    def enable_proxy_errors(self) -> None:
        """Export `modeltap.proxy.errors` (the sidecar calls this; zero until something fails)."""
        if self._proxy_errors is None:
            self._proxy_errors = collections.Counter()

    def note_proxy_error(self, code: str) -> None:
        """Count one failure the sidecar answered or aborted itself (event-loop thread)."""
        errors = self._proxy_errors
        if errors is None:
            errors = self._proxy_errors = collections.Counter()
        errors[code] += 1

    def enable_proxy_retries(self) -> None:
        """Export `modeltap.proxy.retries` (the sidecar calls this; zero until one happens)."""
        if self._proxy_retries is None:
            self._proxy_retries = 0

    def note_proxy_retry(self) -> None:
        """Count one request the sidecar replayed on a new connection (event-loop thread)."""
        self._proxy_retries = (self._proxy_retries or 0) + 1

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker and export threads (idempotent; called on the first request)."""
        with self._lock:
            if self.started:
                return
            self._start_locked()
            self.started = True

    def _start_locked(self) -> None:
        config = self.config
        provider = self._explicit_tracer_provider or otel_trace.get_tracer_provider()
        export = config.export
        base_resource = None
        if isinstance(provider, SdkTracerProvider):
            # The app has its own tracing pipeline: spans join it, and metrics share its resource.
            self._provider_processor = provider._active_span_processor
            base_resource = provider.resource
        self._resource = build_resource(
            self._instance_id, export.service_name, export.resource_attributes, base=base_resource
        )
        self._instance_id = str(self._resource.attributes.get(SERVICE_INSTANCE_ID, self._instance_id))
        span_exporter = make_span_exporter(export) if self._provider_processor is None else None
        self._pipeline.sdk_spans = self._provider_processor is not None
        self._exporter = TelemetryExporter(
            export, self._resource, self.latest_snapshot, make_metric_exporter(export), span_exporter
        )
        traced = self._provider_processor is not None or span_exporter is not None
        sampler = TraceSampler(export.sampler if traced else SamplerConfig("always_off", 0.0))
        enrich = {"modeltap.model.name": config.model_name} if config.model_name else {}
        self.capture = ExchangeCapture(
            self._app, self, self.queue.offer, config.max_body_bytes, TraceStarter(sampler, enrich)
        )
        self._stop.clear()
        self._worker = threading.Thread(target=self._run, name="modeltap-worker", daemon=True)
        self._worker.start()
        self._exporter.start()
        if not self._registered_exit:
            atexit.register(self.shutdown)
            self._registered_exit = True

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Process everything queued, publish a snapshot and export it; True if done in time."""
        if not self.started or self._worker is None:
            return True
        deadline = time.monotonic() + timeout_s
        done = threading.Event()
        with self._lock:
            self._flush_waiters.append(done)
        self._wake.set()
        if not done.wait(timeout_s):
            return False
        assert self._exporter is not None
        return self._exporter.flush_now(max(0.0, deadline - time.monotonic()))

    def shutdown(self) -> None:
        """Drain, publish and flush within `export.shutdown_timeout_s`; never hangs. Idempotent."""
        with self._lock:
            if not self.started:
                return
            self.started = False
            worker, exporter = self._worker, self._exporter
        deadline = time.monotonic() + self.config.export.shutdown_timeout_s
        self._stop.set()
        self._wake.set()
        if worker is not None:
            # The worker drains a bounded queue; the exporter gets whatever time is left.
            worker.join(max(0.0, deadline - time.monotonic()) / 2)
        if exporter is not None:
            exporter.shutdown(max(0.1, deadline - time.monotonic()))

    # ---- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.worker_interval_s
        while True:
            processed_before = self._records_processed
            stopping = self._stop.is_set()
            with self._lock:
                waiters, self._flush_waiters = self._flush_waiters, []
            try:
                started_cpu = self._budget.measure()
                drained = self._drain_all()
                self._budget.charge(started_cpu, drained)
                queue = self.queue
                self.sampling.follow_load(
                    max(queue.depth / queue.max_records, queue.pending_bytes / queue.max_bytes)
                )
                self.sampling.follow_budget(self._budget)
                now = time.monotonic()
                if waiters or stopping or now - self._last_publish >= self.config.snapshot_interval_s:
                    if waiters or stopping:
                        self._stats.invalidate_scores()  # a flush wants current scores
                    self._publish()
                    self._last_publish = now
            except Exception:
                self._worker_errors["worker"] += 1
                _log.exception("modeltap worker iteration failed")
            for waiter in waiters:
                waiter.set()
            if stopping:
                return
            # Light traffic: wake less often (fixed per-batch costs); busy: drain every interval,
            # so records do not live long enough to be promoted by the garbage collector.
            self._wake.wait(interval if self._records_processed > processed_before + 32 else interval * 8)
            self._wake.clear()

    def _drain_all(self) -> int:
        drained = 0
        while True:
            queue = self.queue
            batch = queue.drain(MAX_BATCH)
            if not batch:
                return drained
            count = len(batch)
            drained += count
            # The batch's raw bytes and the decoded rows the pipeline keeps stay charged to the
            # queue's byte bound until they are let go, so memory is bounded by one number.
            queue.worker_held_bytes = queue.drained_bytes + self._pipeline.pending_bytes
            try:
                spans = self._pipeline.process(batch)
            finally:
                del batch
                queue.worker_held_bytes = self._pipeline.pending_bytes
            self._records_processed += count
            if spans:
                self._emit_spans(spans)
            time.sleep(0)  # let a waiting request run before the next batch

    def _emit_spans(self, spans: list[Any]) -> None:
        if self._provider_processor is not None:
            for span in spans:
                try:
                    self._provider_processor.on_end(span)
                except Exception:
                    self._worker_errors["span_processor"] += 1
        elif self._exporter is not None:
            self._exporter.offer_spans(spans)

    # ---- snapshots ----------------------------------------------------------------------

    def _capture_drops(self) -> list[CounterPoint]:
        """Drops counted outside the statistics (queue, span ring, export), with model attrs."""
        counts = {
            "queue_full": self.queue.dropped_full,
            "queue_bytes": self.queue.dropped_bytes,
        }
        if self._exporter is not None and self._exporter.exports_spans:
            counts["span_queue_full"] = self._exporter.spans_dropped_queue_full
            counts["span_export_failed"] = self._exporter.spans_dropped_export_failed
            counts["rejected"] = self._exporter.spans_dropped_rejected
        return [
            CounterPoint((*self._model_attrs, ("modeltap.drop.reason", reason)), float(value))
            for reason, value in counts.items()
        ]

    def _publish(self) -> None:
        self._pipeline.flush_pending()  # grouped values not yet counted belong in this snapshot
        self.queue.worker_held_bytes = 0
        self._identities_expired += self._stats.expire()
        exporter = self._exporter
        internal = self._internal_errors + self._worker_errors + self._pipeline.errors
        monitoring = SelfMonitoring(
            queue_depth=self.queue.depth,
            queue_bytes=self.queue.pending_bytes,
            worker_lag_s=self.queue.oldest_age_s(),
            sampling_stride=self.sampling.stride,
            payload_sampling_stride=self.sampling.payload_stride,
            records_processed=self._records_processed,
            internal_errors=tuple(sorted(internal.items())),
            export_failures=tuple(sorted(exporter.failures.items())) if exporter else (),
            last_export_unix_s=tuple(sorted(exporter.last_success_unix_s.items())) if exporter else (),
            spans_exported=exporter.spans_exported if exporter else 0,
            identities_over_cap=self._stats.identities.over_cap,
            identities_expired=self._identities_expired,
        )
        self._latest = Snapshot(
            taken_unix_ns=time.time_ns(),
            start_unix_ns=self._start_unix_ns,
            instance_id=self._instance_id,
            pid=os.getpid(),
            duration=self._stats.duration_points(),
            dropped=(*self._stats.drop_points(), *self._capture_drops()),
            violations=self._stats.violation_points(),
            proxy_errors=self._proxy_error_points(),
            proxy_retries=self._proxy_retries,
            models=self._stats.model_views(),
            monitoring=monitoring,
            reference_id=self.reference.id if self.reference is not None else None,
            window_s=self._stats.window_s,
        )

    def _proxy_error_points(self) -> tuple[CounterPoint, ...] | None:
        errors = self._proxy_errors
        if errors is None:
            return None
        return tuple(
            CounterPoint((("modeltap.error.code", code),), float(count))
            for code, count in sorted(dict(errors).items())
        )

    def latest_snapshot(self) -> Snapshot:
        """The last published snapshot (at most `snapshot_interval_s` old while running)."""
        snap = self._latest
        if snap is None:
            return Snapshot(
                taken_unix_ns=time.time_ns(),
                start_unix_ns=self._start_unix_ns,
                instance_id=self._instance_id,
                pid=os.getpid(),
                dropped=tuple(self._capture_drops()),
            )
        return snap
