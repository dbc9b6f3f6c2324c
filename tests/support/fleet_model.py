"""A loan-approval model for the fleet tests: numeric and categorical inputs, a class label out.

`app` is the bare model (KServe V1, rows as objects); `monitored_app` is the same model inside
ModelTapMiddleware configured by MODELTAP_* / OTEL_* variables (run it under uvicorn --workers N).
The server propagates trace context: when a request carries `traceparent`, its own span (exported
to OTEL_EXPORTER_OTLP_ENDPOINT by the OpenTelemetry SDK when FLEET_MODEL_TRACES is set) is a child
of the caller's, as an instrumented model server's would be.
"""

from __future__ import annotations

import os
import random
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

COUNTRIES = ("fr", "de", "es", "it", "nl")
FEATURES = ("amount", "income", "country")


def decide(row: dict[str, Any]) -> str:
    amount = float(row.get("amount") or 0.0)
    income = float(row.get("income") or 1.0)
    ratio = amount / max(income, 1e-9)
    if ratio < 0.2:
        return "approve"
    if ratio < 0.5:
        return "review"
    return "deny"


def training_rows(count: int, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "amount": round(rng.lognormvariate(2.0, 0.6), 3),
            "income": round(rng.gauss(40.0, 8.0), 3),
            "country": rng.choices(COUNTRIES, weights=(40, 25, 15, 12, 8))[0],
        }
        for _ in range(count)
    ]


def drifted_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Amount shifted up (so the decisions shift too) and country mix changed; income unchanged."""
    rng = random.Random(seed)
    return [
        {
            "amount": round(rng.lognormvariate(2.6, 0.6), 3),
            "income": round(rng.gauss(40.0, 8.0), 3),
            "country": rng.choices(COUNTRIES, weights=(10, 10, 15, 30, 35))[0],
        }
        for _ in range(count)
    ]


def _tracer() -> Any:
    if not os.environ.get("FLEET_MODEL_TRACES"):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "loan-model-server"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    return provider.get_tracer("fleet-model")


TRACER = _tracer()


async def predict(request: Request) -> JSONResponse:
    body = await request.json()
    rows = body.get("instances", [])
    if TRACER is None:
        return JSONResponse({"predictions": [decide(row) for row in rows]})
    from opentelemetry.propagate import extract

    with TRACER.start_as_current_span("loan-model predict", context=extract(dict(request.headers))):
        return JSONResponse({"predictions": [decide(row) for row in rows]})


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(
    routes=[
        Route("/v1/models/loans:predict", predict, methods=["POST"]),
        Route("/_ready", ready),
    ]
)


async def outcome(request: Request) -> JSONResponse:
    """An in-process label producer: hands the outcome it is told to `modeltap.feedback`."""
    import asyncio

    import modeltap

    body = await request.json()
    answer = await asyncio.to_thread(modeltap.feedback, request_id=body["request_id"], label=body["label"])
    return JSONResponse(answer)


def monitored_app() -> Any:
    from modeltap import ModelTapMiddleware

    routes = [*app.routes, Route("/outcome", outcome, methods=["POST"])]
    return ModelTapMiddleware(Starlette(routes=routes), model_name="loans")


def write_reference(directory: Any) -> Any:
    """Profile the training table (inputs and the model's decision) into `directory`/reference.json."""
    import csv
    from pathlib import Path

    from modeltap.cli import main as modeltap_main

    folder = Path(directory)
    table = folder / "train.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "prediction"])
        for row in training_rows(5000):
            writer.writerow([row["amount"], row["income"], row["country"], decide(row)])
    reference = folder / "reference.json"
    argv = [
        "profile",
        str(table),
        "-o",
        str(reference),
        "--prediction",
        "prediction",
        "--model-name",
        "loans",
    ]
    assert modeltap_main(argv) == 0
    return reference
