"""Receivers: the webhook sender's retries, failures and bound; the Alertmanager labels; the
Slack text."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

from modeltap.alerts.alertmanager import alert_labels
from modeltap.alerts.runbooks import Runbooks
from modeltap.alerts.slack import slack_message
from modeltap.alerts.state import Alert, AlertKey, Notification
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
