"""One OpenTelemetry span per sampled exchange, built after the fact on the worker thread.

Ids were fixed on the request path (so children the app created point at this span); here the
span is assembled as a finished `ReadableSpan` with HTTP semantic-convention attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanKind, Status, StatusCode, TraceFlags, TraceState

from modeltap.config import ModelTapConfig
from modeltap.export.otlp_metrics import SCOPE
from modeltap.records import ExchangeRecord
from modeltap.redaction import REDACTED, is_credential_header, redact_query, truncate_utf8

KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"}
)
MAX_ATTRIBUTE_CHARS = 4096


@dataclass(frozen=True)
class SpanOptions:
    capture_payloads: bool
    max_payload_bytes: int
    request_headers: tuple[str, ...]
    response_headers: tuple[str, ...]


def span_options(config: ModelTapConfig) -> SpanOptions:
    """What a configuration puts on spans beyond the conventions' attributes."""
    return SpanOptions(
        capture_payloads=config.capture_payloads,
        max_payload_bytes=config.max_payload_attribute_bytes,
        request_headers=config.capture_request_headers,
        response_headers=config.capture_response_headers,
    )


class ExchangeIdentity(NamedTuple):
    """What the worker learned from decoding, for the span (a tuple: one is made per span, and a
    frozen dataclass costs twice as much to make)."""

    route: str | None
    model_name: str
    model_version: str
    request_id: str | None
    protocol: str
    violations: Mapping[str, int]


def _headers_dict(headers: object) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in headers:  # type: ignore[attr-defined]
        out.setdefault(key.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return out


def _header_value(name: str, values: tuple[str, ...]) -> str:
    return REDACTED if is_credential_header(name) else _clip(", ".join(values))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[:MAX_ATTRIBUTE_CHARS]


class SpanShape(NamedTuple):
    """What the repeating part of an exchange's span is made of: every input of its name, kind,
    status and of all its attributes but the few that change with each exchange (the client's
    port, body sizes, time to first byte, request id, bodies). Spans of one shape share those
    bytes, so the wire encoder writes them once per shape (`shape_attributes` reads nothing else)."""

    method: str
    scheme: str
    path: str
    http_version: str
    route: str | None
    status: int
    server: tuple[str, int | None] | None
    client_address: str | None
    query_string: bytes
    user_agent: str | None
    request_headers: tuple[tuple[str, tuple[str, ...]], ...]  # captured ones, by first appearance
    response_headers: tuple[tuple[str, tuple[str, ...]], ...]
    model_name: str
    model_version: str
    protocol: str
    outcome: str
    error: str | None
    is_error: bool
    local_parent: bool  # another instrumentation's span is the parent: this one is INTERNAL


def request_shape(
    headers: Any, options: SpanOptions
) -> tuple[str | None, tuple[tuple[str, tuple[str, ...]], ...]]:
    """What a span's shape takes of the request's header pairs: the first user agent, and the
    captured headers' values by first appearance."""
    user_agent = None
    wanted = {name.lower() for name in options.request_headers} if options.request_headers else None
    captured: dict[str, list[str]] = {}
    for key, value in headers:
        if key == b"user-agent" and user_agent is None:
            user_agent = value.decode("latin-1")
        if wanted:
            name = key.decode("latin-1").lower()
            if name in wanted:
                captured.setdefault(name, []).append(value.decode("latin-1"))
    return user_agent, tuple((name, tuple(values)) for name, values in captured.items())


def span_shape(record: ExchangeRecord, identity: ExchangeIdentity, options: SpanOptions) -> SpanShape:
    """The shape of an exchange's span (what `shape_attributes` and the wire encoder read)."""
    user_agent, captured = request_shape(record.scope.get("headers") or (), options)
    answered: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if options.response_headers:
        response_headers = _headers_dict(record.response_headers)
        answered = tuple(
            (name.lower(), tuple(found))
            for name in options.response_headers
            if (found := response_headers.get(name.lower()))
        )
    client = record.client
    is_error, error = span_status(record)
    trace = record.trace
    return SpanShape(
        record.method,
        record.scheme,
        record.path,
        record.http_version,
        identity.route,
        record.status,
        record.server,
        None if client is None else client[0],
        record.query_string,
        user_agent,
        captured,
        answered,
        identity.model_name,
        identity.model_version,
        identity.protocol,
        record.outcome,
        error,
        is_error,
        trace is not None and trace.enriched_local_span,
    )


def shape_attributes(shape: SpanShape) -> dict[str, Any]:
    """The attributes a span's shape decides (HTTP semantic conventions plus modeltap's own)."""
    method = shape.method
    attrs: dict[str, Any] = {
        "http.request.method": method if method in KNOWN_METHODS else "_OTHER",
        "url.scheme": shape.scheme,
        "url.path": _clip(shape.path),
        "network.protocol.version": shape.http_version,
    }
    if method not in KNOWN_METHODS:
        attrs["http.request.method_original"] = _clip(method)
    if shape.route:
        attrs["http.route"] = _clip(shape.route)
    if shape.status:
        attrs["http.response.status_code"] = shape.status
    if shape.server is not None:
        attrs["server.address"] = shape.server[0]
        if shape.server[1] is not None:
            attrs["server.port"] = shape.server[1]
    if shape.client_address is not None:
        attrs["client.address"] = shape.client_address
        attrs["network.peer.address"] = shape.client_address
    if shape.query_string:
        attrs["url.query"] = _clip(redact_query(shape.query_string.decode("latin-1")))
    if shape.user_agent is not None:
        attrs["user_agent.original"] = _clip(shape.user_agent)
    for name, values in shape.request_headers:
        attrs[f"http.request.header.{name}"] = _header_value(name, values)
    for name, values in shape.response_headers:
        attrs[f"http.response.header.{name}"] = _header_value(name, values)
    attrs["modeltap.model.name"] = shape.model_name
    attrs["modeltap.model.version"] = shape.model_version
    attrs["modeltap.exchange.outcome"] = shape.outcome
    attrs["modeltap.protocol"] = shape.protocol
    if shape.error is not None:
        attrs["error.type"] = shape.error
    return attrs


def exchange_attributes(
    record: ExchangeRecord, identity: ExchangeIdentity, options: SpanOptions
) -> dict[str, Any]:
    """The attributes that change with each exchange of a shape."""
    attrs: dict[str, Any] = {}
    client = record.client
    if client is not None:
        attrs["network.peer.port"] = client[1]
    if record.request_size >= 0:  # -1: the payload was sampled out and not observed
        attrs["http.request.body.size"] = record.request_size
    attrs["http.response.body.size"] = record.response_size
    if identity.request_id:
        attrs["modeltap.request.id"] = identity.request_id
    if record.ttfb_s is not None:
        attrs["modeltap.time_to_first_byte_s"] = record.ttfb_s
    if options.capture_payloads:
        for direction, parts, size in (
            ("request", record.request_parts, record.request_size),
            ("response", record.response_parts, record.response_size),
        ):
            kept = b"".join(parts)
            text, cut = truncate_utf8(kept, options.max_payload_bytes)
            attrs[f"modeltap.{direction}.body"] = text
            attrs[f"modeltap.{direction}.body.size"] = size
            attrs[f"modeltap.{direction}.body.truncated"] = cut or len(kept) < size
    return attrs


def error_type(record: ExchangeRecord) -> str | None:
    if record.error_type is not None:
        return record.error_type
    if record.status >= 500:
        return str(record.status)
    return None


def span_attributes(
    record: ExchangeRecord, identity: ExchangeIdentity, options: SpanOptions
) -> dict[str, Any]:
    """Every attribute of an exchange's span."""
    return {
        **shape_attributes(span_shape(record, identity, options)),
        **exchange_attributes(record, identity, options),
    }


def span_name(method: str, route: str | None) -> str:
    """`{method} {route}`, or the method alone: a raw path is the client's, never a span name."""
    method = method if method in KNOWN_METHODS else "HTTP"
    return f"{method} {route}" if route else method


def span_status(record: ExchangeRecord) -> tuple[bool, str | None]:
    """(is_error, description): exceptions, 5xx and unfinished responses are errors for a server
    span; a complete 4xx answer is not (semantic conventions), even one the sidecar gave itself."""
    err = error_type(record)
    if err is None:
        return False, None
    if 400 <= record.status < 500 and record.ended is not None and record.exception_type is None:
        return False, err
    return (record.error_type is not None or record.status >= 500), err


def build_span(
    record: ExchangeRecord, identity: ExchangeIdentity, options: SpanOptions, resource: Resource
) -> ReadableSpan:
    """A finished SDK span, for applications whose own TracerProvider should receive it."""
    ids = record.trace
    assert ids is not None
    attrs = span_attributes(record, identity, options)
    start = record.start_unix_ns
    end = start + int(record.duration_s * 1e9)
    events = [
        Event("modeltap.data_quality.violation", {"modeltap.violation.reason": reason, "count": count}, end)
        for reason, count in identity.violations.items()
        if count
    ]
    trace_state = TraceState.from_header([ids.trace_state]) if ids.trace_state else TraceState()
    flags = TraceFlags(TraceFlags.SAMPLED)
    context = trace_api.SpanContext(ids.trace_id, ids.span_id, False, flags, trace_state)
    parent = None
    if ids.parent_span_id:
        parent = trace_api.SpanContext(
            ids.trace_id, ids.parent_span_id, ids.parent_is_remote, flags, trace_state
        )
    is_error, description = span_status(record)
    return ReadableSpan(
        name=span_name(record.method, identity.route),
        context=context,
        parent=parent,
        resource=resource,
        attributes=attrs,
        events=events,
        kind=SpanKind.INTERNAL if ids.enriched_local_span else SpanKind.SERVER,
        status=Status(StatusCode.ERROR, description) if is_error else Status(StatusCode.UNSET),
        start_time=start,
        end_time=end,
        instrumentation_scope=SCOPE,
    )
