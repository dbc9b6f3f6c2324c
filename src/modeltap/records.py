"""The immutable record of one captured exchange.

It is built on the request path, so it holds references rather than copies: header lists are
the server's own lists (never mutated after the exchange) and bodies are the chunks the app
sent or received, kept up to the decode cap. Everything costly (joining chunks, reading the
route template, parsing headers) happens on the worker thread.
"""

from __future__ import annotations

from typing import NamedTuple

from modeltap._types import Headers


class TraceIds(NamedTuple):
    """Trace identity decided on the request path (ids as integers, as OpenTelemetry keeps them)."""

    trace_id: int
    span_id: int
    parent_span_id: int  # 0 when the exchange starts a new trace
    parent_is_remote: bool
    sampled: bool
    trace_state: str  # the incoming `tracestate` header, passed on verbatim ('' if none)
    enriched_local_span: bool  # another instrumentation's server span was the parent


class ExchangeRecord(NamedTuple):
    """One HTTP exchange as seen by the middleware."""

    start_unix_ns: int
    duration_s: float  # start to last response body byte (background tasks excluded)
    ttfb_s: float | None  # start to `http.response.start`; None if no response started
    method: str
    scheme: str
    http_version: str
    path: str
    query_string: bytes
    root_path_at_start: str
    root_path_after: str  # scope["root_path"] once routing ran (mounts extend it)
    route: object | None  # the framework's route object; its template is read on the worker
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    request_headers: Headers
    response_headers: Headers
    status: int  # 0 when the app never started a response
    request_parts: list[bytes]
    request_size: int  # every request body byte the app received, not only the kept ones
    response_parts: list[bytes]
    response_size: int
    error_type: str | None  # exception class name, or a modeltap reason such as client_disconnected
    outcome: str  # complete | client_disconnected | aborted | app_error | incomplete
    trace: TraceIds | None
    weight: int  # exchanges this record stands for (> 1 while the tap samples under overload)

    @property
    def request_truncated(self) -> bool:
        return sum(len(p) for p in self.request_parts) < self.request_size

    @property
    def response_truncated(self) -> bool:
        return sum(len(p) for p in self.response_parts) < self.response_size
