"""Receivers: the webhook sender's retries, failures and bound; the Alertmanager labels; the
Slack text."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
from typing import Any

from modeltap.alerts.alertmanager import AlertmanagerSender, alert_labels, format_time
from modeltap.alerts.runbooks import Runbooks
from modeltap.alerts.slack import slack_message
from modeltap.alerts.state import Alert, AlertBook, AlertKey, Notification, Observation
from modeltap.alerts.webhook import QUEUE_MAX, WebhookSender, notification_document
from modeltap.stats.scores import Level
from tests.support.backends import wait_for
from tests.support.server_process import free_port


class _Flaky(http.server.ThreadingHTTPServer):
    def __init__(self, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures = failures
        self.bodies: list[Any] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Flaky

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        status = 500 if self.server.failures > 0 else 200
        self.server.failures -= 1
        if status == 200:
            self.server.bodies.append(body)
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


ALERT = Alert(
    AlertKey("churn", "1", "monthly_charges"), "firing", "critical", Level.CRITICAL, 0.93, 0.2, 5.0, 4.0
)
NOTIFICATION = Notification("firing", "critical", "churn", "1", (ALERT,))


def test_a_failing_receiver_is_retried_with_backoff_and_counted() -> None:
    server = _Flaky(failures=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        sender = WebhookSender((url,), backoff_s=0.05)
        sender.offer(notification_document(NOTIFICATION, lambda t: 1000.0 + t))
        assert wait_for(lambda: sender.sent == 1, 10)
        [body] = server.bodies
        assert body["alerts"][0]["subject"] == "monthly_charges"
        assert body["alerts"][0]["since_unix_s"] == 1005.0
        assert sender.failed == 0
        dead = WebhookSender((f"http://127.0.0.1:{free_port()}/hook",), backoff_s=0.01)
        dead.offer({"x": 1})
        assert wait_for(lambda: dead.failed == 1, 10)
        dead.close(1.0)
        sender.close(1.0)
    finally:
        server.shutdown()
        server.server_close()


def test_the_queue_is_bounded_and_drops_the_oldest() -> None:
    sender = WebhookSender((f"http://127.0.0.1:{free_port()}/hook",), timeout_s=0.2, backoff_s=0.5)
    for i in range(QUEUE_MAX + 50):
        sender.offer({"n": i})
    assert sender.dropped >= 49  # the sender thread may have taken one or two already
    sender.close(0.1)


def test_alertmanager_labels_are_those_of_the_rules_alerts() -> None:
    assert alert_labels(AlertKey("churn", "1", "monthly_charges"), "critical", "sha256:ab") == {
        "alertname": "ModelTapFeatureDrift",
        "severity": "critical",
        "modeltap_model_name": "churn",
        "modeltap_model_version": "1",
        "modeltap_feature_role": "input",
        "modeltap_feature_name": "monthly_charges",
        "modeltap_reference_id": "sha256:ab",
    }
    assert (
        alert_labels(AlertKey("churn", "1", "output:prediction"), "warning", None)["modeltap_feature_role"]
        == "output"
    )
    assert (
        alert_labels(AlertKey("churn", "1", "latency"), "warning", "x")["alertname"] == "ModelTapLatencyHigh"
    )


class _Posted:
    """Stands in for the sender's poster: keeps each batch offered to Alertmanager."""

    urls = ("http://127.0.0.1:9093/api/v2/alerts",)

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    def offer(self, batch: list[dict[str, Any]], tag: str | None = None) -> None:
        self.batches.append(batch)


def _through_alertmanager(levels: list[Level]) -> list[list[tuple[str, str]]]:
    """Feed one feature's level, one snapshot a second, through the alert book to an Alertmanager
    sender; returns each batch sent as (severity label, "firing" or "ended") pairs."""
    book = AlertBook(for_s=0.0, resolve_s=0.0, group_wait_s=0.0)
    sender = AlertmanagerSender(("http://127.0.0.1:9093",))
    posted = _Posted()
    sender.poster = posted  # type: ignore[assignment]
    key = AlertKey("churn", "1", "monthly_charges")
    for now, level in enumerate(levels, start=1):
        for notification in book.evaluate([Observation(key, level, 0.5, 0.2)], float(now)):
            sender.notify(notification, float(now), lambda t: 1000.0 + t, "sha256:ab")
    return [
        [
            (
                d["labels"]["severity"],
                "ended" if d["endsAt"] <= format_time(1000.0 + len(levels)) else "firing",
            )
            for d in batch
        ]
        for batch in posted.batches
    ]


def test_alertmanager_resolves_the_label_set_it_was_sent() -> None:
    # Announced critical, fell to warning (it keeps firing), then recovered: Alertmanager holds the
    # critical label set, and that is what ends; no warning it never had.
    assert _through_alertmanager([Level.CRITICAL, Level.WARNING, Level.OK]) == [
        [("critical", "firing")],
        [("critical", "ended")],
    ]
    assert _through_alertmanager([Level.WARNING, Level.OK]) == [
        [("warning", "firing")],
        [("warning", "ended")],
    ]


def test_alertmanager_ends_the_old_severity_when_an_alert_rises() -> None:
    # A firing warning that turns critical is announced at once: the warning label set ends in the
    # same batch, rather than staying active in Alertmanager until its endsAt.
    assert _through_alertmanager([Level.WARNING, Level.CRITICAL, Level.OK]) == [
        [("warning", "firing")],
        [("warning", "ended"), ("critical", "firing")],
        [("critical", "ended")],
    ]


def test_the_slack_text_names_the_model_the_subject_the_numbers_and_the_runbook() -> None:
    text = slack_message(NOTIFICATION, lambda t: t)["text"]
    assert "churn version 1" in text
    assert "`monthly_charges` critical: score 0.930 (threshold 0.200)" in text
    assert "|runbook>" in text


def test_runbooks_per_subject_then_kind_then_the_docs_section() -> None:
    runbooks = Runbooks({"latency": "https://wiki/latency", "monthly_charges": "https://wiki/pricing"},
                        "https://docs.example.com/runbooks.md")  # fmt: skip
    assert runbooks.url("monthly_charges") == "https://wiki/pricing"
    assert runbooks.url("latency") == "https://wiki/latency"
    assert runbooks.url("output:prediction") == "https://docs.example.com/runbooks.md#modeltapfeaturedrift"
    assert runbooks.url("performance") == "https://docs.example.com/runbooks.md#modeltapperformancedrop"
    assert Runbooks().url("error_rate") == (
        "https://github.com/modeltap/modeltap/blob/main/docs/runbooks.md#modeltaperrorratehigh"
    )


def test_alertmanager_alerts_name_the_replica_that_judged_them() -> None:
    """The configured service.instance.id (a pod's name), else the host's name: stable across a
    restart of the monitor, unlike its generated instance id."""
    from modeltap.config import ExportConfig, ModelTapConfig
    from modeltap.worker.analyzer import replica_name

    assert replica_name(ModelTapConfig.from_env({})) == socket.gethostname()
    environ = {"OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=pod-7,k8s.namespace.name=ml"}
    assert replica_name(ModelTapConfig.from_env(environ)) == "pod-7"
    configured = ModelTapConfig(export=ExportConfig(resource_attributes={"service.instance.id": "pod-9"}))
    assert replica_name(configured) == "pod-9"
    # An inline analysis in one worker of several judges that worker alone.
    assert replica_name(configured, inline_worker=True) == f"pod-9/{os.getpid()}"
    labels = alert_labels(AlertKey("churn", "1", "latency"), "critical", None, "pod-7")
    assert labels["modeltap_instance"] == "pod-7"
    assert "modeltap_instance" not in alert_labels(AlertKey("churn", "1", "latency"), "critical", None)


def test_alert_labels_are_spelled_as_the_rules_spell_them() -> None:
    from modeltap.fleet import names

    labels = alert_labels(AlertKey("churn", "1", "amount"), "critical", "sha256:x")
    assert set(labels) == {"alertname", "severity", *names.MODEL_KEY, *names.FEATURE_KEY}
