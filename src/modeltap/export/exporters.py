"""The OTLP exporters of the pinned SDK, built from `ExportConfig` (http/protobuf or grpc).

Metrics use the SDK exporters as they are. Spans arrive already encoded (see `span_wire`), so
the span exporters are thin subclasses that send those bytes through the SDK's own transport,
keeping its retry, timeout, TLS, header and compression handling. They rely on two internals of
the pinned exporter version (the HTTP client object and the gRPC `_translate_data` hook); the
tests export through both against a real receiver, so a change of pin that breaks them fails CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as _HttpSpans
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from modeltap.config import ExportConfig

if TYPE_CHECKING:
    from modeltap.export.grpc_spans import GrpcEncodedSpanExporter


class EncodedSpans(NamedTuple):
    """A serialized ExportTraceServiceRequest and the number of spans in it."""

    payload: bytes
    span_count: int


class HttpEncodedSpanExporter(_HttpSpans):
    """OTLP/HTTP span exporter taking `EncodedSpans` instead of SDK spans."""

    # The status of the last failed export, so a batch the collector refused (4xx: bad data,
    # never retried) is counted apart from one that could not be delivered.
    last_failure_status: int | None = None

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        batch: EncodedSpans = spans  # type: ignore[assignment]
        if self._shutdown:
            return SpanExportResult.FAILURE
        result = self._client.export(batch.payload)
        if result.success:
            return SpanExportResult.SUCCESS
        self.last_failure_status = result.status_code
        return SpanExportResult.FAILURE


SpanSender: TypeAlias = "HttpEncodedSpanExporter | GrpcEncodedSpanExporter"


def make_metric_exporter(config: ExportConfig) -> MetricExporter | None:
    target = config.metrics_target
    if target is None:
        return None
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

        return GrpcMetrics(endpoint=target, headers=dict(config.headers), timeout=config.timeout_s)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics

    return HttpMetrics(endpoint=target, headers=dict(config.headers), timeout=config.timeout_s)


def make_span_exporter(config: ExportConfig) -> SpanSender | None:
    target = config.traces_target
    if target is None:
        return None
    if config.protocol == "grpc":
        # gRPC is imported only for it: the library is large, and most exports go over HTTP.
        from modeltap.export.grpc_spans import GrpcEncodedSpanExporter

        return GrpcEncodedSpanExporter(
            endpoint=target, headers=dict(config.headers), timeout=config.timeout_s
        )
    return HttpEncodedSpanExporter(endpoint=target, headers=dict(config.headers), timeout=config.timeout_s)
