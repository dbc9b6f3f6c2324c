"""Reference workload for overhead measurements.

A small JSON model endpoint (KServe V1 shape, 10 features, or 30 with LUA=post30.lua) in
Starlette, and the same app
wrapped by peers, selected with the APP environment variable:

  bare     the app alone
  noop     one pure-ASGI pass-through layer (the floor any middleware pays)
  capture  naive inline capture: copies both bodies and json-parses them on the request path
  promexp  starlette-exporter's Prometheus middleware
  otel     opentelemetry-instrumentation-asgi with the OpenTelemetry SDK (spans + metrics,
           batch processor, exporters that discard)
  modeltap         modeltap with full monitoring, its analysis in the monitor process (the
                   default; MODELTAP_MONITOR_CPUS pins the monitor)
  modeltap_inline  the same, analysis on a thread in the serving process (monitor="inline")
  modeltap_traced  the monitor process, every request traced

Run with: uvicorn apps:app --loop uvloop --http httptools (see run_middleware.sh).
"""

import collections
import json
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

W = [0.1 * i for i in range(30)]  # rows of 10 (post.lua) or 30 features (post30.lua)


async def predict(request: Request) -> JSONResponse:
    body = await request.json()
    preds = [sum(w * x for w, x in zip(W, row, strict=False)) for row in body["instances"]]
    return JSONResponse({"predictions": preds, "model_version": "v1"})


async def health(request: Request) -> Response:
    return Response("ok")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])
mode = os.environ.get("APP", "bare")

if mode == "otel":
    from opentelemetry import metrics, trace
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DiscardSpans(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    class DiscardMetrics(MetricExporter):
        def export(self, metrics_data, timeout_millis=10_000, **kw):
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis=10_000):
            return True

        def shutdown(self, timeout_millis=30_000, **kw):
            pass

    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(DiscardSpans()))
    trace.set_tracer_provider(tp)
    reader = PeriodicExportingMetricReader(DiscardMetrics(), export_interval_millis=5000)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    app = OpenTelemetryMiddleware(app)

elif mode == "promexp":
    from starlette_exporter import PrometheusMiddleware

    app.add_middleware(PrometheusMiddleware)

elif mode == "noop":
    _inner = app

    async def app(scope, receive, send):
        await _inner(scope, receive, send)

elif mode == "capture":
    _inner = app
    _seen = collections.deque(maxlen=10000)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return await _inner(scope, receive, send)
        started = time.perf_counter()
        req, resp = [], []

        async def tap_receive():
            message = await receive()
            if message["type"] == "http.request":
                req.append(message.get("body", b""))
            return message

        async def tap_send(message):
            if message["type"] == "http.response.body":
                resp.append(message.get("body", b""))
            await send(message)

        await _inner(scope, tap_receive, tap_send)
        _seen.append(
            (
                json.loads(b"".join(req) or b"null"),
                json.loads(b"".join(resp) or b"null"),
                time.perf_counter() - started,
            )
        )

elif mode in ("modeltap", "modeltap_inline", "modeltap_traced"):
    # Full monitoring: capture, decoding, statistics, OTLP metrics to the bench's local sink
    # (MODELTAP_BENCH_OTLP), traces sampled at 10 % (or every request for modeltap_traced).
    from modeltap import ModelTapMiddleware

    if mode == "modeltap_traced":
        os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    endpoint = os.environ.get("MODELTAP_BENCH_OTLP", "http://127.0.0.1:18200")
    os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    os.environ.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "5000")
    app.add_middleware(
        ModelTapMiddleware,
        model_name="bench",
        reference=os.environ.get("MODELTAP_BENCH_REFERENCE") or None,
        monitor="inline" if mode == "modeltap_inline" else "process",
    )
