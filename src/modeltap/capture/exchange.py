"""Capture one ASGI HTTP exchange without changing it.

The app receives the very message objects the server produced and the server receives the very
messages the app sent; capture only keeps references to body chunks (up to the decode cap),
notes times and status, and hands one immutable record to the sink in `finally`. No parsing,
no numpy and no OpenTelemetry SDK calls happen here (see DESIGN.md, measured costs).

Two forms with one behaviour: `PyExchangeCapture` below, and the compiled `modeltap._speedups`
`Capture` (built on Linux at install time), which spends less than half the interpreter time
per exchange (bench/README.md). `exchange_capture` picks the compiled one where it was built,
unless `MODELTAP_PURE_PYTHON=1`; the tests run the capture suite against both.
"""

from __future__ import annotations

import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from modeltap._types import ASGIApp, Headers, Message, Receive, Scope, Send
from modeltap.capture import compiled as _compiled
from modeltap.capture.record_queue import RECORD_OVERHEAD_BYTES
from modeltap.capture.trace_context import TraceSampler, new_span_id, parse_traceparent, parse_tracestate
from modeltap.records import COLD_START_KEY, RawRecord, TraceIds

_log = logging.getLogger("modeltap")
_NO_HEADERS: Headers = []
_SAMPLED = otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED)
_NO_SPAN = otel_trace.INVALID_SPAN
_current_context = otel_context.get_current


class CaptureSink(Protocol):
    """Who hears about capture's own failures (the tap); must never raise."""

    def note_internal_error(self, where: str) -> None: ...

    def note_first_answer(self, unix_ns: int) -> None: ...


def _header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _str_charge(text: str) -> int:
    """The bytes a non-ASCII str is charged: up to 2, 3 or 4 a character as CPython stores it in
    1, 2 or 4 bytes (the widest character decides), what its UTF-8 and its memory take at most.
    By its length alone a path of four-byte characters was charged a quarter of what it holds."""
    widest = ord(max(str(text)))
    return len(text) * (2 if widest < 0x100 else 3 if widest < 0x10000 else 4)


def head_charge(scope: Scope, ids: TraceIds | None) -> int:
    """What a raw record holds of the request's head beyond `RECORD_OVERHEAD_BYTES`, charged to
    the queue with its kept bodies: the path, raw path, query string, request header names and
    values and the trace state, all chosen by the client (uvicorn takes a 60 KB query and 60 KB of
    headers: 10 000 such records are over 1 GB against the 64 MiB bound). An ordinary head is
    under the overhead: 0. A head that cannot be measured (a header not a pair) is charged
    nothing: the record is offered all the same, as the compiled form (`head_charge`) does."""
    try:
        get = scope.get
        path = get("path") or ""
        size = len(get("raw_path") or b"") + len(get("query_string") or b"")
        size += len(path) if not isinstance(path, str) or str.isascii(path) else _str_charge(path)
        headers = get("headers")
        # Another iterable is not read: it may be an iterator, which the worker must still read.
        if type(headers) is list or type(headers) is tuple:
            # A plain loop: about half the time of `sum(map(len, chain.from_iterable(headers)))`.
            for name, value in headers:
                size += len(name) + len(value)
        if ids is not None:
            size += len(ids.trace_state)
    except Exception:
        return 0
    return size - RECORD_OVERHEAD_BYTES if size > RECORD_OVERHEAD_BYTES else 0


class TraceStarter:
    """Decides trace identity at request start: continue, enrich, or begin a trace."""

    def __init__(self, sampler: TraceSampler, server_span_attributes: dict[str, str]) -> None:
        self.sampler = sampler
        self._enrich = server_span_attributes
        self.enabled = not sampler.never

    def start(self, headers: Headers) -> TraceIds | None:
        # Most requests arrive with an empty OpenTelemetry context: no other instrumentation's
        # span to join. Reading the context once is cheaper than asking for the current span.
        context = _current_context()
        current = otel_trace.get_current_span(context) if context else _NO_SPAN
        if current.is_recording():
            # Another instrumentation already opened a span: join it, never duplicate the server span.
            ctx = current.get_span_context()
            if getattr(current, "kind", None) is otel_trace.SpanKind.SERVER:
                for key, value in self._enrich.items():
                    current.set_attribute(key, value)
            joined_state = ctx.trace_state.to_header() if ctx.trace_state else ""
            return TraceIds(ctx.trace_id, new_span_id(), ctx.span_id, False, True, joined_state, True)
        raw = _header(headers, b"traceparent")
        parent = parse_traceparent(raw) if raw is not None else None
        if parent is None:
            trace_id = self.sampler.new_sampled_trace_id()
            if trace_id is None:
                return None
            return TraceIds(trace_id, new_span_id(), 0, False, True, "", False)
        trace_id, parent_span_id, parent_sampled = parent
        if not self.sampler.sample(trace_id, parent_sampled):
            return None
        state = _header(headers, b"tracestate")
        trace_state = parse_tracestate(state) if state else ""
        return TraceIds(trace_id, new_span_id(), parent_span_id, True, True, trace_state, False)


def _attach(ids: TraceIds) -> object:
    # The app's own outbound instrumentation then parents under modeltap's span, whose ids
    # were fixed here; the span itself is built later on the worker thread.
    span_context = otel_trace.SpanContext(ids.trace_id, ids.span_id, is_remote=False, trace_flags=_SAMPLED)
    return otel_context.attach(otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(span_context)))


def _attach_parts() -> tuple[Any, ...]:
    """What the compiled capture needs to do `_attach`'s work itself, where OpenTelemetry keeps
    its context in its default context variable: the classes `_attach` calls, the sampled flags,
    and the key the current span is filed under (found through the public API)."""
    (span_key,) = otel_trace.set_span_in_context(_NO_SPAN, otel_context.Context()).keys()
    return (otel_trace.SpanContext, otel_trace.NonRecordingSpan, _SAMPLED, span_key, otel_context.Context)


# `await capture(scope, receive, send, weight, payload_weight)`: either form below.
Capture = Callable[[Scope, Receive, Send, int, int], Awaitable[None]]


def exchange_capture(
    app: ASGIApp,
    sink: CaptureSink,
    offer: Callable[[RawRecord, int], object],
    max_body_bytes: int,
    traces: TraceStarter,
    cold_start_requests: int = 0,
    *,
    compiled: bool | None = None,
    encoder: Any = None,
) -> Capture:
    """The capture for `app`: compiled where built (and not turned off), else pure Python.

    `compiled=None` decides from the environment; True insists (ImportError if not built).
    `encoder` (`framing.compiled_encoder`, compiled form only): offer each record already
    encoded for the monitor, as bytes, instead of the raw tuple."""
    if compiled is None:
        compiled = _compiled.wanted()
    if not compiled:
        return PyExchangeCapture(app, sink, offer, max_body_bytes, traces, cold_start_requests)
    if not _compiled.AVAILABLE:
        raise ImportError("modeltap._speedups was not built for this interpreter")
    # New root traces are decided in C when OpenTelemetry keeps its context in the default
    # context variable (its runtime context is configurable: anything else asks `traces.start`).
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    context_var = getattr(runtime, "_current_context", None)
    fast = traces.enabled and isinstance(context_var, contextvars.ContextVar)
    return _compiled._speedups.Capture(
        app,
        sink,
        offer,
        max_body_bytes,
        traces.start if traces.enabled else None,
        _attach,
        otel_context.detach,
        COLD_START_KEY,
        cold_start_requests,
        encoder,
        context_var if fast else None,
        traces.sampler if fast else None,
        TraceIds if fast else None,
        random.getrandbits if fast else None,
        # A sampled trace attached in C: `_attach` and `detach` are ten Python calls, about 1 µs
        # of the serving thread per traced exchange in a loop, 2 µs under load (bench/README.md).
        _attach_parts() if fast else None,
    )


class PyExchangeCapture:
    """Wraps an ASGI app; each call captures one HTTP request and offers its record.

    Example::

        capture = PyExchangeCapture(app, sink=tap, offer=tap.queue.offer, max_body_bytes=1 << 20,
                                    traces=starter)
        await capture(scope, receive, send, 1)

    `offer(raw_record, kept_bytes)` must never block or raise (see `RecordQueue.offer`).
    This is the request path: every line here is paid on every request, so it keeps references
    instead of copies and leaves all interpretation to the worker.
    """

    def __init__(
        self,
        app: ASGIApp,
        sink: CaptureSink,
        offer: Callable[[RawRecord, int], object],
        max_body_bytes: int,
        traces: TraceStarter,
        cold_start_requests: int = 0,
    ) -> None:
        self._app = app
        self._sink = sink
        self._offer = offer
        self._cap = max_body_bytes
        self._traces = traces
        self._tracing = traces.enabled
        self._cold_left = cold_start_requests  # exchanges still marked as the cold start
        self._answered = False

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, weight: int, payload_weight: int
    ) -> None:
        perf = time.perf_counter
        started = perf()
        start_ns = time.time_ns()
        cap = self._cap
        root_path_at_start: str = scope.get("root_path", "")
        ids: TraceIds | None = None
        token: object | None = None
        if self._tracing:
            try:
                ids = self._traces.start(scope.get("headers") or _NO_HEADERS)
                if ids is not None and not ids.enriched_local_span:
                    token = _attach(ids)
            except Exception:
                self._sink.note_internal_error("trace_start")

        request_parts: list[bytes] = []
        response_parts: list[bytes] = []
        # Payload sampled out: the body is not kept, but receive is still watched, since a client
        # that leaves mid-upload is not a model error.
        request_left = cap if payload_weight else 0
        request_size = 0
        response_left = cap if payload_weight else 0
        response_size = 0
        disconnected = False
        status = 0
        response_headers: Headers = _NO_HEADERS
        response_started: float | None = None
        first_body: float | None = None
        ended: float | None = None

        async def tap_receive() -> Message:
            nonlocal request_left, request_size, disconnected
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body")
                if body:
                    size = len(body)
                    request_size += size
                    if request_left:
                        # Keep a reference, not a copy; slice only the one chunk crossing the cap.
                        if size > request_left:
                            body = body[:request_left]
                        if type(body) is not bytes:
                            body = bytes(body)  # a bytearray could change under us
                        request_parts.append(body)
                        request_left -= len(body)
            elif message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def tap_send(message: Message) -> None:
            nonlocal \
                response_left, \
                response_size, \
                status, \
                response_headers, \
                response_started, \
                ended, \
                first_body
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body")
                if body:
                    size = len(body)
                    if not response_size:
                        first_body = perf()  # time to first byte / first token of a stream
                    response_size += size
                    if response_left:
                        if size > response_left:
                            body = body[:response_left]
                        if type(body) is not bytes:
                            body = bytes(body)
                        response_parts.append(body)
                        response_left -= len(body)
                if ended is None and not message.get("more_body"):
                    ended = perf()
            elif kind == "http.response.start":
                status = message["status"]
                response_headers = message.get("headers") or _NO_HEADERS
                response_started = perf()
            elif kind == "http.response.pathsend" or (
                kind == "http.response.trailers" and not message.get("more_trailers")
            ):
                ended = perf()
            await send(message)

        exception_type: str | None = None
        try:
            await self._app(scope, tap_receive, tap_send)
        except BaseException as exc:
            exception_type = type(exc).__qualname__
            raise
        finally:
            if token is not None:
                try:
                    otel_context.detach(token)  # type: ignore[arg-type]
                except Exception:
                    self._sink.note_internal_error("trace_detach")
            if self._cold_left:
                self._cold_left -= 1
                scope[COLD_START_KEY] = True
            if status and not self._answered:
                self._answered = True
                self._sink.note_first_answer(time.time_ns())
            kept = (2 * cap if payload_weight else 0) - request_left - response_left
            try:
                # A plain tuple in ExchangeRecord field order: naming it is the worker's job.
                self._offer(
                    (
                        scope,
                        root_path_at_start,
                        start_ns,
                        started,
                        response_started,
                        ended,
                        perf(),
                        status,
                        response_headers,
                        request_parts,
                        request_size if payload_weight else -1,
                        response_parts,
                        response_size,
                        exception_type,
                        disconnected,
                        ids,
                        weight,
                        payload_weight,
                        first_body,
                    ),
                    kept + head_charge(scope, ids),
                )
            except Exception:
                self._sink.note_internal_error("capture")
