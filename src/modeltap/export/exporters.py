"""The OTLP exporters of the pinned SDK, built from `ExportConfig` (http/protobuf or grpc)."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

from modeltap.config import ExportConfig


def make_metric_exporter(config: ExportConfig) -> MetricExporter | None:
    target = config.metrics_target
    if target is None:
        return None
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

        return GrpcMetrics(endpoint=target, headers=dict(config.headers), timeout=config.timeout_s)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics

    return HttpMetrics(endpoint=target, headers=dict(config.headers), timeout=config.timeout_s)


def make_span_exporter(config: ExportConfig) -> SpanExporter | None:
    target = config.traces_target
    if target is None:
        return None
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

        return GrpcSpans(endpoint=target, headers=dict(config.headers), timeout=config.timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

    return HttpSpans(endpoint=target, headers=dict(config.headers), timeout=config.timeout_s)
