"""The worker's reading of exchanges through the middleware (issue "trust"): identities filed by
what the model vouches for (items 3, 10), outputs of every per-row array (9), client disconnects
apart from errors (11), route templates for span names and an empty inference body (12)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modeltap import ExportConfig, SamplerConfig
from modeltap._types import Receive, Scope, Send
from modeltap.reference import build_profile, write_profile
from tests.support.asgi_driver import ASGIApp, http_request_messages, make_http_scope, run_asgi
from tests.support.tapping import BODY, START, MakeMiddleware, status_document

pytestmark = pytest.mark.usefixtures("clean_otel_env")

ALWAYS_ON = ExportConfig(sampler=SamplerConfig("always_on", 1.0))
OIP_BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
).encode()


def answering(status: int, payload: dict[str, Any] | None = None) -> ASGIApp:
    """A model server answering every request with `status` and a JSON body, after reading it."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        body = json.dumps(payload if payload is not None else {}).encode()
        await send({"type": START, "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": BODY, "body": body})

    return app


def call(middleware: Any, path: str, body: bytes = OIP_BODY) -> None:
    run_asgi(middleware, make_http_scope("POST", path), http_request_messages(body))


def identities(document: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(m["name"], m["version"]): m["requests"] for m in document["models"]}


# ---- item 3: names only the request claims --------------------------------------------------------


def test_404_answers_for_random_model_names_create_no_state(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(answering(404, {"error": "model not found"}), model_name=None)
    for i in range(40):
        call(middleware, f"/v2/models/random-{i}/infer")
    document = status_document(middleware)
    assert identities(document) == {("unknown", "unknown"): 40}
    metrics = run_asgi(middleware, make_http_scope("GET", "/modeltap/metrics", headers=[])).body.decode()
    assert "random-" not in metrics
    assert "random-" not in json.dumps(document)


def test_a_2xx_answer_vouches_for_the_name_in_the_url(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(answering(200, {"model_name": "iris", "outputs": []}), model_name=None)
    call(middleware, "/v2/models/iris/versions/7/infer")
    assert identities(status_document(middleware)) == {("iris", "7"): 1}


# ---- item 10: errors belong to a version ----------------------------------------------------------


def versioned_server() -> ASGIApp:
    """Names its version only in successful answers, as many servers do."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        document = json.loads((await receive())["body"])
        if document.get("fail"):
            await send({"type": START, "status": 500, "headers": []})
            await send({"type": BODY, "body": b"internal error"})
            return
        answer = {"predictions": [1.0], "model_version": "2024-06"}
        await send({"type": START, "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": BODY, "body": json.dumps(answer).encode()})

    return app


def test_errors_are_filed_under_the_only_live_version(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(versioned_server(), model_name=None)
    for fail in (False, True, True, False, True):
        call(
            middleware, "/v1/models/churn:predict", json.dumps({"instances": [[1.0]], "fail": fail}).encode()
        )
    document = status_document(middleware)
    (model,) = document["models"]
    assert (model["name"], model["version"], model["requests"], model["errors"]) == ("churn", "2024-06", 5, 3)


def test_the_configured_version_files_errors_too(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(answering(503), model_name="churn", model_version="v9")
    call(middleware, "/predict", b"{}")
    document = status_document(middleware)
    assert [(m["name"], m["version"], m["errors"]) for m in document["models"]] == [("churn", "v9", 1)]


# ---- item 9: every per-row array of an answer is an output ----------------------------------------


def test_every_per_row_array_of_an_answer_is_an_output(make_middleware: MakeMiddleware) -> None:
    answer = {
        "predictions": [0, 1, 1],
        "probabilities": [[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]],
        "scores": [0.1, 0.8, 0.6],
        "classes": ["no", "yes"],  # not one per row: not an output
    }
    middleware = make_middleware(answering(200, answer))
    call(middleware, "/v1/models/demo:predict", b'{"instances": [[1.0], [2.0], [3.0]]}')
    outputs = {f["name"]: f for f in status_document(middleware)["features"] if f["role"] == "output"}
    assert set(outputs) == {"prediction", "probabilities[0]", "probabilities[1]", "scores"}
    assert outputs["scores"]["count"] == 3
    assert outputs["scores"]["rolling_mean"] == pytest.approx(0.5)
    assert outputs["probabilities[1]"]["rolling_mean"] == pytest.approx(0.5)
    assert outputs["prediction"]["rolling_mean"] == pytest.approx(2 / 3)


def test_a_flat_prediction_beside_per_row_arrays_is_no_schema_violation(
    make_middleware: MakeMiddleware, tmp_path: Path
) -> None:
    """The reference lists both outputs of a classifier (its class and its score): an answer that
    carries both is complete, one that lacks the score misses one output."""
    reference = tmp_path / "reference.json"
    profile = build_profile(
        {
            "x": [float(i % 7) for i in range(200)],
            "outcome": [i % 2 for i in range(200)],
            "prediction": [(i // 2) % 2 for i in range(200)],
            "scores": [0.25 + 0.5 * ((i // 2) % 2) for i in range(200)],
        },
        target="outcome",
        prediction=["prediction"],
        score="scores",
        model_name="demo",
    )
    write_profile(profile, reference)
    middleware = make_middleware(
        answering(200, {"predictions": [0, 1], "scores": [0.3, 0.7]}), reference=str(reference)
    )
    for _ in range(3):
        call(middleware, "/v1/models/demo:predict", b'{"instances": [[1.0], [2.0]]}')
    document = status_document(middleware)
    assert document["violations"] == {}
    outputs = {f["name"]: f for f in document["features"] if f["role"] == "output"}
    assert (outputs["prediction"]["window_count"], outputs["scores"]["window_count"]) == (6, 6)

    lacking = make_middleware(answering(200, {"predictions": [0, 1]}), reference=str(reference))
    call(lacking, "/v1/models/demo:predict", b'{"instances": [[1.0], [2.0]]}')
    assert status_document(lacking)["violations"] == {"schema": 1}


def test_plain_json_answers_get_a_rolling_mean_too(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(answering(200, {"score": [0.25, 0.75], "label": ["a", "b"]}))
    call(middleware, "/score", b'[{"x": 1}, {"x": 2}]')
    outputs = {f["name"]: f for f in status_document(middleware)["features"] if f["role"] == "output"}
    assert outputs["prediction"]["rolling_mean"] == pytest.approx(0.5)
    assert outputs["label"]["kind"] == "categorical"


# ---- item 11: a client that leaves is not a model error ------------------------------------------


def body_reader() -> Starlette:
    async def predict(request: Request) -> Response:
        return JSONResponse({"size": len(await request.body())})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


@pytest.mark.parametrize("payload_stride", [1, 4])
def test_an_aborted_upload_is_a_client_disconnect_not_a_500(
    make_middleware: MakeMiddleware, payload_stride: int
) -> None:
    middleware = make_middleware(body_reader())
    middleware.tap.start()
    middleware.tap.sampling.payload_stride = payload_stride  # also when the payload is sampled out
    messages = http_request_messages(b"x" * 4096, chunk_size=1024)
    for _ in range(payload_stride):
        result = run_asgi(middleware, make_http_scope("POST", "/predict"), messages, disconnect_at=2)
        assert result.exception is not None  # Starlette's ClientDisconnect, re-raised unchanged
    middleware.tap.sampling.payload_stride = 1
    document = status_document(middleware)
    assert document["requests"]["client_disconnected"] == payload_stride
    assert document["requests"]["errors"] == 0
    metrics = run_asgi(middleware, make_http_scope("GET", "/modeltap/metrics", headers=[])).body.decode()
    assert 'http_response_status_code="500"' not in metrics
    assert 'error_type="client_disconnected"' in metrics


# ---- item 12: route templates and empty inference bodies ------------------------------------------


def traced(make_middleware: MakeMiddleware, app: ASGIApp) -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    middleware = make_middleware(app, tracer_provider=provider, export=ALWAYS_ON)
    return middleware, exporter


@pytest.mark.parametrize(
    ("path", "name", "route"),
    [
        ("/v2/models/churn/infer", "POST /v2/models/{model}/infer", "/v2/models/{model}/infer"),
        (
            "/v2/models/churn/versions/3/infer",
            "POST /v2/models/{model}/versions/{version}/infer",
            "/v2/models/{model}/versions/{version}/infer",
        ),
        ("/v1/models/churn:predict", "POST /v1/models/{model}:predict", "/v1/models/{model}:predict"),
        ("/openai/v1/chat/completions", "POST /openai/v1/chat/completions", "/openai/v1/chat/completions"),
        ("/users/4711/orders", "POST", None),
    ],
)
def test_span_names_use_the_protocol_route_never_the_raw_path(
    make_middleware: MakeMiddleware, path: str, name: str, route: str | None
) -> None:
    middleware, exporter = traced(make_middleware, answering(200, {"predictions": [1.0]}))
    call(middleware, path, b'{"instances": [[1.0]]}')
    assert middleware.tap.flush(5.0)
    (span,) = exporter.get_finished_spans()
    assert span.name == name
    assert (span.attributes or {}).get("http.route") == route
    metrics = run_asgi(middleware, make_http_scope("GET", "/modeltap/metrics", headers=[])).body.decode()
    # In no label (a sample's value, a time or a sum, may hold those digits by chance).
    labels = " ".join(re.findall(r"\{[^}]*\}", metrics))
    assert ("4711" in labels) is False
    if route is not None:
        assert f'http_route="{route}"' in metrics


@pytest.mark.parametrize("body", [b"", b"null"])
@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v1/models/m:predict", "/v1/chat/completions"])
def test_an_empty_or_null_inference_body_is_a_decode_error(
    make_middleware: MakeMiddleware, path: str, body: bytes
) -> None:
    middleware = make_middleware(answering(400, {"error": "no body"}))
    call(middleware, path, body)
    assert status_document(middleware)["violations"] == {"decode_error": 1}


def test_an_empty_get_is_no_violation(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(answering(200, {"ready": True}))
    run_asgi(middleware, make_http_scope("GET", "/v2/models/m/ready"), http_request_messages(b""))
    assert status_document(middleware)["violations"] == {}
