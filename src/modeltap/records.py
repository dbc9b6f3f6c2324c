"""The immutable record of one captured exchange.

The request path only builds a plain tuple of references (the scope, body chunks up to the
decode cap, a few clock readings); `ExchangeRecord._make` gives it names on the worker thread,
where every derived value (durations, outcome, route template, headers) is computed. The
scope is safe to read later: servers build a new one per request and nothing mutates it once
the app has returned.
"""

from __future__ import annotations

import math
import struct
from typing import Any, NamedTuple

from modeltap._types import Headers, Scope

# Scope key where the sidecar's proxy notes its own failure code for an exchange (the same code
# as its `x-modeltap-error` header); it becomes the span's `error.type`.
PROXY_ERROR_KEY = "modeltap.proxy_error"
# Scope key of a route template resolved before the record left the serving process (the
# framework's route object does not cross to the monitor).
ROUTE_TEMPLATE_KEY = "modeltap.route_template"
# Set on the first `cold_start_requests` exchanges of a serving process: their latency is the
# cold start's, kept out of the steady-state latency and its baseline.
COLD_START_KEY = "modeltap.cold_start"


class TraceIds(NamedTuple):
    """Trace identity decided on the request path (ids as integers, as OpenTelemetry keeps them)."""

    trace_id: int
    span_id: int
    parent_span_id: int  # 0 when the exchange starts a new trace
    parent_is_remote: bool
    sampled: bool
    # The incoming `tracestate` when well formed (W3C), its members joined by ","; '' if none or invalid.
    trace_state: str
    enriched_local_span: bool  # another instrumentation's span was the parent


# What the request path hands over: the fields of ExchangeRecord, in order, unnamed; or, from
# the compiled capture in process mode, the record already encoded for the monitor (bytes, in
# `modeltap.handoff.framing`'s record layout), which starts with this fixed head:
# start_unix_ns, response_started, ended, finished, first_body (seconds after the start, NaN =
# none), status, request_size, response_size, weight, payload_weight, flags, client_port,
# server_port.
RawRecord = tuple[Any, ...]
QueuedRecord = RawRecord | bytes
# Records timed and counted only, alike but for their clock readings, as the monitor's decoder
# groups them: the first of them, and the durations of all (`framing.decode_grouped`).
TimedGroup = tuple[RawRecord, list[float]]
ENCODED_HEAD = struct.Struct("<q4diqqiiBii")
_WEIGHT_AT = struct.calcsize("<q4diqq")
_WEIGHT = struct.Struct("<i")
_TIMES = struct.Struct("<q3d")


def weight_of(record: QueuedRecord) -> int:
    """The exchanges a record stands for (`ExchangeRecord.weight`; 1 for anything unexpected)."""
    if isinstance(record, bytes):
        weight: Any = _WEIGHT.unpack_from(record, _WEIGHT_AT)[0] if len(record) >= ENCODED_HEAD.size else 1
    else:
        weight = record[16] if len(record) > 16 else 1
    return weight if isinstance(weight, int) and weight > 0 else 1


def ended_unix_ns(record: QueuedRecord) -> int:
    """When the exchange ended (its last byte, else when the app returned), wall-clock ns."""
    if isinstance(record, bytes):
        start_ns, _, ended, finished = _TIMES.unpack_from(record, 0)
        duration = finished if math.isnan(ended) else ended
        return int(start_ns + duration * 1e9)
    named = ExchangeRecord._make(record)
    return named.start_unix_ns + int(named.duration_s * 1e9)


class ExchangeRecord(NamedTuple):
    """One HTTP exchange as seen by the middleware (clock readings are `time.perf_counter()`)."""

    scope: Scope
    root_path_at_start: str
    start_unix_ns: int
    started: float
    response_started: float | None  # `http.response.start` sent; None if never
    ended: float | None  # last body byte (or trailers) sent; None if the response never completed
    finished: float  # the app returned or raised
    status: int  # 0 when the app never started a response
    response_headers: Headers
    request_parts: list[bytes]
    request_size: int  # request body bytes the app received (-1: not observed, payload not captured)
    response_parts: list[bytes]
    response_size: int
    exception_type: str | None
    disconnected: bool  # the app received `http.disconnect`
    trace: TraceIds | None
    weight: int  # exchanges this record stands for (> 1 while the tap samples under overload)
    # Exchanges whose payloads this record's bodies stand for: 0 when only timing and status
    # were captured (payload sampling under the worker's CPU budget), else weight x stride.
    payload_weight: int
    first_body: float | None  # the first non-empty response body chunk was sent

    @property
    def duration_s(self) -> float:
        """Start to the last response body byte; background tasks after it are excluded."""
        return (self.ended if self.ended is not None else self.finished) - self.started

    @property
    def ttfb_s(self) -> float | None:
        return None if self.response_started is None else self.response_started - self.started

    @property
    def outcome(self) -> str:
        if self.ended is not None:
            return "complete"
        if self.exception_type is not None:
            return "aborted" if self.status else "app_error"
        if self.disconnected:
            return "client_disconnected"
        return "incomplete"

    @property
    def error_type(self) -> str | None:
        proxy_error = self.scope.get(PROXY_ERROR_KEY)
        if proxy_error is not None:
            return str(proxy_error)
        if self.exception_type is not None:
            return self.exception_type
        if self.ended is None and self.disconnected:
            return "client_disconnected"
        return None

    @property
    def method(self) -> str:
        return str(self.scope.get("method", "GET"))

    @property
    def scheme(self) -> str:
        return str(self.scope.get("scheme", "http"))

    @property
    def http_version(self) -> str:
        return str(self.scope.get("http_version", "1.1"))

    @property
    def path(self) -> str:
        return str(self.scope.get("path", ""))

    @property
    def query_string(self) -> bytes:
        value: Any = self.scope.get("query_string", b"")
        return bytes(value)

    @property
    def request_headers(self) -> Headers:
        headers: Any = self.scope.get("headers") or []
        return list(headers)

    @property
    def client(self) -> tuple[str, int] | None:
        client: Any = self.scope.get("client")
        return (str(client[0]), int(client[1])) if client else None

    @property
    def server(self) -> tuple[str, int | None] | None:
        server: Any = self.scope.get("server")
        return (str(server[0]), None if server[1] is None else int(server[1])) if server else None
