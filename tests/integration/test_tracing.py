"""modeltap's spans: sampling, W3C context, the application's TracerProvider, an already-open server
span, and what may leave the process (RELIABILITY.md E1-E4), checked on what a real OTLP receiver or
the SDK's in-memory exporter got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind
from scipy import stats
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modeltap import ExportConfig, ModelTapConfig, ModelTapMiddleware, SamplerConfig
from tests.support.otlp_receiver import AttrValue, OtlpGrpcReceiver, OtlpHttpReceiver, SpanRecord

pytestmark = pytest.mark.usefixtures("clean_otel_env")

Receiver: TypeAlias = OtlpHttpReceiver | OtlpGrpcReceiver

PREDICT_ROUTE = "/v1/models/{model}:predict"
PREDICT_PATH = "/v1/models/churn:predict"
PREDICT_SPAN = f"POST {PREDICT_ROUTE}"
ECHO_ROUTE = "/echo/{item}"
ALWAYS_ON = SamplerConfig("always_on", 1.0)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
SECRETS = ("Bearer s3cr3t-token", "k-93f1-secret", "session=c00kie-secret", "Basic cHJveHk6c2VjcmV0")


# ---- the monitored application -----------------------------------------------------------------


@dataclass
class TracedApp:
    """A small model server that remembers the span context each request ran in."""

    seen: list[SpanContext] = field(default_factory=list)

    async def predict(self, request: Request) -> Response:
        self.seen.append(trace.get_current_span().get_span_context())
        document = json.loads(await request.body())
        if document.get("explode"):
            raise RuntimeError("model crashed")
        return JSONResponse({"predictions": [round(sum(row), 6) for row in document["instances"]]})

    async def echo(self, request: Request) -> Response:
        return Response(
            await request.body(),
            media_type="text/plain; charset=utf-8",
            headers={"set-cookie": "session=c00kie-secret"},
        )

    def asgi(self) -> Starlette:
        return Starlette(
            routes=[
                Route(PREDICT_ROUTE, self.predict, methods=["POST"]),
                Route(ECHO_ROUTE, self.echo, methods=["POST"]),
            ]
        )


@dataclass(frozen=True)
class Call:
    body: bytes = b'{"instances": [[1, 2, 3, 4]]}'
    path: str = PREDICT_PATH
    headers: Mapping[str, str] = field(default_factory=dict)


def drive(app: Any, calls: Sequence[Call]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [
                await client.post(call.path, content=call.body, headers=dict(call.headers)) for call in calls
            ]

    return asyncio.run(run())


def config(endpoint: str | None, protocol: str = "http/protobuf", **overrides: Any) -> ModelTapConfig:
    export: dict[str, Any] = {
        "timeout_s": 0.5,
        "shutdown_timeout_s": 1.0,
        "metric_export_interval_s": 60.0,
        "span_export_interval_s": 60.0,
        "service_name": "churn-service",
        "sampler": ALWAYS_ON,
    }
    export.update(overrides.pop("export", {}))
    return ModelTapConfig(
        **{"monitor": "inline", **overrides},
        model_name="churn",
        model_version="3",
        export=ExportConfig(endpoint=endpoint, protocol=protocol, **export),
    )


@contextlib.contextmanager
def tapped(app: Any, settings: ModelTapConfig, **kwargs: Any) -> Iterator[ModelTapMiddleware]:
    middleware = ModelTapMiddleware(app, config=settings, **kwargs)
    try:
        yield middleware
    finally:
        middleware.tap.shutdown()


def flushed_spans(middleware: ModelTapMiddleware, receiver: Receiver, expected: int) -> list[SpanRecord]:
    assert middleware.tap.flush(5.0)
    receiver.wait_for(lambda r: len(r.spans()) >= expected, timeout=5.0, description=f"{expected} spans")
    spans = receiver.spans()
    assert len(spans) == expected, receiver.summary()
    return spans


def in_memory_provider(service_name: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture(params=["http/protobuf", "grpc"])
def collector(request: pytest.FixtureRequest) -> tuple[str, Receiver]:
    protocol: str = request.param
    receiver: Receiver = request.getfixturevalue("grpc_receiver" if protocol == "grpc" else "http_receiver")
    return protocol, receiver


# ---- one span per exchange ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_one_server_span_per_exchange_with_http_semantic_conventions(collector: tuple[str, Receiver]) -> None:
    protocol, receiver = collector
    app = TracedApp()
    calls = [Call(), Call(), Call(b'{"explode": true}'), Call()]
    with tapped(app.asgi(), config(receiver.endpoint, protocol)) as middleware:
        statuses = [r.status_code for r in drive(middleware, calls)]
        assert statuses == [200, 200, 500, 200]
        spans = flushed_spans(middleware, receiver, expected=len(calls))

    # Spans are built on the worker in arrival order; the app saw each one's ids while it ran.
    assert [s.span_id for s in spans] == [format(c.span_id, "016x") for c in app.seen]
    assert [s.trace_id for s in spans] == [format(c.trace_id, "032x") for c in app.seen]
    assert len({s.trace_id for s in spans}) == len(spans)
    for span, status in zip(spans, statuses, strict=True):
        assert span.name == PREDICT_SPAN
        assert span.kind == "SPAN_KIND_SERVER"
        assert span.parent_span_id == ""
        assert span.end_time_unix_nano > span.start_time_unix_nano
        assert span.scope_name == "modeltap"
        assert span.resource["service.name"] == "churn-service"
        attributes = span.attributes
        assert attributes["http.request.method"] == "POST"
        assert attributes["http.route"] == PREDICT_ROUTE
        assert attributes["url.path"] == PREDICT_PATH
        assert attributes["url.scheme"] == "http"
        assert attributes["http.response.status_code"] == status
        assert attributes["network.protocol.version"] == "1.1"
        assert attributes["server.address"] == "testserver"
        assert attributes["client.address"] == "127.0.0.1"
        assert attributes["modeltap.model.name"] == "churn"
        assert attributes["modeltap.model.version"] == "3"
        if status == 500:
            assert span.status_code == "STATUS_CODE_ERROR"
            assert attributes["error.type"] == "RuntimeError"
        else:
            assert span.status_code == "STATUS_CODE_UNSET"
            assert "error.type" not in attributes


@pytest.mark.timeout(60)
def test_incoming_sampled_traceparent_is_continued(http_receiver: OtlpHttpReceiver) -> None:
    app = TracedApp()
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01", "tracestate": TRACESTATE}
    with tapped(app.asgi(), config(http_receiver.endpoint)) as middleware:
        assert drive(middleware, [Call(headers=headers)])[0].status_code == 200
        (span,) = flushed_spans(middleware, http_receiver, expected=1)

    assert span.trace_id == TRACE_ID
    assert span.parent_span_id == PARENT_SPAN_ID
    assert span.span_id not in ("", PARENT_SPAN_ID)
    assert span.trace_state == TRACESTATE
    assert span.kind == "SPAN_KIND_SERVER"
    # The application ran inside the continued trace, under modeltap's span.
    (context,) = app.seen
    assert format(context.trace_id, "032x") == TRACE_ID
    assert format(context.span_id, "016x") == span.span_id


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "tracestate", ["x" * 60_000, "Upper=1", ",".join(f"k{i}=v" for i in range(33))], ids=["huge", "bad", "33"]
)
def test_a_tracestate_that_is_not_one_is_not_passed_on(
    http_receiver: OtlpHttpReceiver, tracestate: str
) -> None:
    """The trace is continued; the client's malformed or oversized `tracestate` reaches no span."""
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01", "tracestate": tracestate}
    with tapped(TracedApp().asgi(), config(http_receiver.endpoint)) as middleware:
        assert drive(middleware, [Call(headers=headers)])[0].status_code == 200
        (span,) = flushed_spans(middleware, http_receiver, expected=1)

    assert span.trace_id == TRACE_ID
    assert span.parent_span_id == PARENT_SPAN_ID
    assert span.trace_state == ""


@pytest.mark.timeout(60)
def test_parentbased_ratio_zero_only_follows_sampled_parents(http_receiver: OtlpHttpReceiver) -> None:
    settings = config(
        http_receiver.endpoint, export={"sampler": SamplerConfig("parentbased_traceidratio", 0.0)}
    )
    unsampled_parent = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-00"}
    with tapped(TracedApp().asgi(), settings) as middleware:
        assert {
            r.status_code for r in drive(middleware, [Call()] * 5 + [Call(headers=unsampled_parent)])
        } == {200}
        assert middleware.tap.flush(5.0)
        http_receiver.wait_for(lambda r: r.metric_requests(), timeout=5.0, description="the flush's metrics")
        assert http_receiver.requests("/v1/traces") == []

        sampled_parent = {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"}
        drive(middleware, [Call(headers=sampled_parent)])
        (span,) = flushed_spans(middleware, http_receiver, expected=1)
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_SPAN_ID)


@pytest.mark.timeout(60)
def test_default_sampler_keeps_a_tenth_of_new_traces(http_receiver: OtlpHttpReceiver) -> None:
    sent, ratio = 400, 0.1
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint, "OTEL_METRICS_EXPORTER": "none"}
    settings = ModelTapConfig.from_env(environ, monitor="inline", model_name="churn")
    assert (settings.export.sampler.name, settings.export.sampler.ratio) == (
        "parentbased_traceidratio",
        ratio,
    )
    with tapped(TracedApp().asgi(), settings) as middleware:
        assert {r.status_code for r in drive(middleware, [Call()] * sent)} == {200}
        assert middleware.tap.flush(5.0)
        sampled = len(http_receiver.spans())

    # Outside these bounds with probability < 2e-6 for a fair Binomial(400, 0.1).
    low, high = stats.binom.ppf(1e-6, sent, ratio), stats.binom.isf(1e-6, sent, ratio)
    assert low <= sampled <= high, f"{sampled} of {sent} sampled, expected within [{low}, {high}]"
    # TraceIdRatioBased: kept iff the low 64 bits of the trace id are below ratio * 2**64, so every
    # service makes the same decision for the same trace.
    bound = round(ratio * 2**64)
    assert all(int(s.trace_id, 16) & (2**64 - 1) < bound for s in http_receiver.spans())
    assert all(s.parent_span_id == "" for s in http_receiver.spans())


# ---- the application's own tracing ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("monitor", ["inline", "process"])
def test_spans_go_through_the_applications_tracer_provider(
    http_receiver: OtlpHttpReceiver, monitor: str, request: pytest.FixtureRequest
) -> None:
    """In process mode the serving process builds these spans itself (the monitor exports the
    metrics): with the app's SDK provider and nothing of the analysis."""
    if monitor == "process":
        request.getfixturevalue("own_monitor")
    provider, exporter = in_memory_provider("user-service")
    settings = config(http_receiver.endpoint, monitor=monitor, export={"service_name": None})
    try:
        with tapped(TracedApp().asgi(), settings, tracer_provider=provider) as middleware:
            drive(middleware, [Call(), Call(), Call()])
            assert middleware.tap.flush(5.0)
            http_receiver.wait_for(lambda r: r.metric_requests(), timeout=5.0)
            spans = exporter.get_finished_spans()
    finally:
        provider.shutdown()

    assert len(spans) == 3
    for span in spans:
        assert span.name == PREDICT_SPAN
        assert span.kind is SpanKind.SERVER
        assert span.parent is None
        assert dict(span.attributes or {})["modeltap.model.name"] == "churn"
        assert span.resource.attributes["service.name"] == "user-service"
    # Spans joined the application's pipeline instead of modeltap's own exporter ...
    assert http_receiver.requests("/v1/traces") == []
    # ... and modeltap's metrics carry the application's resource (DESIGN.md, "Whose providers").
    resource = http_receiver.metrics()[0].resource
    assert resource["service.name"] == "user-service"


def _server_and_modeltap_spans(
    exporter: InMemorySpanExporter,
) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    finished = exporter.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    ours = [
        s
        for s in finished
        if s.instrumentation_scope is not None and s.instrumentation_scope.name == "modeltap"
    ]
    return servers, ours


@pytest.mark.timeout(60)
def test_existing_server_span_is_enriched_not_duplicated() -> None:
    provider, exporter = in_memory_provider("user-service")
    app = TracedApp()
    try:
        with tapped(app.asgi(), config(None), tracer_provider=provider) as middleware:
            instrumented = OpenTelemetryMiddleware(middleware, tracer_provider=provider)
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"}
            assert [r.status_code for r in drive(instrumented, [Call(), Call(headers=headers)])] == [200, 200]
            assert middleware.tap.flush(5.0)
            servers, ours = _server_and_modeltap_spans(exporter)
    finally:
        provider.shutdown()

    assert len(servers) == 2, "modeltap opened a second SERVER span"
    assert len(ours) == 2
    assert all(s.kind is SpanKind.INTERNAL for s in ours)
    by_trace = {s.context.trace_id: s for s in servers}
    assert TRACE_ID in {format(trace_id, "032x") for trace_id in by_trace}
    for span in ours:
        server = by_trace[span.context.trace_id]
        assert span.parent is not None
        assert span.parent.span_id == server.context.span_id
        assert span.name == PREDICT_SPAN
        assert dict(span.attributes or {})["modeltap.model.name"] == "churn"
        assert dict(server.attributes or {})["modeltap.model.name"] == "churn"
    # The application ran under the instrumentation's server span (modeltap did not replace it).
    assert {c.span_id for c in app.seen} == {s.context.span_id for s in servers}


@pytest.mark.timeout(60)
def test_child_of_an_existing_server_span_keeps_its_trace_state() -> None:
    """A child span's SpanContext carries its parent's TraceState (OTel trace SDK; W3C tracestate)."""
    provider, exporter = in_memory_provider("user-service")
    try:
        with tapped(TracedApp().asgi(), config(None), tracer_provider=provider) as middleware:
            instrumented = OpenTelemetryMiddleware(middleware, tracer_provider=provider)
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01", "tracestate": TRACESTATE}
            drive(instrumented, [Call(headers=headers)])
            assert middleware.tap.flush(5.0)
            (server,), (ours,) = _server_and_modeltap_spans(exporter)
    finally:
        provider.shutdown()

    assert server.context.trace_state.to_header() == TRACESTATE
    assert ours.context.trace_state.to_header() == TRACESTATE


# ---- privacy (E1-E4) ----------------------------------------------------------------------------


def _all_values(span: SpanRecord) -> list[AttrValue]:
    return [*span.attributes.values(), *span.resource.values()]


@pytest.mark.timeout(60)
def test_default_spans_carry_no_payload_and_no_headers(http_receiver: OtlpHttpReceiver) -> None:
    marker = "PAYLOAD-MARKER-9f2c"
    headers = {
        "authorization": SECRETS[0],
        "x-api-key": SECRETS[1],
        "cookie": SECRETS[2],
        "proxy-authorization": SECRETS[3],
    }
    with tapped(TracedApp().asgi(), config(http_receiver.endpoint)) as middleware:
        body = json.dumps({"instances": [[1, 2]], "note": marker}).encode()
        drive(middleware, [Call(body, headers=headers), Call(body, path="/echo/1", headers=headers)])
        spans = flushed_spans(middleware, http_receiver, expected=2)

    for span in spans:
        assert not [
            k for k in span.attributes if k.startswith(("http.request.header.", "http.response.header."))
        ]
        assert not [
            k for k in span.attributes if k.startswith(("modeltap.request.body", "modeltap.response.body"))
        ]
        for value in _all_values(span):
            text = str(value)
            assert marker not in text
            assert not [secret for secret in SECRETS if secret in text], (span.name, text)


def _utf8_prefix(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `max_bytes` (whole characters only)."""
    kept: list[str] = []
    used = 0
    for char in text:
        used += len(char.encode())
        if used > max_bytes:
            break
        kept.append(char)
    return "".join(kept)


@pytest.mark.timeout(60)
def test_captured_payloads_are_truncated_on_a_utf8_boundary(http_receiver: OtlpHttpReceiver) -> None:
    cap = 16
    # 0-3 ASCII bytes before 3- and 4-byte characters put the cap at every offset inside a character.
    texts = [prefix + char * 8 for char in ("€", "😀") for prefix in ("", "a", "ab", "abc")]
    texts.append("héllo")  # under the cap: kept whole
    settings = config(http_receiver.endpoint, capture_payloads=True, max_payload_attribute_bytes=cap)
    with tapped(TracedApp().asgi(), settings) as middleware:
        calls = [Call(text.encode(), path=f"/echo/{i}") for i, text in enumerate(texts)]
        responses = drive(middleware, calls)
        assert [r.content for r in responses] == [text.encode() for text in texts]
        spans = flushed_spans(middleware, http_receiver, expected=len(texts))

    by_path = {span.attributes["url.path"]: span for span in spans}
    for i, text in enumerate(texts):
        attributes = by_path[f"/echo/{i}"].attributes
        size = len(text.encode())
        for direction in ("request", "response"):
            shown = attributes[f"modeltap.{direction}.body"]
            assert shown == _utf8_prefix(text, cap), (direction, text)
            assert isinstance(shown, str)
            assert len(shown.encode()) <= cap
            assert attributes[f"modeltap.{direction}.body.size"] == size
            assert attributes[f"modeltap.{direction}.body.truncated"] is (size > cap)


@pytest.mark.timeout(60)
def test_allow_listed_credential_headers_are_redacted(http_receiver: OtlpHttpReceiver) -> None:
    settings = config(
        http_receiver.endpoint,
        capture_request_headers=("Authorization", "x-api-key", "user-agent", "cookie", "proxy-authorization"),
        capture_response_headers=("set-cookie", "content-type"),
    )
    headers = {
        "authorization": SECRETS[0],
        "x-api-key": SECRETS[1],
        "cookie": SECRETS[2],
        "proxy-authorization": SECRETS[3],
        "user-agent": "modeltap-test/1.0",
    }
    with tapped(TracedApp().asgi(), settings) as middleware:
        drive(middleware, [Call(b"hello", path="/echo/1", headers=headers)])
        (span,) = flushed_spans(middleware, http_receiver, expected=1)

    captured = {k: v for k, v in span.attributes.items() if ".header." in k}
    assert captured == {
        "http.request.header.authorization": "REDACTED",
        "http.request.header.x-api-key": "REDACTED",
        "http.request.header.cookie": "REDACTED",
        "http.request.header.proxy-authorization": "REDACTED",
        "http.request.header.user-agent": "modeltap-test/1.0",
        "http.response.header.set-cookie": "REDACTED",
        "http.response.header.content-type": "text/plain; charset=utf-8",
    }
    assert not [v for v in _all_values(span) for secret in SECRETS if secret in str(v)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("query", "exported"),
    [
        ("sig=abc&x=1", "sig=REDACTED&x=1"),
        (
            "X-Amz-Signature=deadbeef&X-Amz-Credential=AKIAEXAMPLE&model=a",
            "X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED&model=a",
        ),
    ],
)
def test_sensitive_query_values_are_redacted_and_keys_kept(
    http_receiver: OtlpHttpReceiver, query: str, exported: str
) -> None:
    with tapped(TracedApp().asgi(), config(http_receiver.endpoint)) as middleware:
        assert drive(middleware, [Call(path=f"{PREDICT_PATH}?{query}")])[0].status_code == 200
        (span,) = flushed_spans(middleware, http_receiver, expected=1)

    assert span.attributes["url.query"] == exported
    secrets = {"abc", "deadbeef", "AKIAEXAMPLE"}
    assert not [v for v in span.attributes.values() if any(secret in str(v) for secret in secrets)]
