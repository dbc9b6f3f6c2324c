"""The OTLP/gRPC span exporter taking already encoded spans (see `exporters`); a module of its
own so that gRPC is imported only where spans go over gRPC."""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as _GrpcSpans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class GrpcEncodedSpanExporter(_GrpcSpans):
    """OTLP/gRPC span exporter taking `EncodedSpans` instead of SDK spans."""

    def _translate_data(self, data: Any) -> ExportTraceServiceRequest:
        request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(data.payload)
        return request

    def _count_data(self, data: Any) -> int:
        return int(data.span_count)
