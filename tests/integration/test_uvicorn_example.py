"""`examples/fastapi_app.py` served by a real uvicorn on loopback, driven with real HTTP requests.

Checks the model's answers, the local views (`/modeltap/status`, `/modeltap/metrics`) and that the
middleware changes no byte of any response: the same example, loaded a second time with modeltap
removed from its middleware list, must answer identically.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI

from modeltap import ModelTapMiddleware
from tests.support.servers import serve
from tests.support.tapping import PROMETHEUS_LABEL

EXAMPLE_APP = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app.py"
PREDICT_ROUTE = "/v1/models/{model}:predict"
PREDICT_PATH = "/v1/models/churn:predict"
# The example's documented model: a logistic regression over four features, missing values as 0.0.
WEIGHTS = (0.8, -0.4, 0.25, 1.1)
BIAS = -0.3
# As Go's Prometheus client writes them ("1", not "1.0"): the Collector's exporter does the same.
SEMCONV_LE = ["0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1", "2.5", "5"]
SEMCONV_LE += ["7.5", "10", "+Inf"]
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def expected_score(row: list[float | None]) -> float:
    z = BIAS + sum(w * (0.0 if x is None else x) for w, x in zip(WEIGHTS, row, strict=True))
    return round(1.0 / (1.0 + math.exp(-z)), 6)


def load_example(module_name: str) -> FastAPI:
    """A fresh `app` from examples/fastapi_app.py (its own middleware, hence its own counts)."""
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLE_APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.app
    assert isinstance(app, FastAPI)
    return app


def without_modeltap(app: FastAPI) -> FastAPI:
    kept = [m for m in app.user_middleware if cast(object, m.cls) is not ModelTapMiddleware]
    assert len(kept) == len(app.user_middleware) - 1, "the example no longer adds ModelTapMiddleware"
    app.user_middleware = kept
    return app


@pytest.fixture
def example_env(clean_otel_env: None, monkeypatch: pytest.MonkeyPatch, own_monitor: Path) -> None:
    """No OTLP endpoint, no reference, the example's default model version; the example runs as
    users run it, with its monitor process (one of its own per test)."""
    monkeypatch.delenv("MODEL_VERSION", raising=False)


@pytest.fixture
def example_url(example_env: None) -> Iterator[str]:
    with serve(load_example("modeltap_example_tapped")) as url:
        yield url


@pytest.fixture(scope="module")
def answering_url() -> Iterator[str]:
    """One tapped example for the tests that never read its counts, set up as `example_env` sets
    it up (its own monitor). They cannot disturb one another, and a server stopped right after
    its first requests waits at its exit for its monitor to have started and taken them: once
    for the module rather than once per test."""
    directory = Path(tempfile.mkdtemp(prefix="mt-"))  # short: Unix socket paths are limited
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            for name in list(os.environ):
                if name.startswith(("OTEL_", "MODELTAP_")):
                    monkeypatch.delenv(name)
            monkeypatch.delenv("MODEL_VERSION", raising=False)
            monkeypatch.setenv("MODELTAP_RUN_DIR", str(directory))
            monkeypatch.setenv("MODELTAP_MONITOR_ID", f"t{uuid.uuid4().hex[:12]}")
            with serve(load_example("modeltap_example_answering")) as url:
                yield url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def bare_url(example_env: None) -> Iterator[str]:
    with serve(without_modeltap(load_example("modeltap_example_bare"))) as url:
        yield url


def predict_body(rows: list[list[float | None]]) -> dict[str, Any]:
    return {"instances": rows}


# 5 predictions (6 rows, one value missing), 2 health checks, 1 body that is not JSON.
PREDICTIONS: list[list[list[float | None]]] = [
    [[0.1, 2, 3.5, 1]],
    [[0, 0, 0, 0]],
    [[1, 1, 1, 1], [-2, 0.5, 4, 0]],
    [[None, 0, 0, 0]],
    [[0.1, 2, 3.5, 1]],
]


def send_mixed_traffic(client: httpx.Client) -> None:
    for rows in PREDICTIONS:
        assert client.post(PREDICT_PATH, json=predict_body(rows)).status_code == 200
    for _ in range(2):
        assert client.get("/health").status_code == 200
    invalid = client.post(
        PREDICT_PATH, content=b'{"instances": [[1, 2', headers={"content-type": "application/json"}
    )
    assert invalid.status_code == 422


def wait_for_status(client: httpx.Client, total: int, timeout: float = 5.0) -> dict[str, Any]:
    """Poll `/modeltap/status` (published every snapshot interval) until it counts `total` requests."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/modeltap/status")
        assert response.status_code == 200
        document: dict[str, Any] = response.json()
        if document["requests"]["total"] >= total or time.monotonic() >= deadline:
            return document
        time.sleep(0.02)


# ---- the model ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("rows", "body"),
    [
        ([[0.1, 2, 3.5, 1]], b'{"predictions":[0.72212]}'),
        ([[1, 1, 1, 1], [-2, 0.5, 4, 0]], b'{"predictions":[0.809998,0.24974]}'),
        ([[None, 0, 0, 0]], b'{"predictions":[0.425557]}'),
        ([], b'{"predictions":[]}'),
    ],
)
def test_predictions_are_the_documented_model(
    answering_url: str, rows: list[list[float | None]], body: bytes
) -> None:
    with httpx.Client(base_url=answering_url) as client:
        response = client.post(PREDICT_PATH, json=predict_body(rows))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == body
    assert response.json()["predictions"] == [expected_score(row) for row in rows]


@pytest.mark.timeout(60)
def test_health(answering_url: str) -> None:
    with httpx.Client(base_url=answering_url) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.content == b'{"status":"ok"}'


@pytest.mark.timeout(60)
def test_responses_are_byte_identical_to_the_app_without_modeltap(answering_url: str, bare_url: str) -> None:
    def exchange(base_url: str) -> list[tuple[int, list[tuple[str, str]], bytes]]:
        with httpx.Client(base_url=base_url) as client:
            responses = [
                client.post(PREDICT_PATH, json=predict_body([[0.1, 2, 3.5, 1]])),
                client.post(PREDICT_PATH, json=predict_body([[1, 1, 1, 1], [None, 0.5, 4, 0]])),
                client.post(
                    "/v1/models/other:predict",
                    content=b'{"instances": [[1, 2',
                    headers={"content-type": "application/json"},
                ),
                client.post(PREDICT_PATH, content=b"[1, 2, 3]", headers={"content-type": "application/json"}),
                client.get(PREDICT_PATH),
                client.get("/health"),
                client.head("/health"),
                client.get("/no/such/route"),
                client.get("/openapi.json"),
            ]
        # `date` is the only header allowed to differ: it is the wall clock.
        return [
            (r.status_code, [(k, v) for k, v in r.headers.multi_items() if k != "date"], r.content)
            for r in responses
        ]

    tapped, bare = exchange(answering_url), exchange(bare_url)
    assert [status for status, _, _ in tapped] == [200, 200, 422, 422, 405, 200, 405, 404, 200]
    assert tapped == bare


# ---- the local views -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_status_view_counts_the_traffic(example_url: str) -> None:
    with httpx.Client(base_url=example_url) as client:
        send_mixed_traffic(client)
        status = wait_for_status(client, total=8)
        # Reading the views is not traffic: a second read counts the same.
        again = client.get("/modeltap/status").json()

    assert status["requests"] == {"total": 8, "errors": 0, "client_disconnected": 0, "dropped": 0}
    assert again["requests"] == status["requests"]
    assert status["model"] == {"name": "churn", "versions": ["1"]}
    assert status["latency_s"]["count"] == 8
    assert status["latency_s"]["mean"] > 0
    # The numbers come from the monitor process, fed by this (serving) process.
    assert status["monitoring"]["mode"] == "process"
    assert status["monitoring"]["feeders"] == [os.getpid()]
    assert status["process"]["pid"] != os.getpid()
    assert status["violations"] == {"decode_error": 1, "missing": 1}
    (model,) = status["models"]
    assert (model["name"], model["version"], model["requests"], model["errors"]) == ("churn", "1", 8, 0)
    assert model["decoded_rows"] == sum(len(rows) for rows in PREDICTIONS)
    # No OTLP endpoint configured: nothing attempted, nothing failed.
    assert status["monitoring"]["export_failures"] == {}
    assert status["monitoring"]["last_export_unix_s"] == {}
    assert status["monitoring"]["queue_depth"] == 0


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"not a Prometheus sample line: {line!r}"
        labels = dict(PROMETHEUS_LABEL.findall(match["labels"] or ""))
        samples.append((match["name"], labels, float(match["value"])))
    return samples


def sample_values(
    samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str
) -> list[tuple[dict[str, str], float]]:
    return [
        (found, value)
        for sample, found, value in samples
        if sample == name and all(found.get(k) == v for k, v in labels.items())
    ]


@pytest.mark.timeout(60)
def test_metrics_view_exposes_the_same_counts(example_url: str) -> None:
    with httpx.Client(base_url=example_url) as client:
        send_mixed_traffic(client)
        wait_for_status(client, total=8)
        response = client.get("/modeltap/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"] == PROMETHEUS_CONTENT_TYPE
    text = response.text
    assert "# TYPE http_server_request_duration_seconds histogram" in text
    samples = parse_samples(text)
    model = {"modeltap_model_name": "churn", "modeltap_model_version": "1"}

    def count(route: str, status: str) -> float:
        (found,) = sample_values(
            samples,
            "http_server_request_duration_seconds_count",
            http_route=route,
            http_response_status_code=status,
            **model,
        )
        return found[1]

    assert count(PREDICT_ROUTE, "200") == 5
    assert count(PREDICT_ROUTE, "422") == 1
    assert count("/health", "200") == 2
    buckets = sample_values(
        samples,
        "http_server_request_duration_seconds_bucket",
        http_route=PREDICT_ROUTE,
        http_response_status_code="200",
    )
    assert [labels["le"] for labels, _ in buckets] == SEMCONV_LE
    values = [value for _, value in buckets]
    assert values == sorted(values)  # cumulative
    assert values[-1] == 5
    ((_, queue_full),) = sample_values(
        samples, "modeltap_capture_dropped_total", modeltap_drop_reason="queue_full"
    )
    assert queue_full == 0
    violations = {
        labels["modeltap_violation_reason"]: value
        for labels, value in sample_values(samples, "modeltap_data_quality_violations_total", **model)
    }
    assert violations == {"decode_error": 1, "missing": 1}
    ((_, depth),) = sample_values(samples, "modeltap_queue_depth")
    assert depth == 0


@pytest.mark.timeout(60)
def test_views_are_json_and_text_not_app_routes(answering_url: str, bare_url: str) -> None:
    with httpx.Client(base_url=answering_url) as tapped, httpx.Client(base_url=bare_url) as bare:
        status = tapped.get("/modeltap/status")
        assert status.headers["content-type"] == "application/json"
        assert json.loads(status.content)["model"]["name"] == "churn"
        assert tapped.get("/modeltap/nothing").status_code == 404
        assert tapped.post("/modeltap/status").status_code == 405
        # Without the middleware the prefix is just an unknown route of the app.
        assert bare.get("/modeltap/status").status_code == 404
