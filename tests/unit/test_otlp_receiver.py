"""Self-test of tests/support/otlp_receiver.py against the real OpenTelemetry SDK exporters.

Retry expectations follow the pinned opentelemetry-exporter-otlp 1.45.2
(opentelemetry/exporter/otlp/common/http.py):

* 2xx/3xx is success; 429, 502, 503 and 504 are retryable, every other status is not;
* the wait before a retry is ``Retry-After`` when the response carries one, otherwise
  ``2**attempt * uniform(0.8, 1.2)`` seconds; a retry whose wait would overrun the export
  timeout is not attempted;
* a connection error (including a read timeout) is retried once immediately if time remains,
  then treated like a retryable status.
"""

from __future__ import annotations

import gzip
import http.client
import importlib
import threading
import time
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from tests.support.otlp_receiver import (
    MetricPoint,
    OtlpGrpcReceiver,
    OtlpHttpReceiver,
    SpanEventRecord,
    SpanLinkRecord,
    decode_any_value,
)

RESOURCE = {"service.name": "modeltap-selftest", "deployment.environment": "test"}
COUNTER = "modeltap.requests"
HISTOGRAM = "modeltap.latency"
PREDICT: dict[str, AttributeValue] = {"route": "/predict", "model.version": 2, "ok": True}
HEALTH: dict[str, AttributeValue] = {"route": "/health", "model.version": 2, "ok": False}
HIST_ATTRS: dict[str, AttributeValue] = {"route": "/predict", "ratio": 0.5, "tags": ("a", "b")}
CUMULATIVE = "AGGREGATION_TEMPORALITY_CUMULATIVE"

# googleapis-common-protos has no py.typed marker; load dynamically, as the receiver does.
_status_pb2: Any = importlib.import_module("google.rpc.status_pb2")


# -- helpers ------------------------------------------------------------------------------------


def _record_sample(provider: MeterProvider, counter_extra: int = 0) -> None:
    meter = provider.get_meter("modeltap.selftest", "0.1.0")
    counter = meter.create_counter(COUNTER, unit="{request}", description="Requests served")
    counter.add(3, PREDICT)
    counter.add(2 + counter_extra, PREDICT)
    counter.add(1, HEALTH)
    histogram = meter.create_histogram(
        HISTOGRAM, unit="ms", description="Model latency", explicit_bucket_boundaries_advisory=[10.0, 100.0]
    )
    for value in (5.0, 50.0, 500.0):
        histogram.record(value, HIST_ATTRS)


def _sample_metrics_data() -> MetricsData:
    """One collection of the sample counter and histogram, ready for ``exporter.export``."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=Resource(RESOURCE))
    _record_sample(provider)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


def _counter_data(value: int) -> MetricsData:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=Resource(RESOURCE))
    provider.get_meter("modeltap.selftest").create_counter("c").add(value)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


def _export(exporter: OTLPMetricExporter, data: MetricsData) -> tuple[MetricExportResult, float]:
    """Export once and shut the exporter down; returns the result and the elapsed seconds."""
    started = time.monotonic()
    try:
        result = exporter.export(data)
    finally:
        elapsed = time.monotonic() - started
        exporter.shutdown()
    return result, elapsed


def _post(
    rx: OtlpHttpReceiver,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers=headers or {"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _by_route(points: list[MetricPoint]) -> dict[object, MetricPoint]:
    return {p.attributes["route"]: p for p in points}


# -- decoding through the real exporters -----------------------------------------------------


def test_http_metric_exporter_counter_and_histogram_are_decoded_exactly(
    http_receiver: OtlpHttpReceiver,
) -> None:
    exporter = OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=2.0)
    # A long interval so only force_flush() exports; the test controls when data is sent.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(metric_readers=[reader], resource=Resource(RESOURCE))
    try:
        _record_sample(provider)
        assert provider.force_flush(timeout_millis=5_000)
    finally:
        provider.shutdown(timeout_millis=5_000)

    first = http_receiver.requests()[0]
    assert first.path == "/v1/metrics"
    assert first.outcome == "ok"
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/x-protobuf"
    assert first.headers["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    assert first.body_size == first.decoded_size > 0

    counters = _by_route(http_receiver.latest_points(COUNTER))
    assert set(counters) == {"/predict", "/health"}
    predict = counters["/predict"]
    assert predict.kind == "sum"
    assert predict.value == 5
    assert isinstance(predict.value, int)
    assert predict.attributes == PREDICT
    assert predict.unit == "{request}"
    assert predict.description == "Requests served"
    assert predict.is_monotonic is True
    assert predict.temporality == CUMULATIVE
    assert predict.resource == RESOURCE
    assert (predict.scope_name, predict.scope_version) == ("modeltap.selftest", "0.1.0")
    assert 0 < predict.start_time_unix_nano <= predict.time_unix_nano == predict.end_time_unix_nano
    assert counters["/health"].value == 1
    assert counters["/health"].attributes == HEALTH

    (latency,) = http_receiver.latest_points(HISTOGRAM)
    assert latency.kind == "histogram"
    assert latency.unit == "ms"
    assert latency.attributes == {"route": "/predict", "ratio": 0.5, "tags": ["a", "b"]}
    assert latency.count == 3
    assert latency.sum == 555.0
    assert latency.bucket_counts == [1, 1, 1]
    assert latency.explicit_bounds == [10.0, 100.0]
    assert (latency.min, latency.max) == (5.0, 500.0)
    assert latency.temporality == CUMULATIVE
    assert latency.is_monotonic is None
    assert latency.value is None


def test_http_span_exporter_spans_are_decoded_exactly(http_receiver: OtlpHttpReceiver) -> None:
    provider = TracerProvider(resource=Resource(RESOURCE))
    # SimpleSpanProcessor exports synchronously at span end: one request per span, child first.
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=http_receiver.traces_url, timeout=2.0))
    )
    tracer = provider.get_tracer("modeltap.selftest", "0.1.0")
    linked = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    try:
        with tracer.start_as_current_span(
            "predict", kind=SpanKind.SERVER, attributes={"http.route": "/predict", "batch": 4}
        ) as parent:
            parent.add_event("drift.checked", {"psi": 0.25, "features": ["age", "income"]})
            with tracer.start_as_current_span("score", links=[Link(linked, {"reason": "batch"})]) as child:
                child.set_status(Status(StatusCode.ERROR, "model exploded"))
    finally:
        provider.shutdown()

    assert [r.path for r in http_receiver.requests()] == ["/v1/traces", "/v1/traces"]
    score, predict = http_receiver.spans()
    parent_ctx, child_ctx = parent.get_span_context(), child.get_span_context()

    assert predict.name == "predict"
    assert predict.kind == "SPAN_KIND_SERVER"
    assert predict.trace_id == format(parent_ctx.trace_id, "032x")
    assert predict.span_id == format(parent_ctx.span_id, "016x")
    assert len(predict.trace_id) == 32
    assert len(predict.span_id) == 16
    assert predict.parent_span_id == ""
    assert predict.attributes == {"http.route": "/predict", "batch": 4}
    assert predict.status_code == "STATUS_CODE_UNSET"
    assert [(e.name, e.attributes) for e in predict.events] == [
        ("drift.checked", {"psi": 0.25, "features": ["age", "income"]})
    ]
    assert isinstance(predict.events[0], SpanEventRecord)
    assert predict.resource == RESOURCE
    assert (predict.scope_name, predict.scope_version) == ("modeltap.selftest", "0.1.0")
    assert 0 < predict.start_time_unix_nano <= score.start_time_unix_nano
    assert score.end_time_unix_nano <= predict.end_time_unix_nano

    assert score.name == "score"
    assert score.kind == "SPAN_KIND_INTERNAL"
    assert score.trace_id == predict.trace_id
    assert score.span_id == format(child_ctx.span_id, "016x")
    assert score.parent_span_id == predict.span_id
    assert score.status_code == "STATUS_CODE_ERROR"
    assert score.status_message == "model exploded"
    assert score.events == []
    assert score.links == [
        SpanLinkRecord(
            trace_id="0af7651916cd43dd8448eb211c80319c",
            span_id="00f067aa0ba902b7",
            attributes={"reason": "batch"},
        )
    ]
    assert score.duration_ns >= 0


def test_grpc_exporters_metrics_and_spans_are_decoded(grpc_receiver: OtlpGrpcReceiver) -> None:
    metric_exporter = GrpcMetricExporter(endpoint=grpc_receiver.endpoint, insecure=True, timeout=5.0)
    try:
        assert metric_exporter.export(_sample_metrics_data()) is MetricExportResult.SUCCESS
    finally:
        metric_exporter.shutdown()

    provider = TracerProvider(resource=Resource(RESOURCE))
    provider.add_span_processor(
        SimpleSpanProcessor(GrpcSpanExporter(endpoint=grpc_receiver.endpoint, insecure=True, timeout=5.0))
    )
    try:
        with provider.get_tracer("modeltap.selftest").start_as_current_span(
            "grpc-span", kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc"}
        ):
            pass
    finally:
        provider.shutdown()

    metrics_request, traces_request = grpc_receiver.requests()
    assert metrics_request.transport == "grpc"
    assert metrics_request.path == "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
    assert metrics_request.status_code == 0
    assert metrics_request.headers["user-agent"].startswith("OTel-OTLP-Exporter-Python")
    assert traces_request.path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

    counters = _by_route(grpc_receiver.latest_points(COUNTER))
    assert (counters["/predict"].value, counters["/health"].value) == (5, 1)
    assert counters["/predict"].resource == RESOURCE
    (latency,) = grpc_receiver.latest_points(HISTOGRAM)
    assert (latency.count, latency.sum, latency.bucket_counts) == (3, 555.0, [1, 1, 1])

    (span,) = grpc_receiver.spans()
    assert (span.name, span.kind, span.attributes) == (
        "grpc-span",
        "SPAN_KIND_CLIENT",
        {"rpc.system": "grpc"},
    )
    assert span.parent_span_id == ""


def test_grpc_abort_with_non_retryable_code_is_sent_once(grpc_receiver: OtlpGrpcReceiver) -> None:
    grpc_receiver.script(("abort", grpc.StatusCode.INVALID_ARGUMENT))
    exporter = GrpcMetricExporter(endpoint=grpc_receiver.endpoint, insecure=True, timeout=5.0)
    try:
        assert exporter.export(_sample_metrics_data()) is MetricExportResult.FAILURE
    finally:
        exporter.shutdown()
    (request,) = grpc_receiver.requests()
    assert request.outcome == "abort"
    assert request.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert grpc_receiver.metric_requests(accepted_only=True) == []


def test_grpc_unavailable_with_retry_info_is_retried(grpc_receiver: OtlpGrpcReceiver) -> None:
    # RetryInfo(retry_delay=0) replaces the exporter's ~1 s first backoff.
    grpc_receiver.script(("abort", grpc.StatusCode.UNAVAILABLE, 0.0))
    exporter = GrpcMetricExporter(endpoint=grpc_receiver.endpoint, insecure=True, timeout=5.0)
    try:
        assert exporter.export(_sample_metrics_data()) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert [r.outcome for r in grpc_receiver.requests()] == ["abort", "ok"]
    assert grpc_receiver.metric_requests()[0] == grpc_receiver.metric_requests()[1]


# -- scripted HTTP behaviours against the pinned exporter ----------------------------------------


@pytest.mark.parametrize(
    ("status", "expected_posts"),
    [(400, 1), (500, 1), (429, 2), (502, 2), (503, 2), (504, 2)],
)
def test_http_status_retry_matrix(http_receiver: OtlpHttpReceiver, status: int, expected_posts: int) -> None:
    # Retry-After: 0 makes the retry immediate, so the matrix runs in milliseconds.
    http_receiver.script(("status", status, {"Retry-After": "0"}))
    result, elapsed = _export(
        OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=3.0), _sample_metrics_data()
    )

    requests = http_receiver.requests()
    assert len(requests) == expected_posts, http_receiver.summary()
    assert requests[0].status_code == status
    assert requests[0].outcome == "status"
    if expected_posts == 1:
        assert result is MetricExportResult.FAILURE
    else:
        assert result is MetricExportResult.SUCCESS
        assert requests[1].outcome == "ok"
        assert requests[1].message == requests[0].message
    assert elapsed < 1.0


def test_http_503_without_retry_after_backs_off_about_one_second(http_receiver: OtlpHttpReceiver) -> None:
    http_receiver.script(("status", 503, {}))
    result, _ = _export(
        OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=5.0), _sample_metrics_data()
    )

    assert result is MetricExportResult.SUCCESS
    first, second = http_receiver.requests()
    # First backoff is 2**0 * uniform(0.8, 1.2) seconds.
    assert 0.75 <= second.arrival - first.arrival <= 1.6
    assert http_receiver.pending_behaviours() == 0


def test_http_retry_after_beyond_the_deadline_fails_without_retrying(http_receiver: OtlpHttpReceiver) -> None:
    http_receiver.script(("status", 429, {"Retry-After": "30"}))
    result, elapsed = _export(
        OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=1.0), _sample_metrics_data()
    )

    assert result is MetricExportResult.FAILURE
    assert len(http_receiver.requests()) == 1
    assert elapsed < 0.8


def test_http_error_response_carries_headers_and_google_rpc_status(http_receiver: OtlpHttpReceiver) -> None:
    http_receiver.script(("status", 503, {"Retry-After": "7"}))
    status, headers, body = _post(
        http_receiver, "/v1/metrics", encode_metrics(_sample_metrics_data()).SerializeToString()
    )

    assert status == 503
    assert headers["retry-after"] == "7"
    assert headers["content-type"] == "application/x-protobuf"
    rpc_status = _status_pb2.Status.FromString(body)
    assert rpc_status.code == grpc.StatusCode.UNAVAILABLE.value[0]


def test_http_ok_response_is_an_empty_export_response(http_receiver: OtlpHttpReceiver) -> None:
    status, headers, body = _post(http_receiver, "/v1/traces", b"")

    assert status == 200
    assert headers["content-type"] == "application/x-protobuf"
    assert body == b""
    assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
    # An empty body is a valid (empty) ExportTraceServiceRequest.
    assert http_receiver.trace_requests()[0].resource_spans == []


def test_http_partial_success_is_encoded_per_signal(http_receiver: OtlpHttpReceiver) -> None:
    http_receiver.script(("partial", 3), ("partial", 2), ("partial", 1))
    metrics_body = encode_metrics(_sample_metrics_data()).SerializeToString()

    status, _, body = _post(http_receiver, "/v1/metrics", metrics_body)
    assert status == 200
    partial = ExportMetricsServiceResponse.FromString(body).partial_success
    assert partial.rejected_data_points == 3
    assert partial.error_message

    status, _, body = _post(http_receiver, "/v1/traces", b"")
    assert status == 200
    assert ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans == 2

    # The pinned exporter does not inspect partial_success: a 200 is simply a success.
    result, _ = _export(
        OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=2.0), _sample_metrics_data()
    )
    assert result is MetricExportResult.SUCCESS
    assert [r.outcome for r in http_receiver.requests()] == ["partial", "partial", "partial"]
    assert all(r.accepted for r in http_receiver.requests())


def test_http_hang_times_out_the_exporter_and_does_not_block_stop() -> None:
    rx = OtlpHttpReceiver(behaviours=["hang"]).start()
    try:
        result, elapsed = _export(
            OTLPMetricExporter(endpoint=rx.metrics_url, timeout=0.5), _sample_metrics_data()
        )
        assert result is MetricExportResult.FAILURE
        assert 0.4 <= elapsed < 2.0
        # The read timeout consumes the whole budget, so neither the immediate reconnect nor a
        # backoff retry happens: exactly one POST.
        (request,) = rx.requests()
        assert request.outcome == "hang"
        assert request.status_code is None
        assert request.message is not None
    finally:
        started = time.monotonic()
        rx.stop(timeout=2.0)
        stop_elapsed = time.monotonic() - started
    assert stop_elapsed < 1.0
    assert rx.errors() == []


def test_http_close_triggers_one_immediate_reconnect(http_receiver: OtlpHttpReceiver) -> None:
    http_receiver.script("close")
    result, elapsed = _export(
        OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=2.0), _sample_metrics_data()
    )

    assert result is MetricExportResult.SUCCESS
    assert [(r.outcome, r.status_code) for r in http_receiver.requests()] == [("close", None), ("ok", 200)]
    assert elapsed < 1.0


def test_http_close_twice_exhausts_a_short_timeout(http_receiver: OtlpHttpReceiver) -> None:
    # Reconnect immediately once, then the ~1 s backoff exceeds the 0.5 s budget.
    http_receiver.script("close", "close")
    result, elapsed = _export(
        OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=0.5), _sample_metrics_data()
    )

    assert result is MetricExportResult.FAILURE
    assert [r.outcome for r in http_receiver.requests()] == ["close", "close"]
    assert elapsed < 0.5


@pytest.mark.parametrize(
    ("compression", "encoding"), [(Compression.Gzip, "gzip"), (Compression.Deflate, "deflate")]
)
def test_http_compressed_bodies_are_decoded(
    http_receiver: OtlpHttpReceiver, compression: Compression, encoding: str
) -> None:
    data = _sample_metrics_data()
    exporter = OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=2.0, compression=compression)
    result, _ = _export(exporter, data)

    assert result is MetricExportResult.SUCCESS
    (request,) = http_receiver.requests()
    assert request.headers["content-encoding"] == encoding
    expected = encode_metrics(data)
    assert request.message == expected
    assert request.decoded_size == expected.ByteSize()
    assert request.body_size != request.decoded_size
    assert http_receiver.latest_points(HISTOGRAM)[0].count == 3


def test_http_chunked_gzip_body_is_decoded(http_receiver: OtlpHttpReceiver) -> None:
    payload = gzip.compress(encode_metrics(_sample_metrics_data()).SerializeToString())
    conn = http.client.HTTPConnection("127.0.0.1", http_receiver.port, timeout=5)
    try:
        conn.request(
            "POST",
            "/v1/metrics",
            body=iter([payload[:10], payload[10:]]),
            headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()

    assert response.status == 200
    assert http_receiver.requests()[0].headers["transfer-encoding"] == "chunked"
    assert {p.name for p in http_receiver.metrics()} == {COUNTER, HISTOGRAM}


def test_http_invalid_requests_are_recorded_and_do_not_consume_the_script(
    http_receiver: OtlpHttpReceiver,
) -> None:
    http_receiver.script("close")
    body = encode_metrics(_sample_metrics_data()).SerializeToString()
    cases = [
        ("/v1/logs", body, {"Content-Type": "application/x-protobuf"}, 404),
        ("/v1/metrics", b"{}", {"Content-Type": "application/json"}, 415),
        ("/v1/metrics", b"\xff\xff\xff", {"Content-Type": "application/x-protobuf"}, 400),
        (
            "/v1/metrics",
            b"not gzip",
            {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
            400,
        ),
        ("/v1/metrics", body, {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"}, 415),
    ]
    for path, payload, headers, expected in cases:
        status, _, _ = _post(http_receiver, path, payload, headers)
        assert status == expected, (path, headers)

    records = http_receiver.requests()
    assert [r.status_code for r in records] == [c[3] for c in cases]
    assert all(r.outcome == "invalid" and r.message is None and r.error for r in records)
    assert http_receiver.metric_requests() == []
    assert http_receiver.pending_behaviours() == 1


# -- helpers of the receiver itself ----------------------------------------------------------


def test_wait_for_sees_background_exports(http_receiver: OtlpHttpReceiver) -> None:
    exporter = OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=2.0)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=50)
    provider = MeterProvider(metric_readers=[reader], resource=Resource(RESOURCE))
    try:
        provider.get_meter("modeltap.selftest").create_counter("ticks").add(7)
        http_receiver.wait_for(lambda rx: rx.latest_points("ticks")[0].value == 7, timeout=3.0)
    finally:
        provider.shutdown(timeout_millis=2_000)
    assert http_receiver.metric_names() == ["ticks"]


def test_wait_for_timeout_raises_with_a_summary(http_receiver: OtlpHttpReceiver) -> None:
    http_receiver.script(("status", 400, {}))
    _export(OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=1.0), _counter_data(1))

    started = time.monotonic()
    with pytest.raises(AssertionError, match="never-arrives") as excinfo:
        http_receiver.wait_for(
            lambda rx: rx.latest_points("missing")[0], timeout=0.2, description="never-arrives"
        )
    assert time.monotonic() - started < 1.0
    message = str(excinfo.value)
    assert "IndexError" in message
    assert "1 request(s)" in message
    assert "/v1/metrics" in message
    assert "status 400" in message


def test_latest_points_reflects_the_most_recent_request(http_receiver: OtlpHttpReceiver) -> None:
    exporter = OTLPMetricExporter(endpoint=http_receiver.metrics_url, timeout=2.0)
    try:
        assert exporter.export(_counter_data(2)) is MetricExportResult.SUCCESS
        http_receiver.script(("status", 400, {}))
        assert exporter.export(_counter_data(5)) is MetricExportResult.FAILURE
    finally:
        exporter.shutdown()

    assert [p.value for p in http_receiver.points("c")] == [2, 5]
    assert [p.value for p in http_receiver.latest_points("c")] == [5]
    assert [p.value for p in http_receiver.latest_points("c", accepted_only=True)] == [2]
    assert [p.value for p in http_receiver.metrics(accepted_only=True)] == [2]
    assert http_receiver.latest_points("absent") == []


def test_stop_is_prompt_with_an_idle_keep_alive_connection() -> None:
    rx = OtlpHttpReceiver().start()
    port = rx.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/v1/metrics", body=b"", headers={"Content-Type": "application/x-protobuf"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        assert response.getheader("Connection") is None  # HTTP/1.1 keep-alive: socket stays open

        started = time.monotonic()
        rx.stop(timeout=2.0)
        assert time.monotonic() - started < 1.0
        rx.stop()  # idempotent
    finally:
        conn.close()

    probe = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    with pytest.raises(ConnectionRefusedError):
        probe.request("POST", "/v1/metrics", body=b"")
    probe.close()


def test_receivers_bind_loopback_on_distinct_ephemeral_ports() -> None:
    with OtlpHttpReceiver() as first, OtlpHttpReceiver() as second, OtlpGrpcReceiver() as third:
        endpoints = [first.endpoint, second.endpoint, third.endpoint]
        assert all(e.startswith("http://127.0.0.1:") for e in endpoints)
        assert len(set(endpoints)) == 3
        assert first.metrics_url == f"{first.endpoint}/v1/metrics"
        assert first.traces_url == f"{first.endpoint}/v1/traces"
    with pytest.raises(RuntimeError):
        first.start()


def test_concurrent_requests_are_all_recorded(http_receiver: OtlpHttpReceiver) -> None:
    body = encode_metrics(_counter_data(1)).SerializeToString()
    statuses: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        status, _, _ = _post(http_receiver, "/v1/metrics", body)
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert statuses == [200] * 8
    assert len(http_receiver.metric_requests()) == 8
    arrivals = [r.arrival for r in http_receiver.requests()]
    assert all(a > 0 for a in arrivals)


def test_behaviour_scripts_are_validated_eagerly() -> None:
    bad_http: list[Any] = [
        "nope",
        ("status", 99),
        ("status", 200, {"x": 1}),
        ("partial", -1),
        ("partial", True),
    ]
    for behaviour in bad_http:
        with pytest.raises(ValueError, match="unknown HTTP receiver behaviour"):
            OtlpHttpReceiver(behaviours=[behaviour])
    bad_grpc: list[Any] = ["hang", ("abort", 14), ("abort", grpc.StatusCode.UNAVAILABLE, -1.0)]
    for behaviour in bad_grpc:
        with pytest.raises(ValueError, match="unknown gRPC receiver behaviour"):
            OtlpGrpcReceiver(behaviours=[behaviour])
    with pytest.raises(ValueError, match=r"StatusCode\.OK"):
        OtlpGrpcReceiver(default=("abort", grpc.StatusCode.OK))


def test_decode_any_value_covers_every_variant() -> None:
    def kv(key: str, value: AnyValue) -> KeyValue:
        return KeyValue(key=key, value=value)

    nested = AnyValue(
        kvlist_value=KeyValueList(
            values=[
                kv("s", AnyValue(string_value="x")),
                kv("b", AnyValue(bool_value=False)),
                kv("i", AnyValue(int_value=-7)),
                kv("d", AnyValue(double_value=1.5)),
                kv("raw", AnyValue(bytes_value=b"\x00\x01")),
                kv(
                    "arr",
                    AnyValue(
                        array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="two")])
                    ),
                ),
                kv("empty", AnyValue()),
            ]
        )
    )
    assert decode_any_value(nested) == {
        "s": "x",
        "b": False,
        "i": -7,
        "d": 1.5,
        "raw": b"\x00\x01",
        "arr": [1, "two"],
        "empty": None,
    }
    assert decode_any_value(AnyValue(array_value=ArrayValue())) == []
    assert decode_any_value(AnyValue(kvlist_value=KeyValueList())) == {}
    assert isinstance(decode_any_value(AnyValue(int_value=3)), int)
    assert decode_any_value(AnyValue(bool_value=True)) is True
