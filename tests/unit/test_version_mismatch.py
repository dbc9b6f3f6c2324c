"""Version mismatch (issue "operations and business", item 3): the served version is the one the
model's 2xx answers carry, never the configured `model_version`; WARNING while it differs from
`expected_model_version`; each new version is seen with its time; claims in error answers or
requests never count."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from modeltap._types import Receive, Scope, Send
from modeltap.alerts.observations import observations
from modeltap.snapshot import Snapshot, VersionMismatch
from modeltap.stats.aggregator import StatsAggregator
from modeltap.stats.served_versions import ServedVersions
from tests.support.asgi_driver import http_request_messages, make_http_scope, run_asgi
from tests.support.tapping import MakeMiddleware, status_document


def versioned(version: str, status: int = 200) -> Any:
    """A model server answering `status` with `x-model-version: version`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"application/json"), (b"x-model-version", version.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps({"predictions": [1]}).encode()})

    return app


def call(middleware: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    scope = make_http_scope("POST", "/v1/models/churn:predict", headers=headers)
    run_asgi(middleware, scope, http_request_messages(b'{"instances": [[1.0]]}'))


def test_the_answers_version_differing_from_the_expected_one_is_a_warning(
    make_middleware: MakeMiddleware, caplog: pytest.LogCaptureFixture
) -> None:
    # Statistics are filed under the configured version "1"; the answers say "2".
    middleware = make_middleware(
        versioned("2"), model_name="churn", model_version="1", expected_model_version="1"
    )
    with caplog.at_level(logging.INFO, logger="modeltap"):
        for _ in range(3):
            call(middleware)
        document = status_document(middleware)
    assert document["version_mismatch"] == {
        "model": "churn",
        "expected": "1",
        "served": ["2"],
        "level": "WARNING",
    }
    [seen] = document["versions_seen"]
    assert (seen["model"], seen["version"]) == ("churn", "2")
    assert seen["first_seen_unix_s"] <= seen["last_seen_unix_s"]
    assert [m["version"] for m in document["models"]] == ["1"]  # where the statistics are filed
    assert "modeltap: model churn answers as version 2" in caplog.text


def test_the_expected_version_answering_is_ok_and_claims_in_errors_or_requests_never_count(
    make_middleware: MakeMiddleware,
) -> None:
    middleware = make_middleware(versioned("1"), model_name="churn", expected_model_version="1")
    call(middleware, headers=[(b"x-model-version", b"evil")])  # a request's claim: not an answer
    document = status_document(middleware)
    assert document["version_mismatch"]["served"] == ["1"]
    assert document["version_mismatch"]["level"] == "OK"
    failing = make_middleware(versioned("9", status=500), model_name="churn", expected_model_version="1")
    call(failing)
    document = status_document(failing)
    assert document["versions_seen"] == []  # a 5xx vouches for nothing
    assert document["version_mismatch"] == {"model": "churn", "expected": "1", "served": [], "level": "OK"}


def test_without_an_expected_version_there_is_no_mismatch(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(versioned("2"), model_name="churn")
    call(middleware)
    document = status_document(middleware)
    assert document["version_mismatch"] is None
    assert [s["version"] for s in document["versions_seen"]] == ["2"]


def test_a_mismatch_is_a_version_alert_on_the_served_version() -> None:
    snapshot = Snapshot(
        taken_unix_ns=0,
        start_unix_ns=0,
        instance_id="x",
        pid=1,
        version_mismatch=VersionMismatch("churn", "1", ("2",), 2),
    )
    [observation] = observations(snapshot, 0.1, 0.2)
    assert (observation.key.model, observation.key.version, observation.key.subject) == (
        "churn",
        "2",
        "version",
    )
    assert int(observation.level) == 2


def test_served_versions_are_bounded_and_windowed() -> None:
    served = ServedVersions(max_versions=2)
    assert served.observe("churn", "1", now=0.0) is True
    assert served.observe("churn", "1", now=1.0) is False
    assert served.observe("churn", "2", now=5.0) is True
    assert served.current("churn", now=6.0, window_s=10.0) == ("2", "1")
    assert served.current("churn", now=12.0, window_s=10.0) == ("2",)
    assert served.observe("churn", "3", now=20.0) is True  # the one answered longest ago goes
    assert {v for _, v, _ in served.seen()} == {"2", "3"}
    assert served.over_cap == 1


def test_served_versions_not_answered_for_two_windows_are_forgotten() -> None:
    """The names are claims the model answered: each is remembered while it is answered, so a
    server that answers any claimed name cannot make the list grow for as long as it runs."""
    now = [1000.0]
    stats = StatsAggregator(series_limit=100, duration_bounds=(0.1,), clock=lambda: now[0])
    for round_ in range(50):
        for name in range(16):
            model = stats.identity(f"claimed-{round_}-{name}", "1", accepted=True)
            stats.note_served(model, "1")
        assert len(stats.served.seen()) == 16
        now[0] += 2 * stats.window_s + 1
        stats.expire()
    assert stats.served.seen() == []
    kept = stats.identity("churn", "1", accepted=True)
    stats.note_served(kept, "1")
    now[0] += stats.window_s
    stats.expire()
    assert [(name, version) for name, version, _ in stats.served.seen()] == [("churn", "1")]


def test_a_version_only_the_request_names_is_not_served(make_middleware: MakeMiddleware) -> None:
    """A 2xx answer to a URL that names version 9, carrying no version itself: 9 is the client's
    word, not the model's."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        body = json.dumps(
            {"outputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    middleware = make_middleware(app, model_name="churn", expected_model_version="1")
    request = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    scope = make_http_scope("POST", "/v2/models/churn/versions/9/infer")
    run_asgi(middleware, scope, http_request_messages(json.dumps(request).encode()))
    document = status_document(middleware)
    assert document["versions_seen"] == []
    assert document["version_mismatch"]["level"] == "OK"
