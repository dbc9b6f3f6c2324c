"""The tap: the composition root in the serving process.

Request path: `sampling.admit()` and `capture` (O(1), see capture/) append one record to a
bounded hand-off. Inline mode: a worker thread drains it into an `Analyzer` (decode, statistics,
spans, export) in this process. Every buffer is bounded and every drop is counted.
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
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

from modeltap._types import ASGIApp
from modeltap.capture.exchange import ExchangeCapture, TraceStarter
from modeltap.capture.record_queue import RecordQueue
from modeltap.capture.trace_context import TraceSampler
from modeltap.config import ModelTapConfig, SamplerConfig
from modeltap.reference.document import ReferenceProfile, load_reference
from modeltap.snapshot import ServingCounts, Snapshot
from modeltap.worker.analyzer import Analyzer
from modeltap.worker.budget import CpuBudget
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
        self.analyzer = Analyzer(config, self.reference, mode="inline")
        self._internal_errors: collections.Counter[str] = collections.Counter()
        # The sidecar's own failures by code; None until a proxy reports (then always exported).
        self._proxy_errors: collections.Counter[str] | None = None
        # Requests the sidecar replayed on a new connection; None until a proxy reports.
        self._proxy_retries: int | None = None
        self._last_publish = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flush_waiters: list[threading.Event] = []
        self._worker: threading.Thread | None = None

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
        if isinstance(provider, SdkTracerProvider):
            # The app has its own tracing pipeline: spans join it, and metrics share its resource.
            self.analyzer.start(
                span_processor=provider._active_span_processor, base_resource=provider.resource
            )
        else:
            self.analyzer.start()
        sampler = TraceSampler(
            config.export.sampler if self.analyzer.traced else SamplerConfig("always_off", 0.0)
        )
        enrich = {"modeltap.model.name": config.model_name} if config.model_name else {}
        self.capture = ExchangeCapture(
            self._app, self, self.queue.offer, config.max_body_bytes, TraceStarter(sampler, enrich)
        )
        self._stop.clear()
        self._worker = threading.Thread(target=self._run, name="modeltap-worker", daemon=True)
        self._worker.start()
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
        return self.analyzer.flush_export(max(0.0, deadline - time.monotonic()))

    def shutdown(self) -> None:
        """Drain, publish and flush within `export.shutdown_timeout_s`; never hangs. Idempotent."""
        with self._lock:
            if not self.started:
                return
            self.started = False
            worker = self._worker
        deadline = time.monotonic() + self.config.export.shutdown_timeout_s
        self._stop.set()
        self._wake.set()
        if worker is not None:
            # The worker drains a bounded queue; the exporter gets whatever time is left.
            worker.join(max(0.0, deadline - time.monotonic()) / 2)
        self.analyzer.shutdown(deadline - time.monotonic())

    # ---- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.worker_interval_s
        analyzer = self.analyzer
        while True:
            processed_before = analyzer.records_processed
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
                    analyzer.publish(self.serving_counts(), current_scores=bool(waiters or stopping))
                    self.queue.worker_held_bytes = 0
                    self._last_publish = now
            except Exception:
                analyzer.errors["worker"] += 1
                _log.exception("modeltap worker iteration failed")
            for waiter in waiters:
                waiter.set()
            if stopping:
                return
            # Light traffic: wake less often (fixed per-batch costs); busy: drain every interval,
            # so records do not live long enough to be promoted by the garbage collector.
            busy = analyzer.records_processed > processed_before + 32
            self._wake.wait(interval if busy else interval * 8)
            self._wake.clear()

    def _drain_all(self) -> int:
        drained = 0
        analyzer = self.analyzer
        queue = self.queue
        while True:
            batch = queue.drain(MAX_BATCH)
            if not batch:
                return drained
            drained += len(batch)
            # The batch's raw bytes and the decoded rows the pipeline keeps stay charged to the
            # queue's byte bound until they are let go, so memory is bounded by one number.
            queue.worker_held_bytes = queue.drained_bytes + analyzer.pending_bytes
            try:
                analyzer.process(batch)
            finally:
                del batch
                queue.worker_held_bytes = analyzer.pending_bytes
            time.sleep(0)  # let a waiting request run before the next batch

    # ---- snapshots ----------------------------------------------------------------------

    def serving_counts(self) -> ServingCounts:
        """What this process counted itself, for the analysis's snapshot."""
        queue = self.queue
        errors = self._proxy_errors
        return ServingCounts(
            dropped=(("queue_full", queue.dropped_full), ("queue_bytes", queue.dropped_bytes)),
            internal_errors=tuple(sorted(self._internal_errors.items())),
            proxy_errors=None if errors is None else tuple(sorted(dict(errors).items())),
            proxy_retries=self._proxy_retries,
            queue_depth=queue.depth,
            queue_bytes=queue.pending_bytes,
            worker_lag_s=queue.oldest_age_s(),
            sampling_stride=self.sampling.stride,
            payload_sampling_stride=self.sampling.payload_stride,
            feeders=(os.getpid(),),
        )

    def latest_snapshot(self) -> Snapshot:
        """The last published snapshot (at most `snapshot_interval_s` old while running)."""
        return self.analyzer.latest_snapshot()
