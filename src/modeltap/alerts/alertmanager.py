"""Alerts to a Prometheus Alertmanager (`POST /api/v2/alerts`).

Each alert goes with the labels `modeltap rules` gives the same alert in Prometheus
(`alertname`, `severity`, `modeltap_model_name`, `modeltap_model_version`, and for feature
drift `modeltap_reference_id`, `modeltap_feature_role`, `modeltap_feature_name`), so that
routing and inhibition rules can use them, plus `modeltap_instance`, the replica that judged it:
each replica judges its own traffic, and Alertmanager merges alerts of one label set, so without
it one replica's recovery resolved the alert that others still fired (firing, resolved, firing
again a minute later). The fleet's own alerts are the rules' (no `modeltap_instance`).
Alertmanager resolves an alert it stops hearing about after its `resolve_timeout` (5 minutes by
default), so firing alerts are re-sent every `RESEND_S` with `endsAt` a few resends ahead; a
resolution is sent with `endsAt` now.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from modeltap.alerts.runbooks import DEFAULT_RUNBOOKS, Runbooks, parse_subject
from modeltap.alerts.state import Alert, AlertKey, Notification
from modeltap.alerts.webhook import WebhookSender
from modeltap.fleet import names

RESEND_S = 60.0
ALERT_NAMES = {
    "latency": "ModelTapLatencyHigh",
    "error_rate": "ModelTapErrorRateHigh",
    "performance": "ModelTapPerformanceDrop",
    "telemetry": "ModelTapTelemetryDropping",
    "version": "ModelTapVersionMismatch",
    "freshness": "ModelTapDataStale",
    "business": "ModelTapBusinessDrop",
    "gpu_memory": "ModelTapGpuMemoryHigh",
    "rollback": "ModelTapRollback",
}


def format_time(unix_s: float) -> str:
    """Alertmanager's timestamps: RFC 3339 in UTC."""
    return _time(unix_s)


def _time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, timezone.utc).isoformat().replace("+00:00", "Z")


INSTANCE_LABEL = "modeltap_instance"


def alert_labels(
    key: AlertKey, severity: str, reference_id: str | None, instance: str | None = None
) -> dict[str, str]:
    """The labels of an alert, read from its subject's structure (`parse_subject`): a feature's
    role and name as `modeltap rules` labels them, whatever the name holds (`latency`,
    `geo:country`); with `instance`, the replica that judged it."""
    subject = parse_subject(key.subject)
    labels = {
        "alertname": ALERT_NAMES.get(subject.kind, "ModelTapFeatureDrift"),
        "severity": severity,
        names.MODEL: key.model,
        names.VERSION: key.version,
    }
    if instance:
        labels[INSTANCE_LABEL] = instance
    if subject.kind == "feature":
        labels[names.ROLE] = subject.role
        labels[names.FEATURE] = subject.name
        if reference_id:
            labels[names.REFERENCE] = reference_id
    elif subject.kind == "business":
        labels["modeltap_business_metric"] = subject.name
    elif subject.kind == "gpu_memory":
        labels["hw_id"] = subject.name  # one alert per device
    return labels


class AlertmanagerSender:
    """Translates notifications into Alertmanager's API and keeps firing alerts alive there."""

    def __init__(
        self,
        urls: tuple[str, ...],
        status_url: str | None = None,
        drill: bool = False,
        runbooks: Runbooks = DEFAULT_RUNBOOKS,
        instance: str | None = None,
    ) -> None:
        self.poster = WebhookSender(tuple(url.rstrip("/") + "/api/v2/alerts" for url in urls))
        # The replica, stable across a restart of its monitor (a new label set would leave the
        # old one's alert active in Alertmanager until its `endsAt`).
        self.instance = instance
        self.status_url = status_url
        self.runbooks = runbooks
        # A fire drill's alerts carry `modeltap_drill="true"`: a label set of their own, so they
        # never merge with (or resolve) a real alert, and routes can send them elsewhere.
        self.drill = drill
        self._firing: dict[AlertKey, dict[str, Any]] = {}
        self._last_resend = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.poster.urls)

    def _document(
        self, alert: Alert, to_unix: Callable[[float], float], reference_id: str | None, ends_unix: float
    ) -> dict[str, Any]:
        score = f"{alert.score:.3f}" if alert.score is not None else "-"
        threshold = f"{alert.threshold:.3f}" if alert.threshold is not None else "-"
        labels = alert_labels(alert.key, alert.severity, reference_id, self.instance)
        if self.drill:
            labels["modeltap_drill"] = "true"
        document: dict[str, Any] = {
            "labels": labels,
            "annotations": {
                "summary": f"{'[drill] ' if self.drill else ''}{alert.key.subject} of {alert.key.model} "
                f"version {alert.key.version}: {alert.severity} (score {score}, threshold {threshold})",
                "runbook_url": self.runbooks.url(alert.key.subject),
            },
            "startsAt": _time(to_unix(alert.since_s)),
            "endsAt": _time(ends_unix),
        }
        if self.status_url:
            document["generatorURL"] = self.status_url
        return document

    def notify(
        self,
        notification: Notification,
        now: float,
        to_unix: Callable[[float], float],
        reference_id: str | None,
        tag: str | None = None,
    ) -> None:
        if not self.enabled:
            return
        batch = []
        ended = _time(to_unix(now))
        for alert in notification.alerts:
            # Alertmanager knows an alert by its labels, severity included: what ends is the label
            # set it was sent with. A firing alert that fell to a lower severity (it keeps firing,
            # see `AlertBook`) is resolved as it was announced, not as a warning Alertmanager never
            # had, which would leave the critical one active until its `endsAt`.
            sent = self._firing.pop(alert.key, None)
            if notification.kind == "resolved":
                document = sent or self._document(alert, to_unix, reference_id, to_unix(now))
                batch.append({**document, "endsAt": ended})
                continue
            document = self._document(alert, to_unix, reference_id, to_unix(now + 4 * RESEND_S))
            if sent is not None and sent["labels"] != document["labels"]:
                batch.append({**sent, "endsAt": ended})  # a new severity: the old label set is over
            self._firing[alert.key] = document
            batch.append(document)
        if batch:
            self.poster.offer(batch, tag)

    def tick(self, now: float, to_unix: Callable[[float], float]) -> None:
        """Re-send what is firing every RESEND_S, so Alertmanager keeps it active."""
        if not self.enabled or not self._firing or now - self._last_resend < RESEND_S:
            return
        self._last_resend = now
        ends = _time(to_unix(now + 4 * RESEND_S))
        batch = [{**document, "endsAt": ends} for document in self._firing.values()]
        self.poster.offer(batch)

    def hold(
        self, key: AlertKey, document: dict[str, Any], now: float, to_unix: Callable[[float], float]
    ) -> None:
        """An alert of modeltap's own (the rollback switch): sent now and kept alive until `drop`."""
        if not self.enabled:
            return
        document = {**document, "endsAt": _time(to_unix(now + 4 * RESEND_S))}
        self._firing[key] = document
        self.poster.offer([document])

    def drop(self, key: AlertKey, now: float, to_unix: Callable[[float], float]) -> None:
        """End what `hold` keeps alive (sent once more, with `endsAt` now)."""
        document = self._firing.pop(key, None)
        if document is not None and self.enabled:
            self.poster.offer([{**document, "endsAt": _time(to_unix(now))}])

    def close(self, timeout_s: float) -> None:
        self.poster.close(timeout_s)
