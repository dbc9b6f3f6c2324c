"""The tap: the composition root in the serving process.

Request path: `sampling.admit()` and `capture` (O(1), see capture/) append one record to a
bounded hand-off queue. Process mode (the default): a shipper thread sends the records to the
server's monitor process, which decodes, keeps the statistics, exports and serves the views
(`modeltap.monitor`). Inline mode: a worker thread drains the queue into an `Analyzer` in this
process. Every buffer is bounded and every drop is counted.

In process mode this process imports nothing of the analysis: the statistics (and SciPy with
them), the OpenTelemetry SDK and its exporters load only where the analysis runs here (inline
mode, or a fall-back to it) or where the app brings its own SDK tracer provider. A served model
then carries the capture, not the monitor (`tests/integration/test_monitor_process.py` checks
which modules a worker has loaded).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import dataclasses
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as otel_trace

from modeltap._types import ASGIApp
from modeltap.alerts.rollback import route_report
from modeltap.capture import compiled
from modeltap.capture.exchange import Capture, TraceStarter, exchange_capture
from modeltap.capture.record_queue import new_record_queue
from modeltap.capture.routes import RouteTemplates
from modeltap.capture.trace_context import TraceSampler
from modeltap.config import ModelTapConfig, SamplerConfig, config_document
from modeltap.handoff.framing import RecordEncoder, compiled_encoder, decode_record
from modeltap.handoff.rendezvous import (
    Rendezvous,
    RendezvousError,
    check_run_directory,
    run_directory,
    server_pid,
)
from modeltap.handoff.shipper import Shipper
from modeltap.operations.loop_lag import LoopLagProbe
from modeltap.operations.proc_stat import stat_fields
from modeltap.operations.process_resources import ResourceSampler, as_counts
from modeltap.records import ExchangeRecord, QueuedRecord, RawRecord
from modeltap.snapshot import ProcessResources, ServingCounts, Snapshot
from modeltap.worker.budget import CpuBudget
from modeltap.worker.sampling import MAX_PAYLOAD_STRIDE, Sampling

if TYPE_CHECKING:
    from modeltap.reference.document import ReferenceProfile
    from modeltap.worker.analyzer import Analyzer

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
        self.reference: ReferenceProfile | None = None
        if config.reference:
            # Read here, in process mode too: a wrong reference fails as the app is built.
            from modeltap.reference.document import load_reference

            self.reference = load_reference(config.reference)
        self._reset_state()
        self._registered_exit = False
        # A forked worker (gunicorn pre-fork) starts clean: the parent's queue and counts are its own.
        ref = weakref.ref(self)

        def _after_fork_in_child() -> None:
            tap = ref()
            if tap is not None:
                if tap.shipper is not None:
                    tap.shipper.abandon_after_fork()
                tap._reset_state()

        os.register_at_fork(after_in_child=_after_fork_in_child)

    def _reset_state(self) -> None:
        config = self.config
        # New lock too: in a forked child another thread of the parent may have held the old one.
        self._lock = threading.Lock()
        self.queue = new_record_queue(config.queue_max_records, config.queue_max_bytes)
        self.capture: Capture | None = None
        # Which capture this process runs ("compiled" or "python"), decided before the shipper's
        # first counts leave so that the monitor never records a serving process without it.
        self.capture_form: str | None = None
        self.started = False
        self.sampling = Sampling(config.overload_watermark)
        self._budget = CpuBudget(config.worker_cpu_budget)
        self._analyzer: Analyzer | None = None  # made when the analysis runs here (`analyzer`)
        self._analyzer_lock = threading.Lock()
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
        # Process mode: where the monitor is, and the thread that ships records to it.
        self.mode = "inline"
        self.place: Rendezvous | None = None
        # Process mode: the compiled capture's encoder for the headers the monitor reads (None
        # where the extension is not built, or inline).
        self._compiled_encoder: Any = None
        self.shipper: Shipper | None = None
        self._sampler: TraceSampler | None = None
        self._local_spans: Any = None  # the app's span processor, fed here in process mode
        self._local_resource: Any = None  # the app provider's resource (`_start_shipper`)
        self._local_routes = RouteTemplates()
        # What an embedding adapter adds: to the monitor's start document (the sidecar's admin
        # port), the file descriptors the monitor inherits, and this process's counts.
        self.monitor_extras: dict[str, Any] = {}
        self.run_directory: Path | None = None  # else MODELTAP_RUN_DIR or the default
        self.shutdown_deadline = 0.0  # when `shutdown` must be done by (monotonic)
        self.on_fallback: Any = None  # called once process mode fell back to inline
        # Called with the analysis before it starts in this process (inline, or the fall-back),
        # on the thread that starts it: what an embedding wires to it (the sidecar's admin port).
        self.on_analysis: Callable[[Analyzer], None] | None = None
        self.monitor_pass_fds: tuple[int, ...] = ()
        self.extra_counts: dict[str, Any] = {}
        # What this process costs (CPU, memory, threads, files, garbage collection), and how late
        # its event loop runs (probed once `watch_event_loop` is called on that loop).
        self.loop_lag = LoopLagProbe()
        self.resources = ResourceSampler("serving", self.loop_lag)
        # The sidecar's rollback switch: called (on the shipper thread) with a route command.
        self.on_route: Callable[[dict[str, Any]], None] | None = None

    @property
    def analyzer(self) -> Analyzer:
        """The analysis in this process (inline mode), made on first use: in process mode the
        monitor analyses, and this process never loads the statistics."""
        analyzer = self._analyzer
        if analyzer is None:
            from modeltap.worker.analyzer import Analyzer

            with self._analyzer_lock:  # the shipper's fall-back and a view may ask at once
                analyzer = self._analyzer
                if analyzer is None:
                    analyzer = self._analyzer = Analyzer(self.config, self.reference, mode="inline")
        return analyzer

    def watch_event_loop(self) -> None:
        """Probe the lag of the event loop running this call (none running: nothing to do). The
        middleware calls it on its first request and at lifespan start; repeated calls are free."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.loop_lag.watch(loop)

    # ---- request path -------------------------------------------------------------------

    def note_internal_error(self, where: str) -> None:
        self._internal_errors[where] += 1

    def note_first_answer(self, unix_ns: int) -> None:
        """The first exchange this process answered: its cold start is over (told to the monitor)."""
        self.report_all({"process_start_unix_s": PROCESS_START_UNIX_S, "first_answer_unix_s": unix_ns / 1e9})

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
        """Start the worker and export threads (idempotent; called as the app starts, or on the
        first request)."""
        with self._lock:
            if self.started:
                return
            self._start_locked()
            self.started = True

    def _start_locked(self) -> None:
        config = self.config
        compiled_capture = compiled.wanted()
        self.capture_form = "compiled" if compiled_capture else "python"
        app_provider = _sdk_provider(self._explicit_tracer_provider or otel_trace.get_tracer_provider())
        if config.monitor == "process" and self._start_shipper(app_provider):
            # Spans leave from the monitor, or through the app's own provider from here.
            traced = app_provider is not None or config.export.traces_target is not None
        else:
            self._wire_analysis()
            if app_provider is not None:
                # The app has its own tracing pipeline: spans join it, metrics share its resource.
                self.analyzer.start(
                    span_processor=app_provider._active_span_processor, base_resource=app_provider.resource
                )
            else:
                self.analyzer.start()
            traced = self.analyzer.traced
            self._stop.clear()
            self._worker = threading.Thread(target=self._run, name="modeltap-worker", daemon=True)
            self._worker.start()
        sampler = self._sampler = TraceSampler(
            config.export.sampler if traced else SamplerConfig("always_off", 0.0)
        )
        enrich = {"modeltap.model.name": config.model_name} if config.model_name else {}
        # Process mode, no span built here: the compiled capture encodes each record for the
        # monitor as the exchange ends (bytes in the queue; nothing for the collector to visit).
        encoder = self._compiled_encoder if self.mode == "process" and self._local_spans is None else None
        if not compiled.AVAILABLE:
            _log.info(
                "modeltap: the compiled capture (modeltap._speedups) is not built here; "
                "capturing in pure Python (same records, more CPU on the serving core)"
            )
        self.capture = exchange_capture(
            self._app,
            self,
            self.queue.offer,
            config.max_body_bytes,
            TraceStarter(sampler, enrich),
            cold_start_requests=config.cold_start_requests,
            compiled=compiled_capture,
            encoder=encoder,
        )
        if not self._registered_exit:
            atexit.register(self.shutdown)
            self._registered_exit = True

    def _wire_analysis(self) -> None:
        """Hand the analysis to `on_analysis` before it starts here (a failure there is logged:
        the analysis still runs)."""
        if self.on_analysis is not None:
            try:
                self.on_analysis(self.analyzer)
            except Exception:
                _log.exception("modeltap: wiring the analysis in this process failed")

    def _fall_back_inline(self, reason: str) -> None:
        """No monitor process can run here (shipper thread): analyse in this process from now on,
        on the same queue, so nothing captured so far is lost."""
        _log.warning("modeltap: %s; analysing in this process instead", reason)
        with self._lock:
            if self.mode != "process":
                return
            self._wire_analysis()
            processor = self._local_spans
            if processor is not None:
                self.analyzer.start(span_processor=processor, base_resource=self._local_resource)
            else:
                self.analyzer.start()
            self._local_spans = None
            self.queue.unavailable = False
            self.shipper = None
            self.mode = "inline"
            if self.capture is not None and hasattr(self.capture, "encoder"):
                self.capture.encoder = None  # raw records again (those queued are decoded)
            self._stop.clear()
            self._worker = threading.Thread(target=self._run, name="modeltap-worker", daemon=True)
            self._worker.start()
        if self.on_fallback is not None:
            self.on_fallback()

    def _start_shipper(self, app_provider: Any) -> bool:
        """Process mode: ship to the server's monitor (started if needed); False: stay inline."""
        config = self.config
        document: dict[str, Any] = {"config": config_document(config), **self.monitor_extras}
        # A worker's server (its supervisor): while it runs, the monitor waits for a worker being
        # replaced. Not digested into the key, which names the server already. A process that is
        # its own server says goodbye only as it stops: nothing to wait for.
        supervisor = server_pid()
        if supervisor != os.getpid():
            document.setdefault("server_pid", supervisor)
        if app_provider is not None:
            # Spans are built here, for the app's pipeline: the monitor builds none.
            document["local_spans"] = True
            # Metrics then carry the app's resource (the monitor adds its own instance id).
            document["resource"] = {
                k: v
                for k, v in app_provider.resource.attributes.items()
                if isinstance(v, (str, int, float, bool))
            }
            # Loaded with the app's provider: the SDK's resources.
            from modeltap.export.resource import SERVICE_INSTANCE_ID, build_resource, new_instance_id

            self._local_spans = app_provider._active_span_processor
            # The spans built here carry the resource inline analysis gives them: the app's, over
            # modeltap's defaults, with this process's instance id where the app names none.
            export = config.export
            detected = app_provider.resource.attributes.get(SERVICE_INSTANCE_ID)
            self._local_resource = build_resource(
                str(detected) if detected else new_instance_id(),
                export.service_name,
                export.resource_attributes,
                base=app_provider.resource,
            )
        try:
            directory = self.run_directory or run_directory()
            if self.run_directory is not None:
                check_run_directory(directory)  # handed by the sidecar: checked as any other
            self.place = Rendezvous.for_server(directory, config.monitor_id, document["config"])
        except RendezvousError as exc:
            _log.warning("modeltap: no monitor process (%s); analysing in this process instead", exc)
            self._local_spans = None
            return False
        wanted_request = {
            b"content-type",
            b"content-encoding",
            b"inference-header-content-length",
            b"user-agent",
        }
        wanted_request.add(config.request_id_header.lower().encode())
        wanted_request.update(h.lower().encode() for h in config.capture_request_headers)
        wanted_response = {b"content-type", b"content-encoding", b"ce-modelid", b"ce-id"}
        wanted_response.add(config.version_header.lower().encode())
        wanted_response.update(h.lower().encode() for h in config.capture_response_headers)
        self._compiled_encoder = compiled_encoder(wanted_request, wanted_response)
        self.shipper = Shipper(
            self.place,
            document,
            self.queue,
            RecordEncoder(wanted_request, wanted_response),
            counts=self.counts_document,
            on_control=self.apply_control,
            before_batch=self._before_batch,
            after_ship=self._follow_load,
            pass_fds=self.monitor_pass_fds,
            on_give_up=self._fall_back_inline,
        )
        self.mode = "process"
        self.shipper.start()
        return True

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Process everything queued, publish a snapshot and export it; True if done in time."""
        if not self.started:
            return True
        if self.shipper is not None:
            return self.shipper.flush(timeout_s)
        if self._worker is None:
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
            worker, shipper = self._worker, self.shipper
        deadline = self.shutdown_deadline = time.monotonic() + self.config.export.shutdown_timeout_s
        if shipper is not None:
            if shipper.gave_up is None:
                # What is queued is shipped (to a monitor still starting, too), and the monitor
                # exports it before this process goes on, bounded by the same deadline as inline
                # mode's last export: a server that is PID 1 of a container takes every process
                # of it down as it exits, the monitor in the middle of its own final export.
                shipper.flush(max(0.1, deadline - time.monotonic()))
            shipper.stop(max(0.1, deadline - time.monotonic()))
            return
        self._stop.set()
        self._wake.set()
        if worker is not None:
            # The worker drains a bounded queue; the exporter gets whatever time is left.
            worker.join(max(0.0, deadline - time.monotonic()) / 2)
        self.analyzer.shutdown(deadline - time.monotonic())

    # ---- process mode ---------------------------------------------------------------------------

    def counts_document(self) -> dict[str, Any]:
        """What this process counted itself, cumulative, for the monitor (shipper thread)."""
        queue = self.queue
        lost = self.shipper.lost if self.shipper is not None else 0
        errors = self._proxy_errors
        return {
            "dropped": {
                "queue_full": queue.dropped_full,
                "queue_bytes": queue.dropped_bytes,
                "monitor_unavailable": queue.dropped_unavailable + lost,
            },
            "internal_errors": dict(self._internal_errors),
            "proxy_errors": None if errors is None else dict(errors),
            "proxy_retries": self._proxy_retries,
            "queue_depth": queue.depth,
            "queue_bytes": queue.pending_bytes,
            "worker_lag_s": queue.oldest_age_s(),
            "sampling_stride": self.sampling.stride,
            "payload_sampling_stride": self.sampling.payload_stride,
            **as_counts(self._own_resources()),
            **self.extra_counts,
        }

    def _own_resources(self) -> ProcessResources:
        """This process's resources, with which capture it runs (once the tap has started)."""
        sample = self.resources.sample()
        form = self.capture_form
        return sample if form is None else dataclasses.replace(sample, capture=form)

    def report(self, key: str, value: Any) -> None:
        """Set a count or state the monitor should know at once (the sidecar: draining)."""
        self.report_all({key: value})

    def report_all(self, values: dict[str, Any]) -> None:
        """Several at once (the sidecar's rollback switch: where, why, by whom, since when)."""
        self.extra_counts.update(values)
        if self.shipper is not None:
            self.shipper.push_counts()

    def apply_control(self, control: dict[str, Any]) -> None:
        """What the monitor asks of this process: how many payloads to send, how many traces."""
        stride = control.get("payload_stride")
        if isinstance(stride, (int, float)) and 1 <= stride <= MAX_PAYLOAD_STRIDE:
            self.sampling.payload_stride = int(stride)
        ratio = control.get("trace_ratio")
        if isinstance(ratio, (int, float)) and self._sampler is not None:
            self._sampler.set_ratio(float(ratio))
        route = control.get("route")
        if isinstance(route, dict) and self.on_route is not None:
            self.on_route(route)  # the sidecar's rollback switch

    def _follow_load(self) -> None:
        """Shipper thread, once per turn after shipping (as the inline worker does once per
        iteration after draining): sample harder while the queue stays full, less as it empties.
        Not per batch: the draining of a backlog would double the stride at every batch, and an
        idle process, which ships no batch, would keep a high stride for its next requests."""
        queue = self.queue
        self.sampling.follow_load(max(queue.depth / queue.max_records, queue.pending_bytes / queue.max_bytes))

    def _before_batch(self, batch: list[QueuedRecord]) -> None:
        """Shipper thread, before a batch leaves: give traced exchanges to the app's own span
        processor when it has one."""
        processor = self._local_spans
        if processor is None:
            return
        for raw in batch:
            if isinstance(raw, bytes) or raw[15] is None:  # encoded (no local spans then), untraced
                continue
            try:
                processor.on_end(self._local_span(ExchangeRecord._make(raw)))
            except Exception:
                self._internal_errors["span_processor"] += 1

    def _local_span(self, record: ExchangeRecord) -> Any:
        """The exchange's span built here, from what is known without decoding the payload."""
        # The app's SDK provider is loaded already; the span builder only with it.
        from modeltap.export.spans import ExchangeIdentity, build_span, span_options
        from modeltap.protocols.detect import path_identity, sanitize

        config = self.config
        name, version = path_identity(record.path)
        request_id = version_header = None
        for key, value in record.request_headers:
            if key == config.request_id_header.lower().encode():
                request_id = sanitize(value.decode("latin-1"))
        for key, value in record.response_headers:
            if key == config.version_header.lower().encode():
                version_header = sanitize(value.decode("latin-1"))
        identity = ExchangeIdentity(
            route=self._local_routes.of(record.scope, record.root_path_at_start),
            model_name=config.model_name or name or self._default_name(),
            model_version=config.model_version or version_header or version or "unknown",
            request_id=request_id,
            protocol="unknown",
            violations={},
        )
        return build_span(record, identity, span_options(config), self._local_resource)

    def _default_name(self) -> str:
        """The model's name where nothing else names it (as the analysis names it)."""
        reference = self.reference
        return (reference.model_name if reference is not None else None) or "unknown"

    # ---- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.worker_interval_s
        analyzer = self.analyzer
        applied_ratio: float | None = None  # the trace ratio last set by the WARNING boost
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
                boosted = analyzer.boosted(now)
                if boosted:  # WARNING: decode up to twice as many payloads, trace twice as many
                    self.sampling.payload_stride = max(1, self.sampling.payload_stride // 2)
                ratio = analyzer.boost_trace_ratio(now)
                if ratio is not None and self._sampler is not None and ratio != applied_ratio:
                    self._sampler.set_ratio(ratio)  # only when the boost starts or ends
                    applied_ratio = ratio
                period = self.config.snapshot_interval_s / (2 if boosted else 1)
                if waiters or stopping or now - self._last_publish >= period:
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
            queued = queue.drain(MAX_BATCH)
            if not queued:
                return drained
            drained += len(queued)
            batch = [_raw(record) for record in queued]
            del queued
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
            route=route_report([self.extra_counts]),
            cold_starts=cold_starts([{**self.extra_counts, "pid": os.getpid()}]),
            resources=(self._own_resources(),),
        )

    def latest_snapshot(self) -> Snapshot:
        """The last published snapshot (at most `snapshot_interval_s` old while running)."""
        return self.analyzer.latest_snapshot()


def _sdk_provider(provider: Any) -> Any:
    """`provider` if it is the OpenTelemetry SDK's (the app's own tracing pipeline), else None.
    Asked without importing the SDK: a provider of the SDK's class means the SDK is loaded."""
    sdk_trace = sys.modules.get("opentelemetry.sdk.trace")
    if sdk_trace is None:
        return None
    return provider if isinstance(provider, sdk_trace.TracerProvider) else None


def _process_start_unix_s() -> float:
    """When this process started, from the kernel (Linux), else now (at import)."""
    fields = stat_fields()
    if fields is None:
        return time.time()
    try:
        ticks = int(fields[19])  # field 22, starttime
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


PROCESS_START_UNIX_S = _process_start_unix_s()


def cold_starts(counts: list[dict[str, Any]]) -> tuple[tuple[int, float, float], ...]:
    """(pid, process start, first answer) of each serving process that answered (unix seconds)."""
    out = []
    for c in counts:
        start, first, pid = c.get("process_start_unix_s"), c.get("first_answer_unix_s"), c.get("pid")
        if isinstance(start, (int, float)) and isinstance(first, (int, float)) and isinstance(pid, int):
            out.append((pid, float(start), float(first)))
    return tuple(sorted(out))


def _raw(record: QueuedRecord) -> RawRecord:
    """A queued record as the analysis takes it: one the compiled capture encoded for a monitor
    (queued before the fall-back to this process) is decoded."""
    return decode_record(record) if isinstance(record, bytes) else record
