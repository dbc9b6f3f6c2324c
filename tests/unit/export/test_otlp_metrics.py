"""The OTLP metrics modeltap exports, as the exporter encodes them for the Collector."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.resources import Resource

from modeltap.export.otlp_metrics import build_metrics_data
from modeltap.snapshot import CounterPoint, Snapshot


def encoded_metrics(snapshot: Snapshot) -> dict[str, str | None]:
    """Each exported metric's name and the kind of data its protobuf carries."""
    request = encode_metrics(build_metrics_data(snapshot, Resource.get_empty()))
    return {
        metric.name: metric.WhichOneof("data")
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def test_a_metric_without_points_is_not_exported_without_data() -> None:
    """Before the first request (and the sidecar's error counter, until an error) there are no
    points: the encoder then writes a metric with no data, which the Collector rejects with an
    error log line on every export."""
    idle = Snapshot(taken_unix_ns=2, start_unix_ns=1, instance_id="i", pid=1, proxy_errors=())
    busy = Snapshot(
        taken_unix_ns=2,
        start_unix_ns=1,
        instance_id="i",
        pid=1,
        proxy_errors=(CounterPoint((("error.type", "upstream_timeout"),), 3.0),),
    )

    exported = encoded_metrics(idle)
    with_errors = encoded_metrics(busy)

    assert exported, "the self-monitoring gauges are exported from the start"
    assert None not in exported.values(), exported
    assert "modeltap.proxy.errors" not in exported
    assert with_errors["modeltap.proxy.errors"] == "sum"
