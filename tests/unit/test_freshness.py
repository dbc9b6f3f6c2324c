"""Data freshness (issue "operations and business", item 4): the `freshness_key` column's event
times (epoch seconds or RFC 3339) give each row's age at the exchange; the column is kept out of
drift and schema checks; the window's p95 age has a level against `freshness_max_age_s`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from modeltap._types import Receive, Scope, Send
from modeltap.reference import build_profile, write_profile
from modeltap.stats.freshness import event_seconds, freshness_level
from modeltap.stats.scores import Level
from tests.support.asgi_driver import http_request_messages, make_http_scope, run_asgi
from tests.support.tapping import MakeMiddleware, status_document


async def model(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    rows = len(json.loads(body)["instances"])
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": json.dumps({"predictions": [0.5] * rows}).encode()})


def send_rows(middleware: Any, rows: list[dict[str, Any]]) -> None:
    body = json.dumps({"instances": rows}).encode()
    run_asgi(middleware, make_http_scope("POST", "/v1/models/churn:predict"), http_request_messages(body))


def monitored(make_middleware: MakeMiddleware, reference: Path, max_age_s: float) -> Any:
    return make_middleware(
        model,
        model_name="churn",
        reference=str(reference),
        freshness_key="event_time",
        freshness_max_age_s=max_age_s,
    )


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    """A profile whose inputs include the event-time column, as a training table would."""
    path = tmp_path / "reference.json"
    write_profile(
        build_profile(
            {"amount": [float(i % 50) for i in range(600)], "event_time": [1.7e9 + i for i in range(600)]},
            model_name="churn",
        ),
        path,
    )
    return path


def test_ages_from_epoch_and_rfc3339_and_the_column_is_out_of_drift_and_schema(
    make_middleware: MakeMiddleware, reference: Path
) -> None:
    middleware = monitored(make_middleware, reference, max_age_s=3600.0)
    now = time.time()
    rows: list[dict[str, Any]] = [{"amount": 10.0, "event_time": now - 60} for _ in range(96)]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 7200))
    rows += [{"amount": 10.0, "event_time": stamp} for _ in range(4)]
    send_rows(middleware, rows)
    document = status_document(middleware)
    [version] = document["models"]
    freshness = version["freshness"]
    assert freshness["rows"] == 100
    assert freshness["age_p50_s"] == pytest.approx(60, rel=0.05)
    assert freshness["age_max_s"] == pytest.approx(7200, rel=0.01)
    assert freshness["age_p95_s"] == pytest.approx(60, rel=0.05)  # 96 of 100 are a minute old
    assert freshness["level"] == "OK"
    assert "event_time" not in {f["name"] for f in version["features"]}
    assert document["violations"] == {}  # no schema violation for the column taken out


def test_a_stale_p95_is_a_warning_then_critical_and_bad_times_are_type_violations(
    make_middleware: MakeMiddleware, reference: Path
) -> None:
    middleware = monitored(make_middleware, reference, max_age_s=600.0)
    now = time.time()
    send_rows(middleware, [{"amount": 1.0, "event_time": now - 5000}])
    lone = status_document(middleware)["models"][0]["freshness"]
    assert (lone["rows"], lone["level"]) == (1, "OK")  # one stale row: no p95 to judge yet
    send_rows(
        middleware,
        [{"amount": 1.0, "event_time": now - 900} for _ in range(50)]
        + [{"amount": 1.0, "event_time": "yesterday"}],
    )
    document = status_document(middleware)
    assert document["models"][0]["freshness"]["level"] == "WARNING"
    assert document["violations"] == {"type": 1}
    send_rows(middleware, [{"amount": 1.0, "event_time": now - 5000} for _ in range(500)])
    assert status_document(middleware)["models"][0]["freshness"]["level"] == "CRITICAL"


def test_without_the_key_nothing_is_measured(make_middleware: MakeMiddleware, reference: Path) -> None:
    middleware = make_middleware(model, model_name="churn", reference=str(reference))
    send_rows(middleware, [{"amount": 1.0, "event_time": time.time()}])
    [version] = status_document(middleware)["models"]
    assert version["freshness"] is None
    assert "event_time" in {f["name"] for f in version["features"]}


def test_event_times_parse_as_documented() -> None:
    assert event_seconds(1796500000) == 1796500000.0
    assert event_seconds("1796500000.5") == 1796500000.5
    assert event_seconds("2026-12-05T21:51:28Z") == 1796507488.0
    assert event_seconds("2026-12-05T22:51:28+01:00") == 1796507488.0
    assert event_seconds("2026-12-05T21:51:28") == 1796507488.0  # naive: UTC
    for bad in ("yesterday", "", None, True, float("nan"), [1]):
        assert event_seconds(bad) is None
    assert freshness_level(None, 60.0) == Level.OK
    assert freshness_level(61.0, 60.0) == Level.WARNING
    assert freshness_level(121.0, 60.0) == Level.CRITICAL
    # A p95 of a few rows is the oldest row: no level on fewer than 20 (one stale row was CRITICAL).
    assert freshness_level(1000.0, 60.0, rows=19) == Level.OK
    assert freshness_level(1000.0, 60.0, rows=20) == Level.CRITICAL
