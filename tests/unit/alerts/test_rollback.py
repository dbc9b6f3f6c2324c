"""The monitor's side of the rollback switch: what it asks of the data planes, when it rolls back
by itself (an EMERGENCY alert, only where enabled), what the admin endpoints answer, and the
notification a switch sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modeltap.alerts.rollback import (
    FALLBACK,
    PRIMARY,
    RollbackControl,
    clean_cause,
    rollback_endpoint,
    route_report,
)
from modeltap.alerts.state import AlertKey, Observation
from modeltap.config import ModelTapConfig
from modeltap.snapshot import RouteReport, ServingCounts
from modeltap.stats.scores import Level
from modeltap.worker import analyzer as analyzer_module
from modeltap.worker.analyzer import Analyzer

FALLBACK_URL = "http://127.0.0.1:8081"


def test_nothing_is_asked_without_a_fallback() -> None:
    control = RollbackControl()
    assert control.request(FALLBACK, "why", "operator") is None
    assert control.pending_for(PRIMARY) is None


def test_a_request_is_sent_to_every_data_plane_that_does_not_follow_it_yet() -> None:
    control = RollbackControl()
    control.configure(FALLBACK_URL)
    command = control.request(FALLBACK, "bad version", "operator")
    assert command is not None
    assert control.pending_for(PRIMARY) == {
        "target": "fallback",
        "cause": "bad version",
        "by": "operator",
        "id": 1,
    }
    assert control.pending_for(None) == command.document()  # a data plane that just started
    assert control.pending_for(FALLBACK) is None  # follows already
    control.request(PRIMARY, "fixed", "operator")
    assert control.pending_for(FALLBACK) == {"target": "primary", "cause": "fixed", "by": "operator", "id": 2}
    assert [e.target for e in control.drain_events()] == [FALLBACK, PRIMARY]
    assert control.drain_events() == []


def test_a_rollback_asked_again_is_news_only_for_a_new_cause() -> None:
    control = RollbackControl()
    control.configure(FALLBACK_URL)
    for _ in range(3):  # a script that retries
        control.request(FALLBACK, "bad version", "operator")
    control.request(FALLBACK, "still bad: p99 doubled", "operator")
    assert [(e.target, e.cause) for e in control.drain_events()] == [
        (FALLBACK, "bad version"),
        (FALLBACK, "still bad: p99 doubled"),
    ]
    pending = control.pending_for(PRIMARY)
    assert pending is not None
    assert pending["cause"] == "still bad: p99 doubled"  # the newest asks


@pytest.mark.parametrize("auto", ["off", "emergency"])
def test_an_emergency_rolls_back_by_itself_only_where_enabled(auto: str) -> None:
    control = RollbackControl()
    control.configure(FALLBACK_URL, auto)
    first = control.on_emergency("churn", "2", ["revenue_per_request"])
    second = control.on_emergency("churn", "2", ["revenue_per_request"])
    if auto == "off":
        assert first is None
        assert control.command is None
    else:
        assert first is not None
        assert (first.target, first.by) == (FALLBACK, "auto")
        assert first.cause == "EMERGENCY on churn version 2: revenue_per_request"
        assert second is None  # rolled back already: one switch, one notification
        assert len(control.drain_events()) == 1


def test_the_data_planes_reports_sum_up() -> None:
    assert route_report([{"queue_depth": 0}]) is None  # no switch
    reports: list[dict[str, Any]] = [
        {"route": "fallback", "route_cause": "old", "route_by": "operator", "route_since_unix_s": 10.0},
        {"route": "fallback", "route_cause": "new", "route_by": "auto", "route_since_unix_s": 20.0},
        {"route": "primary", "route_cause": "", "route_by": "", "route_since_unix_s": None},
        {},  # a data plane that has not reported yet still counts as one to follow
    ]
    assert route_report(reports) == RouteReport(4, 2, "new", "auto", 20.0)


def test_an_operators_cause_is_bounded_and_printable() -> None:
    assert clean_cause("bad\x1b[31m version\n") == "bad[31m version"
    assert len(clean_cause("x" * 10_000)) == 500
    assert clean_cause(42) == ""


def _endpoint(target: str, report: RouteReport | None) -> tuple[RollbackControl, Any]:
    control = RollbackControl()
    control.configure(FALLBACK_URL)
    return control, rollback_endpoint(control, target, lambda: report)


def test_the_endpoint_refuses_without_a_fallback_and_bad_bodies() -> None:
    status, body = rollback_endpoint(RollbackControl(), FALLBACK, lambda: None)(b"", "")
    assert status == 409
    assert "--fallback-upstream" in json.loads(body)["error"]
    _, handle = _endpoint(FALLBACK, None)
    assert handle(b"[1, 2]", "application/json")[0] == 400
    assert handle(b"{not json", "application/json")[0] == 400


def test_the_endpoint_answers_200_once_every_data_plane_follows_else_202() -> None:
    control, handle = _endpoint(FALLBACK, RouteReport(2, 2, "x", "operator", 1.0))
    status, body = handle(b'{"cause": "canary regressed"}', "application/json")
    assert status == 200
    assert json.loads(body) == {
        "target": "fallback",
        "fallback_upstream": FALLBACK_URL,
        "cause": "canary regressed",
        "by": "operator",
        "applied": True,
        "processes": 2,
        "on_fallback": 2,
    }
    assert control.command is not None
    assert control.command.target == FALLBACK
    _, lagging = _endpoint(FALLBACK, RouteReport(2, 1, "x", "operator", 1.0))
    status, body = lagging(b"", "")
    assert status == 202
    assert json.loads(body)["cause"] == "rolled back by the operator"


def test_an_emergency_alert_rolls_back_logs_and_notifies(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ModelTapConfig.from_env({}, model_name="churn", alert_for_s=0.0, alert_group_wait_s=0.0)
    analyzer = Analyzer(config, None, mode="inline")
    analyzer.rollback.configure(FALLBACK_URL, "emergency")
    applied: list[str] = []
    analyzer.rollback.apply = lambda command: applied.append(command.target)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(analyzer.webhooks, "offer", sent.append)
    emergency = [Observation(AlertKey("churn", "2", "revenue"), Level.EMERGENCY, 0.3, 0.5)]
    monkeypatch.setattr(analyzer_module, "observations", lambda *args: emergency)
    snapshot = analyzer.publish(ServingCounts(route=RouteReport(1, 0)))
    assert applied == [FALLBACK]
    rollback = [d for d in sent if d["kind"] == "rollback"]
    assert len(rollback) == 1
    assert rollback[0]["severity"] == "emergency"
    assert rollback[0]["rollback"] == {
        "target": "fallback",
        "fallback_upstream": FALLBACK_URL,
        "cause": "EMERGENCY on churn version 2: revenue",
        "by": "auto",
        "at_unix_s": pytest.approx(rollback[0]["rollback"]["at_unix_s"]),
    }
    assert snapshot.rollback is not None
    assert snapshot.rollback.requested == FALLBACK
    analyzer.shutdown(1.0)


def test_a_restarted_monitor_adopts_the_data_planes_rollback(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ModelTapConfig.from_env({}, model_name="churn")
    analyzer = Analyzer(config, None, mode="process")
    analyzer.rollback.configure(FALLBACK_URL)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(analyzer.webhooks, "offer", sent.append)
    held: list[dict[str, Any]] = []
    monkeypatch.setattr(
        analyzer.alertmanager, "hold", lambda key, document, now, to_unix: held.append(document)
    )
    snapshot = analyzer.publish(
        ServingCounts(route=RouteReport(2, 1, "version 2 misbehaves", "operator", 100.0))
    )
    assert snapshot.rollback is not None
    assert (snapshot.rollback.active, snapshot.rollback.requested) == (True, FALLBACK)
    # A data plane that restarts (on the upstream) is asked to follow; nothing is announced again.
    assert analyzer.rollback.pending_for(PRIMARY) == {
        "target": "fallback",
        "cause": "version 2 misbehaves",
        "by": "operator",
        "id": 0,
    }
    assert sent == []
    assert [d["labels"]["alertname"] for d in held] == ["ModelTapRollback"]
    analyzer.shutdown(1.0)
