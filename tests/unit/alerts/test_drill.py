"""Fire drills in one analysis: exactly the expected alerts fire and resolve in the shadow, the
real statistics and alerts never see the drill, and a drill that cannot prove a path says so."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import pytest

from modeltap.cli import main as modeltap_main
from modeltap.config import ModelTapConfig
from modeltap.redaction import redact_url
from modeltap.reference.document import load_reference
from modeltap.snapshot import ServingCounts
from modeltap.worker.analyzer import Analyzer
from tests.support.asgi_driver import http_request_messages, make_http_scope, run_asgi
from tests.support.fleet_model import decide, training_rows, write_reference
from tests.support.tapping import MakeMiddleware
from tests.support.webhook import webhook

QUICK = {"alert_for_s": 0.5, "alert_group_wait_s": 0.2, "alert_resolve_s": 0.5}


def _run(analyzer: Analyzer, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = analyzer.drills.start(json.dumps(body).encode(), "application/json")
    assert status == 202, answer
    deadline = time.monotonic() + 60
    while True:
        report: dict[str, Any] = json.loads(analyzer.drills.status()[1])
        if report["state"] != "running" or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path: Path = write_reference(tmp_path)
    return path


def test_exactly_the_expected_alerts_fire_and_resolve_and_the_real_state_is_untouched(
    reference: Path,
) -> None:
    with webhook() as hook:
        config = ModelTapConfig.from_env({}, model_name="loans", alert_webhooks=(hook.url,), **QUICK)
        analyzer = Analyzer(config, load_reference(reference), mode="inline")
        report = _run(analyzer, {"scenario": "all", "timeout_s": 30})
        real = analyzer.publish(ServingCounts())
        analyzer.shutdown(1.0)
    assert report["state"] == "passed", report["problems"]
    subjects = {a["scenario"]: a["subject"] for a in report["alerts"]}
    assert subjects == {
        "covariate": "amount",
        "prediction": "output:prediction",
        "latency": "latency",
        "errors": "error_rate",
    }
    # One firing and one resolved notification, each listing exactly those subjects (the other
    # inputs, drawn like the reference, never drift).
    assert [(d["kind"], d["drill"]) for d in hook.received] == [("firing", True), ("resolved", True)]
    for document in hook.received:
        assert {a["subject"] for a in document["alerts"]} == set(subjects.values())
    assert report["receivers"][0]["firing_acknowledged_after_s"] is not None
    assert report["receivers"][0]["resolved_acknowledged_after_s"] is not None
    # The analysis itself saw nothing: no model state, no alert, no request.
    assert real.models == ()
    assert real.alerts == ()


def test_without_a_reference_only_latency_and_errors_can_be_drilled(tmp_path: Path) -> None:
    with webhook() as hook:
        config = ModelTapConfig.from_env({}, model_name="loans", alert_webhooks=(hook.url,), **QUICK)
        analyzer = Analyzer(config, None, mode="inline")
        report = _run(analyzer, {})
        analyzer.shutdown(1.0)
    assert report["state"] == "passed"
    assert {a["subject"] for a in report["alerts"]} == {"latency", "error_rate"}
    assert set(report["skipped"]) == {"covariate", "prediction"}


def test_a_drill_with_no_receiver_fails_and_says_why(reference: Path) -> None:
    config = ModelTapConfig.from_env({}, model_name="loans", **QUICK)
    analyzer = Analyzer(config, load_reference(reference), mode="inline")
    report = _run(analyzer, {"scenario": "latency"})
    analyzer.shutdown(1.0)
    assert report["state"] == "failed"
    assert report["alerts"][0]["fired_after_s"] is not None  # the alert path ran all the same
    assert report["problems"] == [
        "no receiver is configured (alert_webhooks, alertmanagers, alert_slack_webhooks): "
        "an alert would reach nobody"
    ]


def test_the_drill_endpoint_checks_its_body() -> None:
    analyzer = Analyzer(ModelTapConfig.from_env({}), None, mode="inline")
    assert analyzer.drills.status()[0] == 404
    for body in (b"[1]", b"{bad", b'{"scenario": "flood"}', b'{"timeout_s": 0}', b'{"timeout_s": true}'):
        assert analyzer.drills.start(body, "application/json")[0] == 400, body
    analyzer.shutdown(1.0)


def test_receivers_are_reported_without_their_secrets() -> None:
    assert redact_url("https://hooks.slack.com/services/T000/B000/XXXX") == "https://hooks.slack.com/…"
    assert redact_url("http://alertmanager:9093") == "http://alertmanager:9093"


def test_an_inline_middleware_serves_the_drill_endpoints(make_middleware: MakeMiddleware) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # never called: the views answer
        raise AssertionError("the drill endpoints must not reach the app")

    middleware = make_middleware(app)
    middleware.start()
    body = json.dumps({"scenario": "errors", "timeout_s": 5}).encode()
    started = run_asgi(middleware, make_http_scope("POST", "/modeltap/drill"), http_request_messages(body))
    assert started.status == 202
    assert json.loads(started.body)["alerts"][0]["subject"] == "error_rate"
    report = run_asgi(middleware, make_http_scope("GET", "/modeltap/drill", headers=[]))
    assert report.status == 200
    assert json.loads(report.body)["id"] == 1


def test_a_drill_that_times_out_resolves_what_it_fired(reference: Path) -> None:
    with webhook() as hook:
        config = ModelTapConfig.from_env(
            {}, model_name="loans", alert_webhooks=(hook.url,), alert_for_s=0.2, alert_group_wait_s=0.0,
            alert_resolve_s=600.0,  # the alerts cannot resolve within the drill's time
        )  # fmt: skip
        analyzer = Analyzer(config, load_reference(reference), mode="inline")
        report = _run(analyzer, {"scenario": "latency", "timeout_s": 3})
        analyzer.shutdown(1.0)
    assert report["state"] == "failed"
    assert report["problems"][0] == "not resolved within 3 s: latency"
    # The receiver got the firing notification and then the resolution: no drill incident left open.
    assert [(d["kind"], [a["subject"] for a in d["alerts"]]) for d in hook.received] == [
        ("firing", ["latency"]),
        ("resolved", ["latency"]),
    ]


def test_an_input_named_latency_and_latency_itself_are_drilled_as_two_alerts(tmp_path: Path) -> None:
    # The reference's first input, the one the covariate scenario shifts, is called `latency`.
    table = tmp_path / "train.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["latency", "income", "country", "prediction"])
        for row in training_rows(5000):
            writer.writerow([row["amount"], row["income"], row["country"], decide(row)])
    reference = tmp_path / "reference.json"
    assert modeltap_main(["profile", str(table), "-o", str(reference), "--prediction", "prediction"]) == 0
    with webhook() as hook:
        config = ModelTapConfig.from_env({}, model_name="loans", alert_webhooks=(hook.url,), **QUICK)
        analyzer = Analyzer(config, load_reference(reference), mode="inline")
        report = _run(analyzer, {"scenario": "all", "timeout_s": 30})
        analyzer.shutdown(1.0)
    assert report["state"] == "passed", report["problems"]
    subjects = {a["scenario"]: a["subject"] for a in report["alerts"]}
    assert (subjects["covariate"], subjects["latency"]) == ("input:latency", "latency")
    [firing] = [d for d in hook.received if d["kind"] == "firing"]
    assert {"input:latency", "latency"} <= {a["subject"] for a in firing["alerts"]}
