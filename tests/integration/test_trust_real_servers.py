"""Issue "trust" against real servers: a FastAPI model server on uvicorn, behind the sidecar or
wrapped by the middleware, with real sockets and a real OTLP receiver.

* Item 3: model names only the request claims (404 answers) create no state; `/metrics` stays small.
* Item 4: 1100 random keys per row leave the state, `/status` and `/metrics` bounded.
* Item 8: a classifier answering class labels 0/1, profiled with `--prediction`, is counted and
  compared as a categorical output, in `/status` and over OTLP.
* Item 10: errors of a server that names its version only in successful answers belong to it.
* Item 11: a client that read the status line and left, or left mid-upload, is no model error.
* Item 12: span names and `http.route` are protocol route templates, never raw paths.
"""

from __future__ import annotations

import asyncio
import csv
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from modeltap import ExportConfig, ModelTapConfig, ModelTapMiddleware, SamplerConfig
from modeltap.cli import main as modeltap_main
from tests.support.otlp_receiver import OtlpHttpReceiver
from tests.support.servers import serve
from tests.support.sidecar import RunningSidecar, running_sidecar

pytestmark = [pytest.mark.usefixtures("clean_otel_env"), pytest.mark.timeout(90)]

FEATURES = ("tenure", "charges")


def model_server() -> FastAPI:
    """`iris` (Open Inference Protocol) and `churn` (KServe V1 rows, class labels 0/1, its version
    only in successful answers, a 500 when asked to fail); any other model name is a 404."""
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        document = await request.json()
        if name != "iris":
            return JSONResponse({"error": f"model {name} not found"}, status_code=404)
        rows = document["inputs"][0]["shape"][0]
        output = {"name": "class", "shape": [rows], "datatype": "INT64", "data": [1] * rows}
        return JSONResponse({"model_name": "iris", "model_version": "1", "outputs": [output]})

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> Response:
        document = await request.json()
        if name != "churn":
            return JSONResponse({"error": "not found"}, status_code=404)
        if document.get("fail"):
            raise RuntimeError("model crashed")  # Starlette's 500, no version in it
        labels = [int(row[1] > 70.0) for row in document["instances"]]
        return JSONResponse({"predictions": labels, "model_version": "v3"})

    @app.post("/score")
    async def score(request: Request) -> Response:
        rows = await request.json()
        return JSONResponse({"prediction": [0.5] * len(rows)})

    @app.get("/stream")
    async def stream() -> Response:
        async def pieces() -> Any:
            for _ in range(20):
                yield b"x" * 100
                await asyncio.sleep(0.05)

        return StreamingResponse(pieces())

    return app


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve(model_server(), name="trust-upstream") as url:
        yield url


def monitoring(receiver: OtlpHttpReceiver | None = None, **options: Any) -> ModelTapConfig:
    export = ExportConfig(
        endpoint=receiver.endpoint if receiver is not None else None,
        timeout_s=1.0,
        shutdown_timeout_s=1.0,
        metric_export_interval_s=60.0,
        span_export_interval_s=60.0,
        sampler=SamplerConfig("always_on", 1.0),
    )
    options.setdefault("worker_cpu_budget", 0)  # exact counts: every payload decoded
    return ModelTapConfig(monitor="inline", views_prefix=None, export=export, **options)


def admin(sidecar: RunningSidecar, path: str) -> httpx.Response:
    assert sidecar.sidecar.tap.flush(5.0)
    response = httpx.get(f"{sidecar.admin_url}{path}", timeout=10.0, trust_env=False)
    assert response.status_code == 200
    return response


def oip(rows: int) -> dict[str, Any]:
    data = np.random.default_rng(rows).normal(size=(rows, 4)).round(3).ravel().tolist()
    return {"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP64", "data": data}]}


# ---- item 3 ------------------------------------------------------------------------------------------


def test_claimed_model_names_answered_404_create_no_state(upstream: str) -> None:
    with running_sidecar(upstream, monitoring()) as sidecar, httpx.Client(base_url=sidecar.url) as client:
        for i in range(300):
            assert client.post(f"/v2/models/random-{i:04d}/infer", json=oip(8)).status_code == 404
        for _ in range(20):
            assert client.post("/v2/models/iris/infer", json=oip(8)).status_code == 200
        status = admin(sidecar, "/status").json()
        metrics = admin(sidecar, "/metrics").text
    requests = {(m["name"], m["version"]): m["requests"] for m in status["models"]}
    assert requests == {("unknown", "unknown"): 300, ("iris", "1"): 20}
    assert "random-" not in metrics
    assert "random-" not in json.dumps(status)
    assert len(metrics) < 64 * 1024, len(metrics)


# ---- item 4 ------------------------------------------------------------------------------------------


def test_a_flood_of_random_keys_leaves_state_and_views_bounded(upstream: str) -> None:
    rng = np.random.default_rng(4)
    requests = 100
    with running_sidecar(upstream, monitoring(model_name="scorer")) as sidecar:
        with httpx.Client(base_url=sidecar.url) as client:
            for _ in range(requests):
                keys = rng.integers(0, 2**62, 1100)
                row = {f"k{key:x}": 1.0 for key in keys}
                assert client.post("/score", json=[row]).status_code == 200
        started = time.perf_counter()
        status = admin(sidecar, "/status").json()
        metrics = admin(sidecar, "/metrics").text
        render_s = time.perf_counter() - started
    (model,) = status["models"]
    inputs = [f for f in model["features"] if f["role"] == "input"]
    assert len(inputs) == 256  # max_features: the first 256 names; every other one is a violation
    assert status["violations"]["schema"] == requests * 1100 - 256
    assert len(json.dumps(status)) < 1024 * 1024
    assert len(metrics) < 1024 * 1024
    assert "k" not in {line[:1] for line in metrics.splitlines()}
    assert status["monitoring"]["internal_errors"] == {}
    print(f"/status {len(json.dumps(status))} B, /metrics {len(metrics)} B, both in {render_s:.3f} s")


# ---- item 8 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`modeltap profile train.csv --prediction prediction`, as a user would build it."""
    folder = tmp_path_factory.mktemp("classifier")
    rng = np.random.default_rng(8)
    train = folder / "train.csv"
    with train.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "prediction"])
        for _ in range(3000):
            tenure, charges = rng.normal(24, 8), rng.normal(65, 15)
            writer.writerow([round(tenure, 3), round(charges, 3), int(charges > 70.0)])
    reference = folder / "reference.json"
    assert modeltap_main(["profile", str(train), "-o", str(reference), "--prediction", "prediction"]) == 0
    profile = json.loads(reference.read_text())
    (prediction,) = [f for f in profile["features"] if f["role"] == "output"]
    assert (prediction["name"], prediction["kind"]) == ("prediction", "categorical")
    return reference


def test_class_label_outputs_are_counted_and_compared_as_categories(
    upstream: str, classifier_reference: Path
) -> None:
    rng = np.random.default_rng(80)
    with OtlpHttpReceiver() as receiver:
        config = monitoring(receiver, model_name="churn", reference=str(classifier_reference), min_samples=0)
        with running_sidecar(upstream, config) as sidecar, httpx.Client(base_url=sidecar.url) as client:
            for _ in range(50):
                # Charges shifted up: far more churners than in training (prior shift).
                rows = np.column_stack([rng.normal(24, 8, 8), rng.normal(90, 15, 8)]).round(3)
                answer = client.post("/v1/models/churn:predict", json={"instances": rows.tolist()})
                assert answer.status_code == 200
            status = admin(sidecar, "/status").json()
        receiver.wait_for(lambda r: bool(r.points("modeltap.drift.pvalue")), timeout=5.0, description="p")
        pvalues = receiver.latest_points("modeltap.drift.pvalue")
    assert "type" not in status["violations"]
    (model,) = status["models"]
    prediction = next(f for f in model["features"] if f["role"] == "output")
    assert (prediction["name"], prediction["kind"], prediction["count"]) == ("prediction", "categorical", 400)
    assert sum(prediction["top_categories"].values()) == 400
    assert set(prediction["top_categories"]) <= {"0", "1"}
    assert prediction["chi2_pvalue"] is not None
    assert prediction["chi2_pvalue"] < 1e-6
    assert prediction["level"] == "CRITICAL"
    exported = [
        p
        for p in pvalues
        if p.attributes.get("modeltap.feature.name") == "prediction"
        and p.attributes.get("modeltap.drift.test") == "chi2"
    ]
    assert len(exported) == 1
    assert exported[0].value == pytest.approx(prediction["chi2_pvalue"])


# ---- item 10 -----------------------------------------------------------------------------------------


def test_errors_belong_to_the_version_the_server_names_when_it_succeeds(upstream: str) -> None:
    with running_sidecar(upstream, monitoring()) as sidecar, httpx.Client(base_url=sidecar.url) as client:
        for i in range(30):
            body = {"instances": [[12.0, 60.0]], "fail": i % 3 == 1}  # it has answered once first
            expected = 500 if i % 3 == 1 else 200
            assert client.post("/v1/models/churn:predict", json=body).status_code == expected
        status = admin(sidecar, "/status").json()
    assert [(m["name"], m["version"], m["requests"], m["errors"]) for m in status["models"]] == [
        ("churn", "v3", 30, 10)
    ]


# ---- item 11 -----------------------------------------------------------------------------------------


def read_status_line_and_leave(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n" not in received:
            piece = sock.recv(64)
            assert piece, "closed before the status line"
            received += piece
    return received.split(b"\r\n", 1)[0]


def settled(read: Any, predicate: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        document: dict[str, Any] = read()
        if predicate(document) or time.monotonic() > deadline:
            return document
        time.sleep(0.05)


def test_a_client_that_reads_the_status_line_and_leaves_is_no_model_error(upstream: str) -> None:
    with running_sidecar(upstream, monitoring(model_name="streamer")) as sidecar:
        for _ in range(5):
            line = read_status_line_and_leave(sidecar.port, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            assert line == b"HTTP/1.1 200 OK"
        status = settled(lambda: admin(sidecar, "/status").json(), lambda d: d["requests"]["total"] == 5)
    assert status["requests"]["total"] == 5
    assert status["requests"]["client_disconnected"] == 5
    assert status["requests"]["errors"] == 0
    assert [m["errors"] for m in status["models"]] == [0]


def test_an_aborted_upload_through_the_middleware_is_no_500() -> None:
    app = model_server()

    @app.post("/upload")
    async def upload(request: Request) -> Response:
        return JSONResponse({"size": len(await request.body())})

    middleware = ModelTapMiddleware(
        app, config=ModelTapConfig.from_env({}, monitor="inline"), model_name="uploader"
    )
    try:
        with serve(middleware, name="trust-middleware") as url:
            port = int(url.rsplit(":", 1)[1])
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
                    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                    sock.sendall(b"y" * 1000)
                    time.sleep(0.05)

            def read() -> dict[str, Any]:
                middleware.tap.flush(5.0)
                document: dict[str, Any] = httpx.get(f"{url}/modeltap/status", trust_env=False).json()
                return document

            status = settled(read, lambda d: d["requests"]["total"] == 3)
            metrics = httpx.get(f"{url}/modeltap/metrics", trust_env=False).text
    finally:
        middleware.tap.shutdown()
    assert status["requests"] == {"total": 3, "errors": 0, "client_disconnected": 3, "dropped": 0}
    assert 'http_response_status_code="500"' not in metrics


# ---- item 12 -----------------------------------------------------------------------------------------


def test_sidecar_span_names_and_routes_are_templates(upstream: str) -> None:
    with OtlpHttpReceiver() as receiver, running_sidecar(upstream, monitoring(receiver)) as sidecar:
        with httpx.Client(base_url=sidecar.url) as client:
            assert client.post("/v2/models/iris/infer", json=oip(2)).status_code == 200
            assert client.post("/v2/models/other-77/infer", json=oip(2)).status_code == 404
            assert client.post("/customer/4711/score", json=[{"a": 1}]).status_code == 404
        assert sidecar.sidecar.tap.flush(5.0)
        receiver.wait_for(lambda r: len(r.spans()) >= 3, timeout=5.0, description="3 spans")
        spans = receiver.spans()
        durations = receiver.latest_points("http.server.request.duration")
    assert sorted(span.name for span in spans) == [
        "POST",
        "POST /v2/models/{model}/infer",
        "POST /v2/models/{model}/infer",
    ]
    routes = {span.name: span.attributes.get("http.route") for span in spans}
    assert routes == {"POST": None, "POST /v2/models/{model}/infer": "/v2/models/{model}/infer"}
    assert {p.attributes.get("http.route") for p in durations} == {None, "/v2/models/{model}/infer"}
    assert not any("4711" in json.dumps(p.attributes) for p in durations)


# ---- item 6 ------------------------------------------------------------------------------------------


EMAIL = "alice.private@example.com"
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def plan_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plans")
    train = folder / "train.csv"
    rng = np.random.default_rng(6)
    with train.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["plan", "charges"])
        for _ in range(500):
            writer.writerow([rng.choice(["basic", "pro", "team"]), round(rng.normal(65, 15), 2)])
    reference = folder / "reference.json"
    assert modeltap_main(["profile", str(train), "-o", str(reference)]) == 0
    return reference


@pytest.mark.parametrize("expose", [False, True])
def test_values_outside_the_vocabulary_are_never_published(
    upstream: str, plan_reference: Path, expose: bool
) -> None:
    rows = [
        {"plan": "pro", "charges": 70.0},
        {"plan": EMAIL, "charges": 60.0},
        {"plan": CARD, "charges": 1.0},
    ]
    with OtlpHttpReceiver() as receiver:
        config = monitoring(
            receiver, model_name="scorer", reference=str(plan_reference), expose_values=expose
        )
        with running_sidecar(upstream, config) as sidecar, httpx.Client(base_url=sidecar.url) as client:
            for _ in range(5):
                assert client.post("/score", json=rows).status_code == 200
            status = admin(sidecar, "/status")
            metrics = admin(sidecar, "/metrics").text
            page = admin(sidecar, "/").text
        receiver.wait_for(lambda r: bool(r.spans()), timeout=5.0, description="spans")
        # Everything that left the process, as the decoded protobuf messages serialise.
        exported = b"".join(
            request.message.SerializeToString() for request in receiver.requests() if request.message
        )
    plan = next(f for f in status.json()["features"] if f["name"] == "plan")
    assert plan["top_categories"] == {"pro": 5}
    assert (plan["unlisted"]["values"], plan["unlisted"]["distinct"]) == (10, 2)
    assert metrics
    assert page
    for secret in (EMAIL, CARD):
        assert secret.encode() not in exported
        assert secret not in metrics
        assert secret not in page
        # Only the user's explicit opt-in shows them, and only in the local status.
        assert (secret in status.text) is expose
    if expose:
        assert plan["unlisted"]["top"] == {EMAIL: 5, CARD: 5}
