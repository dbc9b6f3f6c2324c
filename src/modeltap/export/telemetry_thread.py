"""The export thread: the only place that talks to a collector, so a slow or dead collector can
cost telemetry, never request latency. Spans wait in a bounded ring (drops counted); metrics are
cumulative, so only the latest snapshot matters and a late export loses nothing."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from modeltap.config import ExportConfig
from modeltap.export.exporters import EncodedSpans, SpanSender
from modeltap.export.otlp_metrics import build_metrics_data
from modeltap.export.span_wire import export_request
from modeltap.snapshot import Snapshot

_log = logging.getLogger("modeltap.export")

try:  # the key instrumentations check so that exporter HTTP calls are not traced (no feedback loop)
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY as SUPPRESS_KEY
except ImportError:  # pragma: no cover - older API
    SUPPRESS_KEY = "suppress_instrumentation"


class TelemetryExporter:
    """Owns the OTLP exporters and a daemon thread that calls them.

    Example::

        exporter = TelemetryExporter(config.export, resource, snapshot_source=tap.latest_snapshot)
        exporter.start()
        exporter.offer_spans(spans)
        exporter.shutdown()  # bounded by config.export.shutdown_timeout_s
    """

    def __init__(
        self,
        config: ExportConfig,
        resource: Resource,
        snapshot_source: Callable[[], Snapshot | None],
        metric_exporter: MetricExporter | None,
        span_exporter: SpanSender | None,
    ) -> None:
        self._config = config
        self._resource = resource
        self._snapshot_source = snapshot_source
        self._metric_exporter = metric_exporter
        self._span_exporter = span_exporter
        self._spans: collections.deque[bytes] = collections.deque()
        self._spans_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_waiters: list[threading.Event] = []
        self._final_deadline = 0.0
        self.spans_dropped_queue_full = 0
        self.spans_dropped_export_failed = 0
        self.spans_dropped_rejected = 0
        self.spans_exported = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.last_success_unix_s: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self._metric_exporter is not None or self._span_exporter is not None

    @property
    def exports_spans(self) -> bool:
        return self._span_exporter is not None

    def start(self) -> None:
        if not self.active or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="modeltap-export", daemon=True)
        self._thread.start()

    def offer_spans(self, spans: list[bytes]) -> None:
        """Queue encoded spans; beyond the bound the oldest are dropped and counted (BSP semantics)."""
        if self._span_exporter is None or not spans:
            return
        limit = self._config.span_queue_max
        with self._spans_lock:
            self._spans.extend(spans)
            overflow = len(self._spans) - limit
            for _ in range(max(0, overflow)):
                self._spans.popleft()
            if overflow > 0:
                self.spans_dropped_queue_full += overflow
            full_batch = len(self._spans) >= self._config.span_batch_max
        if full_batch:
            self._wake.set()

    def _take_spans(self) -> list[bytes]:
        with self._spans_lock:
            count = min(len(self._spans), self._config.span_batch_max)
            return [self._spans.popleft() for _ in range(count)]

    def _export_spans(self, deadline: float) -> None:
        assert self._span_exporter is not None
        while time.monotonic() < deadline:
            batch = self._take_spans()
            if not batch:
                return
            ok = False
            try:
                encoded = EncodedSpans(export_request(self._resource, batch), len(batch))
                ok = self._span_exporter.export(encoded) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
            except Exception:
                _log.warning("span export raised; the batch is dropped", exc_info=True)
            self._record("traces", ok)
            if ok:
                self.spans_exported += len(batch)
            elif 400 <= (getattr(self._span_exporter, "last_failure_status", None) or 0) < 500:
                self.spans_dropped_rejected += len(batch)  # the collector refused the data itself
            else:
                self.spans_dropped_export_failed += len(batch)

    def _export_metrics(self) -> None:
        assert self._metric_exporter is not None
        snapshot = self._snapshot_source()
        if snapshot is None:
            return
        ok = False
        try:
            data = build_metrics_data(snapshot, self._resource)
            ok = self._metric_exporter.export(data, timeout_millis=self._config.timeout_s * 1000) is (
                MetricExportResult.SUCCESS
            )
        except Exception:
            _log.warning("metric export raised", exc_info=True)
        self._record("metrics", ok)

    def _record(self, signal: str, ok: bool) -> None:
        if ok:
            self.last_success_unix_s[signal] = time.time()
        else:
            self.failures[signal] += 1

    def _run(self) -> None:
        token: Any = otel_context.attach(otel_context.set_value(SUPPRESS_KEY, True))
        try:
            now = time.monotonic()
            # A signal without an exporter never comes due (else the wait below would spin).
            never = float("inf")
            next_metrics = now + self._config.metric_export_interval_s if self._metric_exporter else never
            next_spans = now + self._config.span_export_interval_s if self._span_exporter else never
            while not self._stop.is_set():
                timeout = min(3600.0, max(0.0, min(next_metrics, next_spans) - time.monotonic()))
                woke = self._wake.wait(timeout)
                self._wake.clear()
                if self._stop.is_set():
                    break
                now = time.monotonic()
                with self._spans_lock:
                    waiters, self._flush_waiters = self._flush_waiters, []
                if waiters:
                    next_spans = now if self._span_exporter else never
                    next_metrics = now if self._metric_exporter else never
                if self._span_exporter is not None and (woke or now >= next_spans):
                    self._export_spans(now + self._config.timeout_s)
                    next_spans = time.monotonic() + self._config.span_export_interval_s
                if self._metric_exporter is not None and now >= next_metrics:
                    self._export_metrics()
                    next_metrics = time.monotonic() + self._config.metric_export_interval_s
                for waiter in waiters:
                    waiter.set()
            self._final_flush()
        except Exception:  # a bug here must not kill telemetry silently
            _log.exception("modeltap export thread failed")
        finally:
            otel_context.detach(token)

    def _final_flush(self) -> None:
        deadline = self._final_deadline
        if self._span_exporter is not None:
            self._export_spans(deadline)
        if self._metric_exporter is not None and time.monotonic() < deadline:
            self._export_metrics()

    def flush_now(self, timeout_s: float) -> bool:
        """Ask the export thread to export everything now; True if it finished within the timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        with self._spans_lock:
            self._flush_waiters.append(done)
        self._wake.set()
        return done.wait(timeout_s)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Final export, bounded by `timeout_s` (default `shutdown_timeout_s`) even when the
        collector hangs."""
        thread = self._thread
        if thread is None:
            return
        budget = self._config.shutdown_timeout_s if timeout_s is None else timeout_s
        self._final_deadline = time.monotonic() + budget
        self._stop.set()
        self._wake.set()
        thread.join(budget)
        # Abort retries/backoff still running (a hanging collector) so nothing outlives the bound;
        # the daemon thread may finish its last socket read later without holding the process.
        try:
            if self._metric_exporter is not None:
                self._metric_exporter.shutdown(timeout_millis=100)
            if self._span_exporter is not None:
                self._span_exporter.shutdown()
        except Exception:
            _log.debug("exporter shutdown raised", exc_info=True)
        self._thread = None
