"""The analysis of one server's exchanges: decode, statistics, spans, snapshots and OTLP export.

It runs on a worker thread inside the serving process (inline mode) or in the monitor process
beside it (process mode, the default); both feed it the same raw records and publish the same
snapshots. What the serving processes count themselves (capture drops, the sidecar's failures)
arrives as `ServingCounts` and is merged into each snapshot.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.resources import Resource

from modeltap.alerts.alertmanager import AlertmanagerSender, format_time
from modeltap.alerts.drill import DrillDesk, DrillSettings
from modeltap.alerts.observations import observations
from modeltap.alerts.rollback import (
    FALLBACK,
    RollbackControl,
    RouteCommand,
    rollback_alert,
    rollback_notification,
    rollback_slack,
)
from modeltap.alerts.runbooks import Runbooks
from modeltap.alerts.slack import slack_message
from modeltap.alerts.state import AlertBook, AlertKey, Observation
from modeltap.alerts.webhook import WebhookSender, close_all, notification_document
from modeltap.config import ModelTapConfig
from modeltap.export.exporters import make_metric_exporter, make_span_exporter
from modeltap.export.local_views import ReadEndpoint, WriteEndpoint
from modeltap.export.resource import SERVICE_INSTANCE_ID, build_resource, new_instance_id
from modeltap.export.spans import span_options
from modeltap.export.telemetry_thread import TelemetryExporter
from modeltap.handoff.rendezvous import server_pid
from modeltap.operations.cgroup import ContainerSampler
from modeltap.operations.gpu import GpuSampler
from modeltap.records import RawRecord, TimedGroup
from modeltap.reference.document import ReferenceProfile
from modeltap.snapshot import (
    AlertView,
    Attributes,
    BusinessSummary,
    CounterPoint,
    GpuDevice,
    RollbackView,
    RouteReport,
    SelfMonitoring,
    ServingCounts,
    Snapshot,
    VersionMismatch,
)
from modeltap.stats import StatsAggregator
from modeltap.stats.aggregator import StateCaps
from modeltap.stats.business import BusinessOutcomes, BusinessSettings
from modeltap.stats.drift_state import WindowConfig
from modeltap.stats.ground_truth import GroundTruth
from modeltap.stats.join_store import JoinStore
from modeltap.stats.scores import Level, load_statistics, thresholds_of
from modeltap.worker.feedback import feedback_endpoint, outcome_endpoint
from modeltap.worker.pipeline import (
    FLUSH_AGE_S,
    FLUSH_RECORDS,
    MONITOR_FLUSH_RECORDS,
    UNKNOWN,
    BatchPipeline,
)

_log = logging.getLogger("modeltap")
# What one kept exposure may cost (its key, record and dict slots: about 400 bytes measured with
# a 20-character request id), to size the store from the label store's byte budget.
EXPOSURE_BYTES = 512


def statistics(
    config: ModelTapConfig, reference: ReferenceProfile | None, clock: Callable[[], float] = time.monotonic
) -> StatsAggregator:
    """The statistics a configuration asks for (`clock`: a fire drill's shadow runs on its own)."""
    key = config.freshness_key
    if reference is not None and key is not None:
        # The event-time column is measured for freshness, never scored for drift or schema
        # (the decoders keep the full reference: positional rows still name their columns).
        kept = tuple(f for f in reference.features if not (f.role == "input" and f.name == key))
        reference = dataclasses.replace(reference, features=kept)
    return StatsAggregator(
        config.series_limit,
        tuple(float(b) for b in config.duration_buckets),
        reference,
        window=WindowConfig(config.window_slots, config.window_slot_s),
        thresholds=thresholds_of(config),
        caps=StateCaps(
            max_names=config.max_models,
            max_versions=config.max_versions_per_model,
            max_features=config.max_features,
            max_outputs=config.max_outputs,
            expose_values=config.expose_values,
        ),
        trusted_names=[config.model_name] if config.model_name else (),
        fixed_version=config.model_version,
        clock=clock,
        freshness_max_age_s=config.freshness_max_age_s,
    )


class Analyzer:
    """Records in, snapshots and OTLP out. Not thread-safe: one thread calls `process` and
    `publish`; `latest_snapshot` may be read from any thread.

    Example::

        analyzer = Analyzer(config, reference, mode="inline")
        analyzer.start()
        analyzer.process(raw_records)
        analyzer.publish(ServingCounts(...))
        analyzer.shutdown(5.0)
    """

    def __init__(self, config: ModelTapConfig, reference: ReferenceProfile | None, *, mode: str) -> None:
        self.config = config
        self.reference = reference
        self.mode = mode
        if mode == "inline":
            load_statistics()  # in the serving process: now, not beside the first requests
        self.stats = statistics(config, reference)
        self.start_unix_ns = time.time_ns()
        # The SDK names each process (`service.instance.id`); a monitor names the server it serves.
        detected = Resource.create({}).attributes.get(SERVICE_INSTANCE_ID)
        self.instance_id = str(detected) if detected and mode == "inline" else new_instance_id()
        self.resource = Resource.get_empty()
        self.default_name = (
            config.model_name or (reference.model_name if reference is not None else None) or UNKNOWN
        )
        self.model_attributes: Attributes = (
            ("modeltap.model.name", self.default_name),
            ("modeltap.model.version", config.model_version or UNKNOWN),
        )
        # The monitor process steps its statistics in larger batches (see `MONITOR_FLUSH_RECORDS`).
        monitor = mode == "process"
        self.pipeline = BatchPipeline(
            config,
            reference,
            self.stats,
            span_options(config),
            lambda: self.resource,
            self.default_name,
            flush_records=MONITOR_FLUSH_RECORDS if monitor else FLUSH_RECORDS,
            flush_age_s=max(FLUSH_AGE_S, config.snapshot_interval_s) if monitor else FLUSH_AGE_S,
        )
        self.truth = GroundTruth(
            reference,
            slots=config.window_slots,
            slot_s=config.window_slot_s,
            store=JoinStore(max_bytes=config.label_store_bytes, ttl_s=config.label_ttl_s),
            max_versions=config.max_models * config.max_versions_per_model,
            default_model=config.model_name or (reference.model_name if reference is not None else None),
            segment_feature=config.segment_feature,
            ranking_k=config.ranking_k,
        )
        if self.truth.enabled:
            self.pipeline.truth = self.truth
        # `POST …/feedback` (the views call it on a thread of their own).
        self.feedback = feedback_endpoint(self.truth, config.label_key)
        # Business outcomes joined to the answered rows (`POST …/outcome`).
        self.business = BusinessOutcomes(
            slots=config.window_slots,
            slot_s=config.window_slot_s,
            settings=BusinessSettings(
                metric=config.business_metric,
                floor=config.business_floor,
                max_drop=config.business_max_drop,
                alpha=config.business_alpha,
                min_samples=config.min_samples,
                baseline_version=config.business_baseline_version,
            ),
            max_exposures=config.label_store_bytes // EXPOSURE_BYTES,
            ttl_s=config.label_ttl_s,
            max_versions=config.max_models * config.max_versions_per_model,
            default_model=config.model_name or (reference.model_name if reference is not None else None),
        )
        if config.outcome_names:
            self.pipeline.business = self.business
        self.outcome = outcome_endpoint(self.business, config.label_key, config.outcome_names)
        # Levels held long enough become alerts; notifications leave from a thread of their own.
        self.alert_book = AlertBook(
            for_s=config.alert_for_s,
            resolve_s=config.alert_resolve_s,
            repeat_s=config.alert_repeat_s,
            group_wait_s=config.alert_group_wait_s,
        )
        self.runbooks = Runbooks(config.alert_runbooks, config.alert_runbook_url)
        # The status page as people reach it (the sidecar sets its admin page when not configured).
        self.status_url = config.alert_status_url
        self.webhooks = WebhookSender(tuple(config.alert_webhooks))
        self.alertmanager = AlertmanagerSender(
            tuple(config.alertmanagers),
            config.alert_status_url,
            runbooks=self.runbooks,
            instance=replica_name(config, inline_worker=mode == "inline" and server_pid() != os.getpid()),
        )
        self.slack = WebhookSender(tuple(config.alert_slack_webhooks))
        self._info: set[tuple[str, str, str]] = set()  # subjects at INFO: logged once on entry
        self._versions_logged: set[tuple[str, str]] = set()
        # The container this analysis runs in (the serving processes' too): cgroup v2 figures.
        self.container = ContainerSampler()
        # The GPUs this analysis's process sees (NVML, `modeltap[gpu]`; started on first use).
        self.gpu = GpuSampler()
        # The sidecar's rollback switch (configured by a sidecar with a fallback upstream).
        self.rollback = RollbackControl()
        # Fire drills: a shadow of these statistics, this configuration's alert path.
        self.drills = DrillDesk(
            self._drill_settings, reference, lambda clock: statistics(config, reference, clock)
        )
        # WARNING's response: monitoring raised until this monotonic time (0: not raised).
        self.boost_until = 0.0
        self.boost_reason = ""
        self._rolled_back_from = UNKNOWN  # the version answering when traffic last rolled back
        self.exporter: TelemetryExporter | None = None
        self._span_processor: Any = None
        self.records_processed = 0
        self.identities_expired = 0
        self.errors: Counter[str] = Counter()
        self._latest: Snapshot | None = None

    @property
    def traced(self) -> bool:
        """Whether spans leave anywhere (the app's provider or modeltap's OTLP exporter)."""
        return self._span_processor is not None or (self.exporter is not None and self.exporter.exports_spans)

    def start(
        self, span_processor: Any = None, base_resource: Resource | None = None, *, build_spans: bool = True
    ) -> None:
        """Build the resource and start the export thread. `span_processor`: the application's own
        SDK span processor, which then receives modeltap's spans instead of its exporter;
        `build_spans=False`: spans are built elsewhere (the serving process, for that processor)."""
        export = self.config.export
        self._span_processor = span_processor
        self.resource = build_resource(
            self.instance_id, export.service_name, export.resource_attributes, base=base_resource
        )
        if self.mode == "process":
            # One resource per monitor: the server, not whichever worker started it.
            self.resource = self.resource.merge(Resource({SERVICE_INSTANCE_ID: self.instance_id}))
        self.instance_id = str(self.resource.attributes.get(SERVICE_INSTANCE_ID, self.instance_id))
        span_exporter = make_span_exporter(export) if span_processor is None and build_spans else None
        self.pipeline.sdk_spans = span_processor is not None
        self.pipeline.build_spans = build_spans
        self.exporter = TelemetryExporter(
            export, self.resource, self.latest_snapshot, make_metric_exporter(export), span_exporter
        )
        self.exporter.start()

    # ---- the worker's loop calls these ----------------------------------------------------------

    def process(self, batch: list[RawRecord]) -> None:
        spans = self.pipeline.process(batch)
        self.records_processed += len(batch)
        if not spans:
            return
        if self._span_processor is not None:
            for span in spans:
                try:
                    self._span_processor.on_end(span)
                except Exception:
                    self.errors["span_processor"] += 1
        elif self.exporter is not None:
            self.exporter.offer_spans(spans)

    def process_timed(self, groups: list[TimedGroup]) -> int:
        """Records timed and counted only, by group (see `BatchPipeline.process_timed`); returns
        how many exchanges they stand for."""
        exchanges = self.pipeline.process_timed(groups)
        self.records_processed += exchanges
        return exchanges

    @property
    def pending_bytes(self) -> int:
        """Decoded rows held for the next numpy step (they count against the hand-off's bound)."""
        return self.pipeline.pending_bytes

    def publish(self, serving: ServingCounts, *, current_scores: bool = False) -> Snapshot:
        """Fold what is pending into the statistics and publish a snapshot."""
        self.pipeline.flush_pending()  # grouped values not yet counted belong in this snapshot
        if current_scores:
            self.stats.invalidate_scores()  # a flush wants scores as of now
        self.identities_expired += self.stats.expire()
        exporter = self.exporter
        internal = Counter(dict(serving.internal_errors)) + self.errors + self.pipeline.errors
        gpus = self._gpus()
        if self.gpu.errors:
            internal["nvml"] += self.gpu.errors
        monitoring = SelfMonitoring(
            queue_depth=serving.queue_depth,
            queue_bytes=serving.queue_bytes,
            worker_lag_s=serving.worker_lag_s,
            sampling_stride=serving.sampling_stride,
            payload_sampling_stride=serving.payload_sampling_stride,
            records_processed=self.records_processed,
            internal_errors=tuple(sorted(internal.items())),
            export_failures=tuple(sorted(exporter.failures.items())) if exporter else (),
            last_export_unix_s=tuple(sorted(exporter.last_success_unix_s.items())) if exporter else (),
            spans_exported=exporter.spans_exported if exporter else 0,
            identities_over_cap=self.stats.identities.over_cap,
            identities_expired=self.identities_expired,
            mode=self.mode,
            feeders=serving.feeders,
            control=serving.control,
        )
        snapshot = Snapshot(
            taken_unix_ns=time.time_ns(),
            start_unix_ns=self.start_unix_ns,
            instance_id=self.instance_id,
            pid=os.getpid(),
            duration=self.stats.duration_points(),
            dropped=(*self.stats.drop_points(), *self._serving_drops(serving)),
            violations=self.stats.violation_points(),
            proxy_errors=None
            if serving.proxy_errors is None
            else tuple(
                CounterPoint((("modeltap.error.code", code),), float(count))
                for code, count in sorted(serving.proxy_errors)
            ),
            proxy_retries=serving.proxy_retries,
            models=self.stats.model_views(),
            monitoring=monitoring,
            reference_id=self.reference.id if self.reference is not None else None,
            window_s=self.stats.window_s,
            performance=self.truth.views(time.monotonic()) if self.truth.enabled else (),
            labels=tuple(sorted(self.truth.label_counts().items())) if self.truth.enabled else (),
            business=self._business_views(),
            outcomes=tuple(sorted(self.business.outcome_counts().items())),
            cold_starts=serving.cold_starts,
            resources=serving.resources,
            container=self.container.sample(),
            gpus=gpus,
        )
        snapshot = self._versions(snapshot)
        snapshot = self._alerts(snapshot)
        # After the alerts: an EMERGENCY they raised may have asked for the rollback just now.
        self._latest = dataclasses.replace(snapshot, rollback=self._rollback_view(serving))
        return self._latest

    def _gpus(self) -> tuple[GpuDevice, ...]:
        """Each GPU with the level of its memory use: WARNING above `gpu_memory_warning`,
        CRITICAL above `gpu_memory_critical`."""
        config = self.config
        judged = []
        for device in self.gpu.sample():
            use = device.memory_use or 0.0
            level = Level.OK
            if use > config.gpu_memory_critical:
                level = Level.CRITICAL
            elif use > config.gpu_memory_warning:
                level = Level.WARNING
            judged.append(dataclasses.replace(device, level=int(level)))
        return tuple(judged)

    def _business_views(self) -> tuple[BusinessSummary, ...]:
        """The business figures, or none this time (counted) if they cannot be computed: the
        snapshot, and everything else it carries, is published regardless."""
        if not self.config.outcome_names:
            return ()
        try:
            return self.business.views(time.monotonic())
        except Exception:
            self.errors["business"] += 1
            _log.debug("computing the business figures failed", exc_info=True)
            return ()

    def _alerts(self, snapshot: Snapshot) -> Snapshot:
        """Evaluate the alerts on this snapshot, send what is due, and attach their state."""
        now = time.monotonic()
        offset = time.time() - now  # monotonic -> unix seconds
        config = self.config
        observed = observations(
            snapshot, config.psi_warning, config.psi_critical, self.default_name, self.truth.thresholds
        )
        due = self.alert_book.evaluate(observed, now)
        self._log_info(observed)
        for notification in due:
            if notification.kind == "firing" and notification.severity == "emergency":
                # EMERGENCY's response: roll back, where the user enabled it (the events below
                # log and notify it).
                emergency = [a.key.subject for a in notification.alerts]
                self.rollback.on_emergency(notification.model, notification.version, emergency)
            if (
                notification.kind == "firing"
                and notification.severity == "warning"
                and config.alert_boost_s > 0
            ):
                self.boost_until = max(self.boost_until, now + config.alert_boost_s)
                subjects = ", ".join(a.key.subject for a in notification.alerts)
                self.boost_reason = f"warning on {notification.model} {notification.version}: {subjects}"
            _log.log(
                logging.WARNING if notification.kind != "resolved" else logging.INFO,
                "modeltap alert %s: %s %s version %s: %s",
                notification.kind,
                notification.severity,
                notification.model,
                notification.version,
                ", ".join(a.key.subject for a in notification.alerts),
            )
            to_unix = lambda t: t + offset  # noqa: E731
            self.webhooks.offer(
                notification_document(
                    notification, to_unix, self.status_url, self.runbooks, window_s=self.stats.window_s
                )
            )
            self.slack.offer(slack_message(notification, to_unix, self.runbooks, status_url=self.status_url))
            self.alertmanager.notify(notification, now, lambda t: t + offset, snapshot.reference_id)
        for command in self.rollback.drain_events():
            self._announce_rollback(command, now, offset)
        self.alertmanager.tick(now, lambda t: t + offset)
        views = tuple(
            AlertView(
                a.key.model, a.key.version, a.key.subject, a.state, a.severity, int(a.level),
                a.score, a.threshold, a.since_s + offset,
            )
            for a in self.alert_book.alerts()
        )  # fmt: skip
        senders = (self.webhooks, self.alertmanager.poster, self.slack)
        counts = tuple(
            (name, sum(getattr(sender, name) for sender in senders)) for name in ("dropped", "failed", "sent")
        )
        configured = any(sender.urls for sender in senders)
        boost = (self.boost_until + offset, self.boost_reason) if self.boosted(now) else None
        return dataclasses.replace(
            snapshot, alerts=views, notifications=counts if configured else (), boost=boost
        )

    def _versions(self, snapshot: Snapshot) -> Snapshot:
        """The versions the answers carry, each new one logged once (INFO, with its time), and
        the mismatch with `expected_model_version` (WARNING while the answers carry another)."""
        now = time.monotonic()
        offset = time.time() - now
        served = self.stats.served
        seen = tuple(
            (name, version, s.first_s + offset, s.last_s + offset) for name, version, s in served.seen()
        )
        for name, version, first, _ in seen:
            if (name, version) not in self._versions_logged and len(self._versions_logged) < 4096:
                self._versions_logged.add((name, version))
                _log.info(
                    "modeltap: model %s answers as version %s (first at %s)",
                    name,
                    version,
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first)),
                )
        expected = self.config.expected_model_version
        mismatch = None
        if expected is not None:
            current = served.current(self.default_name, now, self.stats.window_s)
            level = Level.WARNING if any(v != expected for v in current) else Level.OK
            mismatch = VersionMismatch(self.default_name, expected, current, int(level))
        return dataclasses.replace(snapshot, versions_seen=seen, version_mismatch=mismatch)

    def _rollback_view(self, serving: ServingCounts) -> RollbackView | None:
        control = self.rollback
        if control.fallback is None:
            return None
        route = serving.route or RouteReport()
        adopted = control.adopt(route)
        if adopted is not None:
            # Rolled back before this monitor started: keep the Alertmanager alert alive again.
            now = time.monotonic()
            offset = time.time() - now
            self._hold_rollback_alert(adopted, now, offset)
        return RollbackView(
            fallback_upstream=control.fallback,
            auto=control.auto,
            active=route.active,
            processes=route.processes,
            on_fallback=route.on_fallback,
            cause=route.cause,
            by=route.by,
            since_unix_s=route.since_unix_s,
            requested=control.command.target if control.command is not None else None,
        )

    def _announce_rollback(self, command: RouteCommand, now: float, offset: float) -> None:
        """A switch of the rollback: a log line and a notification to every receiver."""
        fallback = self.rollback.fallback or ""
        rolled_back = command.target == FALLBACK
        _log.warning(
            "modeltap rollback %s: new requests go to %s (by %s): %s",
            "on" if rolled_back else "cancelled",
            fallback if rolled_back else "the upstream",
            command.by,
            command.cause or "no cause given",
        )
        if rolled_back:
            self._rolled_back_from = self._answering_version()
        # A cancel names the version the rollback moved away from (the fallback answers now; a
        # monitor that took over a rollback started before it does not know which it was).
        model, version = self.default_name, self._rolled_back_from
        document = rollback_notification(command, fallback, model, version, now + offset)
        document["status_url"] = self.status_url
        self.webhooks.offer(document)
        self.slack.offer(rollback_slack(document))
        self._hold_rollback_alert(command, now, offset)

    def _hold_rollback_alert(self, command: RouteCommand, now: float, offset: float) -> None:
        """`ModelTapRollback` in Alertmanager: active while rolled back, ended by the cancel."""
        model, version = self.default_name, self._rolled_back_from
        key = AlertKey(model, "", "rollback")
        to_unix = lambda t: t + offset  # noqa: E731
        if command.target == FALLBACK:
            document = rollback_notification(
                command, self.rollback.fallback or "", model, version, now + offset
            )
            alert = rollback_alert(document, format_time(now + offset), self.runbooks.url("rollback"))
            self.alertmanager.hold(key, alert, now, to_unix)
        else:
            self.alertmanager.drop(key, now, to_unix)

    def writes(self) -> dict[str, WriteEndpoint]:
        """The POST endpoints this analysis serves beside `/feedback` (a fire drill, outcomes)."""
        return {"/drill": self.drills.start, "/outcome": self.outcome}

    def reads(self) -> dict[str, ReadEndpoint]:
        """The GET endpoints this analysis serves beside the views (the last drill's report)."""
        return {"/drill": self.drills.status}

    def _answering_version(self) -> str:
        """The version a rollback moves traffic away from: the configured one, else the one that
        answered most of the model's exchanges in the last snapshot (what `/status` shows)."""
        if self.config.model_version:
            return self.config.model_version
        mine = [
            m for m in self.latest_snapshot().models if m.name == self.default_name and m.version != UNKNOWN
        ]
        busiest = max(mine, key=lambda m: m.requests, default=None)
        return busiest.version if busiest is not None else UNKNOWN

    def _drill_settings(self) -> DrillSettings:
        """The drill's copy of this configuration; its model version is the busiest one seen."""
        config = self.config
        busiest = max(self.latest_snapshot().models, key=lambda m: m.requests, default=None)
        return DrillSettings(
            model=self.default_name,
            version=busiest.version if busiest is not None else config.model_version or UNKNOWN,
            window_slots=config.window_slots,
            window_slot_s=config.window_slot_s,
            min_samples=config.min_samples,
            psi_warning=config.psi_warning,
            psi_critical=config.psi_critical,
            for_s=config.alert_for_s,
            group_wait_s=config.alert_group_wait_s,
            resolve_s=config.alert_resolve_s,
            webhooks=tuple(config.alert_webhooks),
            alertmanagers=tuple(config.alertmanagers),
            slack_webhooks=tuple(config.alert_slack_webhooks),
            status_url=self.status_url,
            runbooks=self.runbooks,
        )

    def boosted(self, now: float) -> bool:
        """Whether WARNING's raised monitoring is in effect."""
        return now < self.boost_until

    def boost_trace_ratio(self, now: float) -> float | None:
        """The trace ratio to apply now (doubled while boosted), or None for other samplers."""
        sampler = self.config.export.sampler
        if sampler.name not in ("traceidratio", "parentbased_traceidratio"):
            return None
        return min(1.0, 2 * sampler.ratio) if self.boosted(now) else sampler.ratio

    def _log_info(self, observed: list[Observation]) -> None:
        """INFO (a significant test, a small magnitude): one structured line when a subject
        enters it, none while it stays; no alert, no notification."""
        now_info = set()
        for observation in observed:
            key = observation.key
            if observation.level == Level.INFO:
                now_info.add((key.model, key.version, key.subject))
                if (key.model, key.version, key.subject) not in self._info:
                    _log.info(
                        "modeltap level INFO: model=%s version=%s subject=%s score=%s",
                        key.model, key.version, key.subject,
                        f"{observation.score:.4f}" if observation.score is not None else "-",
                    )  # fmt: skip
        self._info = now_info

    def _serving_drops(self, serving: ServingCounts) -> list[CounterPoint]:
        """Drops counted outside the statistics (hand-off, span ring, export), with model attrs."""
        counts = dict(serving.dropped)
        exporter = self.exporter
        if exporter is not None and exporter.exports_spans:
            counts["span_queue_full"] = exporter.spans_dropped_queue_full
            counts["span_export_failed"] = exporter.spans_dropped_export_failed
            counts["rejected"] = exporter.spans_dropped_rejected
        return [
            CounterPoint((*self.model_attributes, ("modeltap.drop.reason", reason)), float(value))
            for reason, value in counts.items()
        ]

    def latest_snapshot(self) -> Snapshot:
        """The last published snapshot (an empty one before the first)."""
        snap = self._latest
        if snap is None:
            return Snapshot(
                taken_unix_ns=time.time_ns(),
                start_unix_ns=self.start_unix_ns,
                instance_id=self.instance_id,
                pid=os.getpid(),
            )
        return snap

    # ---- export ---------------------------------------------------------------------------------

    def flush_export(self, timeout_s: float) -> bool:
        return self.exporter.flush_now(timeout_s) if self.exporter is not None else True

    def shutdown(self, timeout_s: float) -> None:
        """Stop within `timeout_s` (the time left before the caller's deadline), however the
        receivers and the collector hang: the alert receivers together get at most half of it
        (2 s at most), and the final export what is left."""
        start = time.monotonic()
        budget = max(0.1, timeout_s)
        self.gpu.close()
        senders = (self.webhooks, self.alertmanager.poster, self.slack)
        close_all(senders, start + min(2.0, budget / 2))
        if self.exporter is not None:
            self.exporter.shutdown(max(0.0, start + budget - time.monotonic()))


def replica_name(config: ModelTapConfig, *, inline_worker: bool = False) -> str:
    """The replica this analysis judges, as its Alertmanager alerts name it: the configured
    `service.instance.id` (`OTEL_RESOURCE_ATTRIBUTES`, `export.resource_attributes`: a pod's name),
    else the host's name (a pod's too, in Kubernetes). Not the monitor's generated instance id:
    that changes when the monitor restarts (the SDK's `Resource.create` makes one up too). An
    inline analysis in one of a server's workers judges that worker's traffic alone: its pid is
    part of the name (`host/1234`)."""
    configured = config.export.resource_attributes.get(SERVICE_INSTANCE_ID)
    name = str(configured) if configured else socket.gethostname()
    return f"{name}/{os.getpid()}" if inline_worker else name
