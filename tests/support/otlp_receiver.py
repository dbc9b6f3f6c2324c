"""Real OTLP receivers for tests, built on the official ``opentelemetry.proto`` messages.

Two receivers are provided:

* :class:`OtlpHttpReceiver` -- OTLP/HTTP (binary protobuf) on ``POST /v1/metrics`` and
  ``POST /v1/traces`` with a scriptable response policy (ok, partial success, any HTTP status
  with headers, hang, close) so exporter retry and timeout behaviour can be tested end to end.
* :class:`OtlpGrpcReceiver` -- OTLP/gRPC ``MetricsService.Export`` and ``TraceService.Export``
  with a smaller policy (ok, partial success, abort with a status code).

Both record every request (arrival time, path, sizes, headers, decoded message) and offer
helpers that flatten the protobuf messages into plain dataclasses (:class:`MetricPoint`,
:class:`SpanRecord`) so tests can assert on exact values.  Both only ever bind 127.0.0.1.

Typical use::

    with OtlpHttpReceiver() as rx:
        exporter = OTLPMetricExporter(endpoint=rx.metrics_url, timeout=2.0)
        ...
        rx.wait_for(lambda r: r.latest_points("requests"), timeout=2.0)
        assert rx.latest_points("requests")[0].value == 3
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import socket
import socketserver
import sys
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

# googleapis-common-protos (a dependency of the OTLP exporters) ships no py.typed marker, so
# these two modules are loaded dynamically and used as Any rather than silencing the import.
_status_pb2: Any = importlib.import_module("google.rpc.status_pb2")
_error_details_pb2: Any = importlib.import_module("google.rpc.error_details_pb2")

__all__ = [
    "AttrValue",
    "GrpcBehaviour",
    "HttpBehaviour",
    "MetricPoint",
    "OtlpGrpcReceiver",
    "OtlpHttpReceiver",
    "ReceivedRequest",
    "SpanEventRecord",
    "SpanLinkRecord",
    "SpanRecord",
    "decode_any_value",
    "decode_attributes",
    "flatten_metrics",
    "flatten_spans",
]

# A decoded OTLP AnyValue.  ``None`` stands for an AnyValue with no field set (OTLP's "empty").
AttrValue: TypeAlias = str | bool | int | float | bytes | list["AttrValue"] | dict[str, "AttrValue"] | None

# Scripted behaviours of the HTTP receiver, consumed one per valid request:
#   "ok"                          200 + empty Export*ServiceResponse
#   ("partial", n)                200 + partial_success.rejected_{data_points,spans} = n
#   ("status", code[, headers])   that HTTP status (with optional response headers) + google.rpc.Status body
#   "hang"                        read the body, never answer until the receiver stops
#   "close"                       read the body, close the connection without any response
HttpBehaviour: TypeAlias = (
    Literal["ok", "hang", "close"]
    | tuple[Literal["partial"], int]
    | tuple[Literal["status"], int]
    | tuple[Literal["status"], int, Mapping[str, str]]
)

# Scripted behaviours of the gRPC receiver:
#   "ok" | ("partial", n) | ("abort", grpc.StatusCode) | ("abort", grpc.StatusCode, retry_delay_seconds)
# The optional retry delay is sent as google.rpc.RetryInfo trailing metadata, which the
# exporter uses instead of its exponential backoff.
GrpcBehaviour: TypeAlias = (
    Literal["ok"]
    | tuple[Literal["partial"], int]
    | tuple[Literal["abort"], Any]
    | tuple[Literal["abort"], Any, float]
)

Signal: TypeAlias = Literal["metrics", "traces"]
MetricKind: TypeAlias = Literal["gauge", "sum", "histogram", "exponential_histogram", "summary"]
OtlpRequest: TypeAlias = ExportMetricsServiceRequest | ExportTraceServiceRequest

METRICS_PATH = "/v1/metrics"
TRACES_PATH = "/v1/traces"
GRPC_METRICS_PATH = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
GRPC_TRACES_PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

_LOCALHOST = "127.0.0.1"
# The OTLP exporters cap requests at 64 MiB by default; anything much bigger is a test bug.
_MAX_BODY_BYTES = 128 * 1024 * 1024
_HTTP_PATHS: dict[str, Signal] = {METRICS_PATH: "metrics", TRACES_PATH: "traces"}
_ACCEPTED_OUTCOMES = frozenset({"ok", "partial"})

_R = TypeVar("_R", bound="_ReceiverBase")


# --------------------------------------------------------------------------------------------
# Plain-Python views of the protobuf messages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as seen by a receiver, recorded before any response is written.

    ``outcome`` is the behaviour applied: ``"ok"``, ``"partial"``, ``"status"``, ``"hang"``,
    ``"close"`` (HTTP), ``"abort"`` (gRPC) or ``"invalid"`` when the receiver itself rejected
    the request (unknown path, wrong content type, undecodable body; ``message`` is then None).
    ``status_code`` is the HTTP status sent (None for hang/close) or the numeric gRPC code.
    """

    arrival: float
    transport: Literal["http", "grpc"]
    path: str
    body_size: int
    decoded_size: int
    headers: dict[str, str]
    signal: Signal | None
    message: OtlpRequest | None
    outcome: str
    status_code: int | None
    error: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the receiver acknowledged the data (fully or partially)."""
        return self.outcome in _ACCEPTED_OUTCOMES


@dataclass(frozen=True)
class MetricPoint:
    """One data point of one metric, flattened together with its resource and scope.

    Fields that do not apply to the point's ``kind`` keep their defaults (None / empty list).
    Enum-valued fields use the proto enum names, e.g. ``"AGGREGATION_TEMPORALITY_CUMULATIVE"``.
    """

    name: str
    kind: MetricKind
    attributes: dict[str, AttrValue]
    start_time_unix_nano: int
    time_unix_nano: int
    resource: dict[str, AttrValue] = field(default_factory=dict)
    scope_name: str = ""
    scope_version: str = ""
    description: str = ""
    unit: str = ""
    # sum only
    is_monotonic: bool | None = None
    # sum, histogram, exponential_histogram
    temporality: str | None = None
    # sum, gauge: int for as_int, float for as_double, None when neither is set
    value: int | float | None = None
    # histogram, exponential_histogram, summary
    count: int | None = None
    sum: float | None = None
    # histogram
    bucket_counts: list[int] = field(default_factory=list)
    explicit_bounds: list[float] = field(default_factory=list)
    # histogram, exponential_histogram
    min: float | None = None
    max: float | None = None
    # exponential_histogram
    scale: int | None = None
    zero_count: int | None = None
    positive_offset: int | None = None
    positive_bucket_counts: list[int] = field(default_factory=list)
    negative_offset: int | None = None
    negative_bucket_counts: list[int] = field(default_factory=list)
    # summary: (quantile, value) pairs
    quantiles: list[tuple[float, float]] = field(default_factory=list)

    @property
    def end_time_unix_nano(self) -> int:
        """Alias of ``time_unix_nano`` (OTLP calls the end of the interval just "time")."""
        return self.time_unix_nano


@dataclass(frozen=True)
class SpanEventRecord:
    """A span event: name, attributes and timestamp."""

    name: str
    attributes: dict[str, AttrValue]
    time_unix_nano: int


@dataclass(frozen=True)
class SpanLinkRecord:
    """A span link with hex ids."""

    trace_id: str
    span_id: str
    attributes: dict[str, AttrValue]


@dataclass(frozen=True)
class SpanRecord:
    """One span, flattened together with its resource and scope.

    Ids are lowercase hex (trace 32 chars, span 16, parent '' for a root span).  ``kind`` and
    ``status_code`` are proto enum names, e.g. ``"SPAN_KIND_SERVER"``, ``"STATUS_CODE_ERROR"``.
    """

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, AttrValue]
    status_code: str
    status_message: str = ""
    events: list[SpanEventRecord] = field(default_factory=list)
    links: list[SpanLinkRecord] = field(default_factory=list)
    trace_state: str = ""
    resource: dict[str, AttrValue] = field(default_factory=dict)
    scope_name: str = ""
    scope_version: str = ""

    @property
    def duration_ns(self) -> int:
        """End minus start, in nanoseconds."""
        return self.end_time_unix_nano - self.start_time_unix_nano


def decode_any_value(value: AnyValue) -> AttrValue:
    """Convert an OTLP ``AnyValue`` into the equivalent plain Python value (recursively)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bytes_value":
        return value.bytes_value
    if which == "array_value":
        return [decode_any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    # string_value_strindex only appears in profiles, which reference a shared string table
    # this receiver does not see, so the raw index is the most faithful thing to return.
    return value.string_value_strindex


def decode_attributes(attributes: Iterable[KeyValue]) -> dict[str, AttrValue]:
    """Convert repeated ``KeyValue`` into a dict; a repeated key keeps its last value."""
    return {kv.key: decode_any_value(kv.value) for kv in attributes}


def _enum_name(name_of: Callable[[int], str], number: int) -> str:
    # Senders may use enum numbers newer than this proto package; keep them visible as text.
    try:
        return name_of(number)
    except ValueError:
        return str(number)


def _temporality_name(number: int) -> str:
    return _enum_name(AggregationTemporality.Name, number)


def _scope_names(scope: InstrumentationScope) -> tuple[str, str]:
    return scope.name, scope.version


def _resource_attributes(resource: Resource) -> dict[str, AttrValue]:
    return decode_attributes(resource.attributes)


def _metric_points(
    metric: Metric, resource: dict[str, AttrValue], scope_name: str, scope_version: str
) -> list[MetricPoint]:
    kind = metric.WhichOneof("data")
    if kind is None:
        return []
    # Metric-level fields shared by every point; each point is a dataclasses.replace() of this,
    # which mypy checks field by field.
    template = MetricPoint(
        name=metric.name,
        kind=kind,
        attributes={},
        start_time_unix_nano=0,
        time_unix_nano=0,
        resource=resource,
        scope_name=scope_name,
        scope_version=scope_version,
        description=metric.description,
        unit=metric.unit,
    )
    if kind == "sum":
        template = replace(
            template,
            is_monotonic=metric.sum.is_monotonic,
            temporality=_temporality_name(metric.sum.aggregation_temporality),
        )
    elif kind == "histogram":
        template = replace(template, temporality=_temporality_name(metric.histogram.aggregation_temporality))
    elif kind == "exponential_histogram":
        template = replace(
            template, temporality=_temporality_name(metric.exponential_histogram.aggregation_temporality)
        )

    points: list[MetricPoint] = []
    if kind in ("sum", "gauge"):
        for number in (metric.sum if kind == "sum" else metric.gauge).data_points:
            which = number.WhichOneof("value")
            value: int | float | None
            if which == "as_int":
                value = number.as_int
            elif which == "as_double":
                value = number.as_double
            else:
                value = None
            points.append(
                replace(
                    template,
                    attributes=decode_attributes(number.attributes),
                    start_time_unix_nano=number.start_time_unix_nano,
                    time_unix_nano=number.time_unix_nano,
                    value=value,
                )
            )
    elif kind == "histogram":
        for hist in metric.histogram.data_points:
            points.append(
                replace(
                    template,
                    attributes=decode_attributes(hist.attributes),
                    start_time_unix_nano=hist.start_time_unix_nano,
                    time_unix_nano=hist.time_unix_nano,
                    count=hist.count,
                    # sum/min/max are proto3 ``optional``: "not sent" and 0.0 must stay distinct.
                    sum=hist.sum if hist.HasField("sum") else None,
                    bucket_counts=list(hist.bucket_counts),
                    explicit_bounds=list(hist.explicit_bounds),
                    min=hist.min if hist.HasField("min") else None,
                    max=hist.max if hist.HasField("max") else None,
                )
            )
    elif kind == "exponential_histogram":
        for expo in metric.exponential_histogram.data_points:
            points.append(
                replace(
                    template,
                    attributes=decode_attributes(expo.attributes),
                    start_time_unix_nano=expo.start_time_unix_nano,
                    time_unix_nano=expo.time_unix_nano,
                    count=expo.count,
                    sum=expo.sum if expo.HasField("sum") else None,
                    min=expo.min if expo.HasField("min") else None,
                    max=expo.max if expo.HasField("max") else None,
                    scale=expo.scale,
                    zero_count=expo.zero_count,
                    positive_offset=expo.positive.offset,
                    positive_bucket_counts=list(expo.positive.bucket_counts),
                    negative_offset=expo.negative.offset,
                    negative_bucket_counts=list(expo.negative.bucket_counts),
                )
            )
    else:  # summary
        for summary in metric.summary.data_points:
            points.append(
                replace(
                    template,
                    attributes=decode_attributes(summary.attributes),
                    start_time_unix_nano=summary.start_time_unix_nano,
                    time_unix_nano=summary.time_unix_nano,
                    count=summary.count,
                    sum=summary.sum,
                    quantiles=[(q.quantile, q.value) for q in summary.quantile_values],
                )
            )
    return points


def flatten_metrics(request: ExportMetricsServiceRequest, name: str | None = None) -> list[MetricPoint]:
    """Flatten every data point of ``request`` (optionally only metric ``name``), in wire order."""
    points: list[MetricPoint] = []
    for resource_metrics in request.resource_metrics:
        resource = _resource_attributes(resource_metrics.resource)
        for scope_metrics in resource_metrics.scope_metrics:
            scope_name, scope_version = _scope_names(scope_metrics.scope)
            for metric in scope_metrics.metrics:
                if name is None or metric.name == name:
                    points.extend(_metric_points(metric, resource, scope_name, scope_version))
    return points


def _span_record(
    span: Span, resource: dict[str, AttrValue], scope_name: str, scope_version: str
) -> SpanRecord:
    status: Status = span.status
    return SpanRecord(
        name=span.name,
        kind=_enum_name(Span.SpanKind.Name, span.kind),
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        start_time_unix_nano=span.start_time_unix_nano,
        end_time_unix_nano=span.end_time_unix_nano,
        attributes=decode_attributes(span.attributes),
        status_code=_enum_name(Status.StatusCode.Name, status.code),
        status_message=status.message,
        events=[
            SpanEventRecord(
                name=event.name,
                attributes=decode_attributes(event.attributes),
                time_unix_nano=event.time_unix_nano,
            )
            for event in span.events
        ],
        links=[
            SpanLinkRecord(
                trace_id=link.trace_id.hex(),
                span_id=link.span_id.hex(),
                attributes=decode_attributes(link.attributes),
            )
            for link in span.links
        ],
        trace_state=span.trace_state,
        resource=dict(resource),
        scope_name=scope_name,
        scope_version=scope_version,
    )


def flatten_spans(request: ExportTraceServiceRequest) -> list[SpanRecord]:
    """Flatten every span of ``request``, in wire order."""
    spans: list[SpanRecord] = []
    for resource_spans in request.resource_spans:
        resource = _resource_attributes(resource_spans.resource)
        for scope_spans in resource_spans.scope_spans:
            scope_name, scope_version = _scope_names(scope_spans.scope)
            spans.extend(
                _span_record(span, resource, scope_name, scope_version) for span in scope_spans.spans
            )
    return spans


# --------------------------------------------------------------------------------------------
# Shared recording / scripting machinery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Action:
    """A validated, normalised behaviour."""

    kind: Literal["ok", "partial", "status", "hang", "close", "abort"]
    rejected: int = 0
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    grpc_code: Any = None
    retry_delay: float | None = None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_http_behaviour(behaviour: object) -> _Action:
    # Validate eagerly (at script time) so a typo fails the test that wrote it, not a later request.
    if behaviour == "ok":
        return _Action("ok")
    if behaviour == "hang":
        return _Action("hang")
    if behaviour == "close":
        return _Action("close")
    if isinstance(behaviour, tuple) and behaviour:
        tag = behaviour[0]
        if tag == "partial" and len(behaviour) == 2 and _is_count(behaviour[1]):
            return _Action("partial", rejected=int(behaviour[1]))
        if tag == "status" and len(behaviour) in (2, 3):
            code = behaviour[1]
            headers = behaviour[2] if len(behaviour) == 3 else {}
            if (
                isinstance(code, int)
                and 100 <= code <= 599
                and isinstance(headers, Mapping)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
            ):
                return _Action("status", status=code, headers=tuple(headers.items()))
    raise ValueError(f"unknown HTTP receiver behaviour: {behaviour!r}")


def _parse_grpc_behaviour(behaviour: object) -> _Action:
    if behaviour == "ok":
        return _Action("ok")
    if isinstance(behaviour, tuple) and behaviour:
        tag = behaviour[0]
        if tag == "partial" and len(behaviour) == 2 and _is_count(behaviour[1]):
            return _Action("partial", rejected=int(behaviour[1]))
        if tag == "abort" and len(behaviour) in (2, 3) and isinstance(behaviour[1], grpc.StatusCode):
            code = behaviour[1]
            if code is grpc.StatusCode.OK:
                raise ValueError("cannot abort with StatusCode.OK; use 'ok'")
            delay = behaviour[2] if len(behaviour) == 3 else None
            if delay is None or (isinstance(delay, (int, float)) and delay >= 0):
                return _Action("abort", grpc_code=code, retry_delay=None if delay is None else float(delay))
    raise ValueError(f"unknown gRPC receiver behaviour: {behaviour!r}")


class _ReceiverBase(ABC):
    """Thread-safe request log, behaviour script and decoding helpers shared by both receivers."""

    def __init__(self, behaviours: Iterable[object], default: object) -> None:
        self._lock = threading.Lock()
        self._records: list[ReceivedRequest] = []
        self._errors: list[BaseException] = []
        self._script: deque[_Action] = deque(self._parse_behaviour(b) for b in behaviours)
        self._default = self._parse_behaviour(default)

    # -- lifecycle --------------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def _parse_behaviour(behaviour: object) -> _Action: ...

    @abstractmethod
    def start(self: _R) -> _R:
        """Bind and start serving; idempotent.  Returns ``self`` for chaining."""

    @abstractmethod
    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and release sockets and threads, waiting at most about ``timeout`` s."""

    @property
    @abstractmethod
    def port(self) -> int:
        """The bound port (only valid after :meth:`start`)."""

    @property
    def endpoint(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT``."""
        return f"http://{_LOCALHOST}:{self.port}"

    def __enter__(self: _R) -> _R:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting --------------------------------------------------------------------------

    def _next_action(self) -> _Action:
        with self._lock:
            return self._script.popleft() if self._script else self._default

    def pending_behaviours(self) -> int:
        """How many scripted behaviours have not been consumed yet."""
        with self._lock:
            return len(self._script)

    # -- recording --------------------------------------------------------------------------

    def _record(self, record: ReceivedRequest) -> None:
        with self._lock:
            self._records.append(record)

    def _record_error(self, error: BaseException) -> None:
        with self._lock:
            self._errors.append(error)

    def errors(self) -> list[BaseException]:
        """Unexpected exceptions raised inside server threads (should normally be empty)."""
        with self._lock:
            return list(self._errors)

    def clear(self) -> None:
        """Forget all recorded requests and errors (the behaviour script is kept)."""
        with self._lock:
            self._records.clear()
            self._errors.clear()

    def requests(self, path: str | None = None) -> list[ReceivedRequest]:
        """Snapshot of every recorded request in arrival order, optionally only for ``path``."""
        with self._lock:
            records = list(self._records)
        return [r for r in records if path is None or r.path == path]

    def _messages(self, signal: Signal, accepted_only: bool) -> list[OtlpRequest]:
        return [
            r.message
            for r in self.requests()
            if r.signal == signal and r.message is not None and (r.accepted or not accepted_only)
        ]

    def metric_requests(self, *, accepted_only: bool = False) -> list[ExportMetricsServiceRequest]:
        """Decoded ``ExportMetricsServiceRequest`` of every metrics request, in arrival order.

        Requests answered with an error, a hang or a close are included unless ``accepted_only``.
        """
        return [cast(ExportMetricsServiceRequest, m) for m in self._messages("metrics", accepted_only)]

    def trace_requests(self, *, accepted_only: bool = False) -> list[ExportTraceServiceRequest]:
        """Decoded ``ExportTraceServiceRequest`` of every traces request, in arrival order."""
        return [cast(ExportTraceServiceRequest, m) for m in self._messages("traces", accepted_only)]

    def metrics(self, *, accepted_only: bool = False) -> list[MetricPoint]:
        """Every data point of every metrics request, flattened (retries appear twice)."""
        return [
            p
            for request in self.metric_requests(accepted_only=accepted_only)
            for p in flatten_metrics(request)
        ]

    def points(self, name: str, *, accepted_only: bool = False) -> list[MetricPoint]:
        """Every data point of metric ``name`` across all requests."""
        return [
            p
            for request in self.metric_requests(accepted_only=accepted_only)
            for p in flatten_metrics(request, name)
        ]

    def latest_points(self, name: str, *, accepted_only: bool = False) -> list[MetricPoint]:
        """Points of metric ``name`` from the most recent request that contained it, else ``[]``.

        Cumulative exports resend every point each cycle, so the latest request is the current state.
        """
        for request in reversed(self.metric_requests(accepted_only=accepted_only)):
            points = flatten_metrics(request, name)
            if points:
                return points
        return []

    def metric_names(self) -> list[str]:
        """Distinct metric names seen so far, in first-seen order."""
        return list(dict.fromkeys(p.name for p in self.metrics()))

    def spans(self, *, accepted_only: bool = False) -> list[SpanRecord]:
        """Every span of every traces request, flattened, in arrival order."""
        return [
            s for request in self.trace_requests(accepted_only=accepted_only) for s in flatten_spans(request)
        ]

    def summary(self) -> str:
        """Human-readable digest of what was received, for assertion messages."""
        records = self.requests()
        if not records:
            return "no requests received"
        origin = records[0].arrival
        lines = [f"{len(records)} request(s):"]
        for index, r in enumerate(records):
            if isinstance(r.message, ExportMetricsServiceRequest):
                content = "metrics=" + ",".join(dict.fromkeys(p.name for p in flatten_metrics(r.message)))
            elif isinstance(r.message, ExportTraceServiceRequest):
                content = "spans=" + ",".join(s.name for s in flatten_spans(r.message))
            else:
                content = r.error or "no message"
            lines.append(
                f"  #{index} +{r.arrival - origin:.3f}s {r.transport} {r.path} {r.body_size}B "
                f"-> {r.outcome} {r.status_code} [{content}]"
            )
        errors = self.errors()
        if errors:
            lines.append(f"server errors: {errors!r}")
        return "\n".join(lines)

    def wait_for(
        self: _R,
        predicate: Callable[[_R], object],
        timeout: float = 5.0,
        *,
        interval: float = 0.01,
        description: str = "",
    ) -> None:
        """Poll until ``predicate(self)`` is truthy; raise AssertionError after ``timeout`` s.

        AssertionError and LookupError from the predicate count as "not yet", so predicates
        may index into lists that are still empty; the last one is reported on timeout.
        """
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            try:
                if predicate(self):
                    return
                last_error = None
            except (AssertionError, LookupError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        what = description or getattr(predicate, "__name__", repr(predicate))
        detail = f"; last predicate error: {last_error!r}" if last_error is not None else ""
        try:
            where = self.endpoint
        except RuntimeError:
            where = "a receiver that was never started"
        raise AssertionError(
            f"condition {what!r} not met within {timeout:.2f}s on {where}{detail}\n{self.summary()}"
        )


# --------------------------------------------------------------------------------------------
# OTLP/HTTP
# --------------------------------------------------------------------------------------------


class _HttpError(Exception):
    """A request the receiver itself rejects before any scripted behaviour applies."""

    def __init__(self, status: int, reason: str, *, close: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        # When the body was not (fully) read the stream is out of sync, so the connection must go.
        self.close = close


def _grpc_code_for_http(status: int) -> int:
    # OTLP/HTTP error bodies are google.rpc.Status; pick the gRPC code a collector would use.
    codes = grpc.StatusCode
    mapping = {
        400: codes.INVALID_ARGUMENT,
        404: codes.UNIMPLEMENTED,
        411: codes.INVALID_ARGUMENT,
        413: codes.RESOURCE_EXHAUSTED,
        415: codes.INVALID_ARGUMENT,
        429: codes.RESOURCE_EXHAUSTED,
        500: codes.INTERNAL,
        502: codes.UNAVAILABLE,
        503: codes.UNAVAILABLE,
        504: codes.UNAVAILABLE,
    }
    # grpc.StatusCode values are (number, name) tuples.
    return int(mapping.get(status, codes.UNKNOWN).value[0])


def _decompress(raw: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity", "none"):
            return raw
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(raw)
        if encoding == "deflate":
            try:
                return zlib.decompress(raw)
            except zlib.error:
                # Some clients send raw DEFLATE without the zlib header.
                return zlib.decompress(raw, -zlib.MAX_WBITS)
    except (OSError, EOFError, zlib.error) as exc:
        raise _HttpError(400, f"cannot decode {encoding} body: {exc}") from exc
    raise _HttpError(415, f"unsupported Content-Encoding {encoding!r}")


def _decode_http_body(path: str, headers: Mapping[str, str], raw: bytes) -> tuple[Signal, OtlpRequest, int]:
    signal = _HTTP_PATHS.get(path)
    if signal is None:
        raise _HttpError(404, f"unknown path {path!r}")
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-protobuf":
        raise _HttpError(415, f"unsupported Content-Type {content_type!r}; only application/x-protobuf")
    body = _decompress(raw, headers.get("content-encoding", ""))
    try:
        if signal == "metrics":
            message: OtlpRequest = ExportMetricsServiceRequest.FromString(body)
        else:
            message = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise _HttpError(400, f"cannot decode protobuf: {exc}") from exc
    return signal, message, len(body)


def _metrics_response(rejected: int) -> ExportMetricsServiceResponse:
    response = ExportMetricsServiceResponse()
    if rejected:
        response.partial_success.CopyFrom(
            ExportMetricsPartialSuccess(
                rejected_data_points=rejected, error_message=f"test receiver rejected {rejected}"
            )
        )
    return response


def _trace_response(rejected: int) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(
                rejected_spans=rejected, error_message=f"test receiver rejected {rejected}"
            )
        )
    return response


def _success_body(signal: Signal, rejected: int) -> bytes:
    # With rejected == 0 this is the empty message, i.e. a zero-length body, as collectors send.
    response = _metrics_response(rejected) if signal == "metrics" else _trace_response(rejected)
    return bytes(response.SerializeToString())


class _OtlpHttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks its connections so stop() can end them promptly."""

    daemon_threads = True
    # We join handler threads ourselves with a deadline instead of unbounded server_close() joins.
    block_on_close = False

    def __init__(self, receiver: OtlpHttpReceiver) -> None:
        self.receiver = receiver
        self.stopping = threading.Event()
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        super().__init__((_LOCALHOST, 0), _OtlpHttpHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() calls socket.getfqdn(), which can stall on a machine with slow
        # reverse DNS; the name is never used here, so bind like a plain TCPServer.
        socketserver.TCPServer.server_bind(self)
        self.server_name = _LOCALHOST
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"otlp-http-conn-{client_address[1]}",
            daemon=True,
        )
        with self._conn_lock:
            self._handler_threads.add(thread)
            self._connections.add(request)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._connections.discard(request)
                self._handler_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Peers vanishing (exporter timeouts, "close", stop()) are expected; anything else is a
        # receiver bug that tests can see through rx.errors() instead of a stderr traceback.
        error = sys.exc_info()[1]
        if error is None or self.stopping.is_set() or isinstance(error, (ConnectionError, TimeoutError)):
            return
        self.receiver._record_error(error)

    def abort_connections(self) -> list[threading.Thread]:
        """Shut down every open connection socket; return the handler threads still alive."""
        with self._conn_lock:
            connections = list(self._connections)
            threads = list(self._handler_threads)
        for conn in connections:
            # shutdown() (unlike close()) wakes a thread blocked in recv() on this socket.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        return threads


class _OtlpHttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real collector; exporters pool connections
    server_version = "modeltap-otlp-test-receiver/1.0"
    # Idle keep-alive connections eventually give up even if stop() is never called.
    timeout = 30.0
    server: _OtlpHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; the receiver records requests itself."""

    def _read_body(self, headers: Mapping[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length_text = headers.get("content-length")
        if length_text is None:
            raise _HttpError(411, "Content-Length required", close=True)
        try:
            length = int(length_text)
        except ValueError:
            raise _HttpError(400, f"bad Content-Length {length_text!r}", close=True) from None
        if length < 0 or length > _MAX_BODY_BYTES:
            raise _HttpError(413, f"body of {length} bytes refused", close=True)
        body = self.rfile.read(length)
        if len(body) != length:
            raise _HttpError(400, f"body truncated at {len(body)} of {length} bytes", close=True)
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HttpError(400, f"bad chunk size line {size_line!r}", close=True) from None
            if size == 0:
                # Skip optional trailers up to the blank line that ends the message.
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY_BYTES:
                raise _HttpError(413, "chunked body too large", close=True)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _HttpError(400, "chunked body truncated", close=True)
            chunks.append(chunk)
            self.rfile.readline(1024)  # CRLF after each chunk

    def _respond(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        extra = list(headers)
        self.send_response(status)
        if not any(name.lower() == "content-type" for name, _ in extra):
            self.send_header("Content-Type", "application/x-protobuf")
        for name, value in extra:
            # Content-Length must describe the body we actually send.
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_POST(self) -> None:
        arrival = time.monotonic()
        receiver = self.server.receiver
        path = urlsplit(self.path).path
        headers = {name.lower(): value for name, value in self.headers.items()}
        raw = b""
        try:
            raw = self._read_body(headers)
            signal, message, decoded_size = _decode_http_body(path, headers, raw)
        except _HttpError as err:
            receiver._record(
                ReceivedRequest(
                    arrival=arrival,
                    transport="http",
                    path=path,
                    body_size=len(raw),
                    decoded_size=0,
                    headers=headers,
                    signal=_HTTP_PATHS.get(path),
                    message=None,
                    outcome="invalid",
                    status_code=err.status,
                    error=err.reason,
                )
            )
            status = _status_pb2.Status(code=_grpc_code_for_http(err.status), message=err.reason)
            # send_header("Connection", "close") also sets self.close_connection.
            self._respond(
                err.status, bytes(status.SerializeToString()), [("Connection", "close")] if err.close else []
            )
            return

        action = receiver._next_action()
        receiver._record(
            ReceivedRequest(
                arrival=arrival,
                transport="http",
                path=path,
                body_size=len(raw),
                decoded_size=decoded_size,
                headers=headers,
                signal=signal,
                message=message,
                outcome=action.kind,
                status_code=None if action.kind in ("hang", "close") else action.status,
            )
        )
        if action.kind == "hang":
            # Park this handler thread until stop(); stop() sets the event before anything else,
            # so a hung request never delays shutdown.
            self.server.stopping.wait()
            self.close_connection = True
        elif action.kind == "close":
            # No response at all: returning with close_connection makes socketserver close the socket.
            self.close_connection = True
        elif action.kind == "status":
            status = _status_pb2.Status(
                code=_grpc_code_for_http(action.status), message=f"scripted HTTP {action.status}"
            )
            self._respond(action.status, bytes(status.SerializeToString()), action.headers)
        else:
            self._respond(200, _success_body(signal, action.rejected))


class OtlpHttpReceiver(_ReceiverBase):
    """OTLP/HTTP protobuf receiver on ``127.0.0.1:<ephemeral>`` with a scriptable response policy.

    ``behaviours`` are consumed one per valid request (requests the receiver rejects itself --
    unknown path, wrong content type, bad body -- do not consume them); afterwards ``default``
    applies.  See :data:`HttpBehaviour` for the vocabulary.  Every request is recorded, including
    rejected, hung and closed ones.
    """

    def __init__(self, behaviours: Iterable[HttpBehaviour] = (), default: HttpBehaviour = "ok") -> None:
        super().__init__(behaviours, default)
        self._server: _OtlpHttpServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    @staticmethod
    def _parse_behaviour(behaviour: object) -> _Action:
        return _parse_http_behaviour(behaviour)

    def script(self, *behaviours: HttpBehaviour) -> None:
        """Append behaviours to the queue consumed by upcoming requests."""
        actions = [_parse_http_behaviour(b) for b in behaviours]
        with self._lock:
            self._script.extend(actions)

    def set_default(self, behaviour: HttpBehaviour) -> None:
        """Behaviour used once the scripted queue is empty."""
        action = _parse_http_behaviour(behaviour)
        with self._lock:
            self._default = action

    def start(self) -> OtlpHttpReceiver:
        """Bind 127.0.0.1:0 and serve in a daemon thread; idempotent."""
        if self._stopped:
            raise RuntimeError("OtlpHttpReceiver cannot be restarted; create a new one")
        if self._server is None:
            self._server = _OtlpHttpServer(self)
            # A short poll interval bounds how long shutdown() waits for the accept loop.
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"otlp-http-receiver-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("receiver not started")
        return int(self._server.server_address[1])

    @property
    def metrics_url(self) -> str:
        """Full metrics URL, as the HTTP exporter's ``endpoint`` argument expects."""
        return self.endpoint + METRICS_PATH

    @property
    def traces_url(self) -> str:
        """Full traces URL, as the HTTP exporter's ``endpoint`` argument expects."""
        return self.endpoint + TRACES_PATH

    def stop(self, timeout: float = 5.0) -> None:
        """Release hung requests, close every connection and the listener; idempotent.

        Bounded by ``timeout``: handler threads are daemons, so any that fail to exit in time
        are abandoned rather than waited on.
        """
        server, thread = self._server, self._thread
        if server is None or self._stopped:
            self._stopped = True
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        server.stopping.set()
        if thread is not None and thread.is_alive():
            server.shutdown()
            thread.join(max(0.0, deadline - time.monotonic()))
        server.server_close()
        for handler in server.abort_connections():
            handler.join(max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------------------------
# OTLP/gRPC
# --------------------------------------------------------------------------------------------


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: ExportMetricsServiceRequest, context: Any) -> ExportMetricsServiceResponse:
        action = self._receiver._handle(GRPC_METRICS_PATH, "metrics", request, context)
        return _metrics_response(action.rejected)


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
        action = self._receiver._handle(GRPC_TRACES_PATH, "traces", request, context)
        return _trace_response(action.rejected)


class OtlpGrpcReceiver(_ReceiverBase):
    """OTLP/gRPC receiver (MetricsService + TraceService) on ``127.0.0.1:<ephemeral>``.

    ``behaviours`` are consumed one per Export call, then ``default``; see :data:`GrpcBehaviour`.
    Point the gRPC exporters at :attr:`endpoint` (``http://`` makes them use plaintext).
    """

    def __init__(
        self, behaviours: Iterable[GrpcBehaviour] = (), default: GrpcBehaviour = "ok", *, max_workers: int = 4
    ) -> None:
        super().__init__(behaviours, default)
        self._max_workers = max_workers
        self._server: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._port: int | None = None
        self._stopped = False

    @staticmethod
    def _parse_behaviour(behaviour: object) -> _Action:
        return _parse_grpc_behaviour(behaviour)

    def script(self, *behaviours: GrpcBehaviour) -> None:
        """Append behaviours to the queue consumed by upcoming Export calls."""
        actions = [_parse_grpc_behaviour(b) for b in behaviours]
        with self._lock:
            self._script.extend(actions)

    def set_default(self, behaviour: GrpcBehaviour) -> None:
        """Behaviour used once the scripted queue is empty."""
        action = _parse_grpc_behaviour(behaviour)
        with self._lock:
            self._default = action

    def start(self) -> OtlpGrpcReceiver:
        """Bind 127.0.0.1:0 and start the gRPC server; idempotent."""
        if self._stopped:
            raise RuntimeError("OtlpGrpcReceiver cannot be restarted; create a new one")
        if self._server is not None:
            return self
        executor = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="otlp-grpc-receiver")
        # so_reuseport=0: never share the port with another server that happens to ask for it.
        server = grpc.server(executor, options=[("grpc.so_reuseport", 0)])
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _MetricsServicer(self), server
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceServicer(self), server
        )
        try:
            port = int(server.add_insecure_port(f"{_LOCALHOST}:0"))
        except RuntimeError:
            port = 0
        if port == 0:
            executor.shutdown(wait=False)
            raise RuntimeError("could not bind a gRPC port on 127.0.0.1")
        server.start()
        self._server, self._executor, self._port = server, executor, port
        return self

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("receiver not started")
        return self._port

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel in-flight RPCs and stop the server within about ``timeout`` s; idempotent."""
        server, executor = self._server, self._executor
        self._stopped = True
        if server is None:
            return
        self._server = None
        # grace=0 cancels in-flight RPCs immediately; stop() returns an Event set once done.
        server.stop(grace=0).wait(timeout)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _handle(self, path: str, signal: Signal, request: OtlpRequest, context: Any) -> _Action:
        arrival = time.monotonic()
        headers: dict[str, str] = {}
        for key, value in context.invocation_metadata():
            # "-bin" metadata arrives as bytes; hex keeps the dict printable and str-typed.
            headers[str(key)] = value.hex() if isinstance(value, bytes) else str(value)
        action = self._next_action()
        size = int(request.ByteSize())
        code = action.grpc_code if action.kind == "abort" else grpc.StatusCode.OK
        self._record(
            ReceivedRequest(
                arrival=arrival,
                transport="grpc",
                path=path,
                body_size=size,
                decoded_size=size,
                headers=headers,
                signal=signal,
                message=request,
                outcome=action.kind,
                status_code=int(code.value[0]),
            )
        )
        if action.kind == "abort":
            if action.retry_delay is not None:
                info = _error_details_pb2.RetryInfo()
                info.retry_delay.FromNanoseconds(int(action.retry_delay * 1e9))
                context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
            # abort() raises, which is how grpc ends the RPC with a non-OK status.
            context.abort(code, f"scripted abort {code.name}")
        return action
