"""The compiled request path (`modeltap._speedups`) against the pure-Python forms it replaces.

* Its encoder writes, for any raw record, the very bytes `framing.RecordEncoder` writes.
* Its capture offers, for every kind of exchange an ASGI app can have (streamed, failed before or
  after answering, cancelled, closed, disconnected, pathsend, trailers, bytearray bodies, a body
  over the cap, payload not kept, cold start, a joined trace), the record the Python capture
  offers: same fields, and clock readings in the same order.
* With an encoder it offers those records already encoded, and they decode to the same view.
* It never raises into the app when its sink or queue fail, keeps no object alive after an
  exchange (reference counts and cycles), and a capture never awaited offers nothing.
"""

from __future__ import annotations

import abc
import asyncio
import gc
import sys
import tracemalloc
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from modeltap.capture import compiled
from modeltap.capture.exchange import PyExchangeCapture, TraceStarter, exchange_capture
from modeltap.capture.trace_context import TraceSampler
from modeltap.config import ModelTapConfig, SamplerConfig
from modeltap.handoff.framing import compiled_encoder, decode_record
from modeltap.records import COLD_START_KEY, ExchangeRecord, RawRecord
from modeltap.worker.tap import Tap
from tests.unit.handoff.test_framing import (
    FAST,
    REQUEST_WANTED,
    RESPONSE_WANTED,
    encoder,
    expected_view,
    raw_records,
    record_of,
    view,
)

pytestmark = pytest.mark.skipif(not compiled.AVAILABLE, reason="modeltap._speedups is not built here")

App = Callable[[Any, Any, Any], Awaitable[None]]
CAP = 16


class Sink:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.first_answers = 0

    def note_internal_error(self, where: str) -> None:
        self.errors.append(where)

    def note_first_answer(self, unix_ns: int) -> None:
        self.first_answers += 1


def starter(ratio: float = 0.0) -> TraceStarter:
    name = "always_off" if ratio == 0 else "parentbased_traceidratio"
    return TraceStarter(TraceSampler(SamplerConfig(name, ratio)), {})


def scope_of(**extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "http_version": "1.1",
        "path": "/v1/models/m:predict",
        "root_path": "",
        "query_string": b"a=1",
        "headers": [(b"content-type", b"application/json"), (b"authorization", b"secret")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        **extra,
    }


class Server:
    """A scripted server side: request messages, then `http.disconnect` forever."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.messages = list(messages) or [{"type": "http.request", "body": b"", "more_body": False}]
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.messages:
            return self.messages.pop(0)
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        await asyncio.sleep(0)  # a real server may suspend here
        self.sent.append(message)


async def read_all(receive: Any) -> bytes:
    body: bytes = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def answer(send: Any, status: int = 200, *bodies: Any, headers: Any = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    for i, body in enumerate(bodies):
        await send({"type": "http.response.body", "body": body, "more_body": i < len(bodies) - 1})
    if not bodies:
        await send({"type": "http.response.body", "body": b""})


async def echo(scope: Any, receive: Any, send: Any) -> None:
    body = await read_all(receive)
    await answer(send, 200, body[:5], body[5:], headers=[(b"content-type", b"text/plain")])


async def streamed(scope: Any, receive: Any, send: Any) -> None:
    await read_all(receive)
    await answer(send, 200, b"a" * 10, bytearray(b"b" * 10), memoryview(b"c" * 10))


async def fails_before_answering(scope: Any, receive: Any, send: Any) -> None:
    await read_all(receive)
    raise ValueError("model failed")


async def fails_while_streaming(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("stream broke")


async def waits_for_disconnect(scope: Any, receive: Any, send: Any) -> None:
    await read_all(receive)
    message = await receive()
    assert message["type"] == "http.disconnect"


async def pathsend(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.pathsend", "path": "/tmp/file"})


async def trailers(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
    await send({"type": "http.response.body", "body": b"x"})
    await send({"type": "http.response.trailers", "headers": [], "more_trailers": True})
    await send({"type": "http.response.trailers", "headers": []})


async def never_answers(scope: Any, receive: Any, send: Any) -> None:
    await read_all(receive)


async def future_awaiting(scope: Any, receive: Any, send: Any) -> None:
    future = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.set_result, b"later")
    body = await future
    await answer(send, 201, body)


class NotACoroutine:
    """What an app may return instead of a coroutine: any awaitable (`__await__` a generator)."""

    def __init__(self, scope: Any, receive: Any, send: Any) -> None:
        self.call = (scope, receive, send)

    def __await__(self) -> Any:
        return (yield from echo(*self.call).__await__())


class Suspend:
    """Suspends its awaiter once, with no event loop involved."""

    def __await__(self) -> Any:
        yield "suspended"


def not_a_coroutine(scope: Any, receive: Any, send: Any) -> Any:
    return NotACoroutine(scope, receive, send)


async def sync_error(scope: Any, receive: Any, send: Any) -> None:
    raise KeyError("at once")


APPS: dict[str, App] = {
    "echo": echo,
    "streamed": streamed,
    "fails before answering": fails_before_answering,
    "fails while streaming": fails_while_streaming,
    "waits for disconnect": waits_for_disconnect,
    "pathsend": pathsend,
    "trailers": trailers,
    "never answers": never_answers,
    "awaits a future": future_awaiting,
    "returns a non-coroutine awaitable": not_a_coroutine,
    "raises at once": sync_error,
}
REQUESTS: dict[str, list[dict[str, Any]]] = {
    "one body": [{"type": "http.request", "body": b"0123456789", "more_body": False}],
    "chunked over the cap": [
        {"type": "http.request", "body": b"0123456789", "more_body": True},
        {"type": "http.request", "body": bytearray(b"abcdefghij"), "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
    ],
}


FORMS = ["python", "compiled"]


def recording(app: App, form: str, records: list[Any], **kw: Any) -> Any:
    """A capture of `app` in `form` that appends each offered record to `records`."""
    return exchange_capture(
        app, Sink(), lambda raw, kept: records.append(raw), CAP, starter(), compiled=form == "compiled", **kw
    )


def run_form(
    form: str, app: App, request: list[dict[str, Any]], *, weight: int = 1, payload_weight: int = 1, **kw: Any
) -> tuple[Any, Sink, BaseException | None, list[dict[str, Any]]]:
    records: list[Any] = []
    sink = Sink()
    after: list[dict[str, object]] | None = kw.pop("context_after", None)
    capture = exchange_capture(
        app,
        sink,
        lambda raw, kept: records.append((raw, kept)),
        CAP,
        starter(kw.pop("ratio", 0.0)),
        kw.pop("cold", 0),
        compiled=form == "compiled",
        **kw,
    )
    server = Server(*[dict(m) for m in request])
    raised: BaseException | None = None

    async def main() -> None:
        nonlocal raised
        try:
            await capture(scope_of(), server.receive, server.send, weight, payload_weight)
        except BaseException as exc:
            raised = exc
        if after is not None:  # the task's own context: what the exchange left current in it
            after.append(dict(otel_context.get_current()))

    asyncio.run(main())
    assert len(records) == 1, records
    return records[0][0], sink, raised, server.sent


def comparable(raw: RawRecord) -> dict[str, Any]:
    """A record's fields without its clock values (which differ between two runs): which
    readings were taken, and in what order."""
    record = ExchangeRecord._make(raw)
    readings = {
        "response_started": record.response_started,
        "first_body": record.first_body,
        "ended": record.ended,
    }
    fields = record._asdict()
    for name in ("start_unix_ns", "started", "finished", *readings):
        fields.pop(name)
    fields["taken"] = sorted(name for name, value in readings.items() if value is not None)
    present = [record.started, *(v for v in readings.values() if v is not None), record.finished]
    fields["in_order"] = present == sorted(
        [record.started, *sorted(v for v in readings.values() if v is not None), record.finished]
    )
    fields["scope"] = {k: v for k, v in record.scope.items()}
    return fields


@pytest.mark.parametrize("request_name", sorted(REQUESTS))
@pytest.mark.parametrize("app_name", sorted(APPS))
def test_the_compiled_capture_offers_the_python_captures_record(app_name: str, request_name: str) -> None:
    app, request = APPS[app_name], REQUESTS[request_name]
    python, python_sink, python_raised, python_sent = run_form("python", app, request)
    native, native_sink, native_raised, native_sent = run_form("compiled", app, request)
    assert comparable(native) == comparable(python)
    assert type(native_raised) is type(python_raised)
    assert native_sent == python_sent  # the server got the same messages
    assert native_sink.errors == python_sink.errors == []
    assert native_sink.first_answers == python_sink.first_answers
    assert comparable(native)["in_order"]  # clock readings taken in the exchange's order


@pytest.mark.parametrize("payload_weight", [0, 4])
def test_weights_and_a_payload_not_kept_are_recorded_alike(payload_weight: int) -> None:
    request = REQUESTS["chunked over the cap"]
    python = run_form("python", echo, request, weight=4, payload_weight=payload_weight)[0]
    native = run_form("compiled", echo, request, weight=4, payload_weight=payload_weight)[0]
    assert comparable(native) == comparable(python)


@pytest.mark.parametrize("form", FORMS)
def test_the_cold_start_marks_the_first_exchanges(form: str) -> None:
    raw = run_form(form, echo, REQUESTS["one body"], cold=1)[0]
    assert raw[0][COLD_START_KEY] is True


@pytest.mark.parametrize("form", FORMS)
def test_a_sampled_trace_is_current_in_the_app_and_detached_after(form: str) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(otel_trace.get_current_span().get_span_context())
        await echo(scope, receive, send)

    after: list[dict[str, object]] = []
    ids = run_form(form, app, REQUESTS["one body"], ratio=1.0, context_after=after)[0][15]
    assert ids is not None
    assert ids.sampled
    assert (seen[0].trace_id, seen[0].span_id) == (ids.trace_id, ids.span_id)
    assert after == [{}]


@pytest.mark.parametrize("outer", [False, True], ids=["empty context", "a value already current"])
def test_the_compiled_capture_attaches_the_context_the_python_form_attaches(outer: bool) -> None:
    """Where OpenTelemetry keeps its context in its context variable, the compiled capture attaches
    a sampled trace's context itself: the app finds the very context `_attach` makes (the values
    already current, and the trace's NonRecordingSpan), and the exchange leaves the one before."""
    found: dict[str, list[dict[str, object]]] = {}
    left: dict[str, list[dict[str, object]]] = {}
    for form in FORMS:
        seen: list[dict[str, object]] = []

        async def app(scope: Any, receive: Any, send: Any, seen: list[dict[str, object]] = seen) -> None:
            seen.append(dict(otel_context.get_current()))
            await echo(scope, receive, send)

        token = otel_context.attach(otel_context.set_value("outer", "kept")) if outer else None
        try:
            left[form] = []
            ids = run_form(form, app, REQUESTS["one body"], ratio=1.0, context_after=left[form])[0][15]
        finally:
            if token is not None:
                otel_context.detach(token)
        assert ids is not None
        span = otel_trace.get_current_span(otel_context.Context(seen[0]))
        assert type(span) is otel_trace.NonRecordingSpan
        assert span.get_span_context() == otel_trace.SpanContext(
            ids.trace_id, ids.span_id, is_remote=False, trace_flags=otel_trace.TraceFlags(1)
        )
        found[form] = [{k: v for k, v in values.items() if v is not span} for values in seen]
    assert found["compiled"] == found["python"] == [{"outer": "kept"} if outer else {}]
    assert left["compiled"] == left["python"] == [{"outer": "kept"} if outer else {}]


def seeing(seen: list[Any]) -> App:
    """`echo`, noting the OpenTelemetry context it runs in."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(otel_context.get_current())
        await echo(scope, receive, send)

    return app


def through(capture: Any) -> None:
    """One exchange of `REQUESTS["one body"]` through `capture`."""
    server = Server(*[dict(message) for message in REQUESTS["one body"]])
    asyncio.run(capture(scope_of(), server.receive, server.send, 1, 1))


def spans_seen() -> tuple[Any, list[Any]]:
    """A traced exchange through the compiled capture: its trace ids, and the context the app found."""
    seen: list[Any] = []
    ids = run_form("compiled", seeing(seen), REQUESTS["one body"], ratio=1.0)[0][15]
    assert ids is not None
    return ids, seen


def test_a_sampled_traces_opentelemetry_objects_are_made_as_their_classes_make_them() -> None:
    """With the OpenTelemetry installed here, the compiled capture makes a sampled trace's
    SpanContext, NonRecordingSpan and Context itself, without their Python code: the same types,
    equal values, the same attributes as the classes make."""
    seen: list[Any] = []
    records: list[Any] = []
    capture: Any = exchange_capture(
        seeing(seen), Sink(), lambda raw, kept: records.append(raw), CAP, starter(1.0), compiled=True
    )
    assert capture.made_here == (True, True, True)
    through(capture)
    ids = records[0][15]
    assert type(seen[0]) is otel_context.Context
    span = otel_trace.get_current_span(seen[0])
    sampled = otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED)
    expected = otel_trace.NonRecordingSpan(otel_trace.SpanContext(ids.trace_id, ids.span_id, False, sampled))
    assert type(span) is otel_trace.NonRecordingSpan
    assert vars(span) == vars(expected)
    made, called = span.get_span_context(), expected.get_span_context()
    assert type(made) is otel_trace.SpanContext
    assert tuple(made) == tuple(called)
    assert made.is_valid
    assert made.trace_flags.sampled
    assert not made.is_remote
    assert made.trace_state is called.trace_state  # the class's default, shared


def with_classes(monkeypatch: pytest.MonkeyPatch, span_context: type, span: type, context: type) -> Any:
    """A compiled capture (of `echo`) given these OpenTelemetry classes to make a trace's objects
    with, and the rest as OpenTelemetry has them."""
    from modeltap.capture import exchange

    key, sampled = exchange._attach_parts()[3], otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED)
    parts = (span_context, span, sampled, key, context)
    monkeypatch.setattr(exchange, "_attach_parts", lambda: parts)
    return exchange_capture(echo, Sink(), lambda raw, kept: None, CAP, starter(1.0), compiled=True)


class LongerSpanContext(otel_trace.SpanContext):
    """A SpanContext of another layout (one field more)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> LongerSpanContext:
        made = otel_trace.SpanContext.__new__(cls, *args, **kwargs)
        return tuple.__new__(cls, (*made, "made by the class"))


class TaggedSpan(otel_trace.NonRecordingSpan):
    """A NonRecordingSpan whose `__init__` does more than keep its context."""

    def __init__(self, context: otel_trace.SpanContext) -> None:
        super().__init__(context)
        self.tag = "made by the class"


class CountedContext(otel_context.Context):
    """A Context with an `__init__` of its own."""

    made = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        type(self).made += 1


def test_opentelemetry_classes_that_make_something_else_are_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the classes would make something the capture's own construction does not (another
    layout, another attribute, an `__init__` of their own), it calls them instead."""
    capture = with_classes(monkeypatch, LongerSpanContext, TaggedSpan, CountedContext)
    assert capture.made_here == (False, False, False)
    sampled = otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED)
    CountedContext.made = 0
    ids, seen = spans_seen()
    assert type(seen[0]) is CountedContext
    assert CountedContext.made == 1
    span = otel_trace.get_current_span(seen[0])
    assert type(span) is TaggedSpan
    assert span.tag == "made by the class"
    made = span.get_span_context()
    assert type(made) is LongerSpanContext
    called = otel_trace.SpanContext(ids.trace_id, ids.span_id, False, sampled)
    assert tuple(made) == (*called, "made by the class")


class NewContext(otel_context.Context):
    """A Context with a `__new__` of its own."""

    made = 0

    def __new__(cls, *args: Any) -> NewContext:
        cls.made += 1
        return super().__new__(cls, *args)


class CallingMeta(type):
    """A metaclass whose `__call__` is its own."""

    calls = 0

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        CallingMeta.calls += 1
        return super().__call__(*args, **kwargs)


class SpanMeta(CallingMeta, abc.ABCMeta):
    """NonRecordingSpan's metaclass (Span is an ABC) with CallingMeta's `__call__`."""


class MetaSpan(otel_trace.NonRecordingSpan, metaclass=SpanMeta):
    """A NonRecordingSpan made through a metaclass's own `__call__`."""


def test_a_context_with_its_own_new_or_a_metaclass_call_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    capture = with_classes(monkeypatch, otel_trace.SpanContext, MetaSpan, NewContext)
    assert capture.made_here == (True, False, False)
    CallingMeta.calls = NewContext.made = 0
    _, seen = spans_seen()
    assert type(seen[0]) is NewContext
    assert NewContext.made == 1
    assert type(otel_trace.get_current_span(seen[0])) is MetaSpan
    assert CallingMeta.calls == 1


def test_a_class_changed_after_the_capture_was_built_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check holds for the classes as they were; one changed since is called again."""
    seen: list[Any] = []
    sink = Sink()

    def offer(raw: Any, kept: int) -> None:
        pass

    capture: Any = exchange_capture(seeing(seen), sink, offer, CAP, starter(1.0), compiled=True)
    assert capture.made_here == (True, True, True)
    original = otel_trace.NonRecordingSpan.__init__

    def tagged(self: Any, context: Any) -> None:
        original(self, context)
        self.tag = "made by the class"

    monkeypatch.setattr(otel_trace.NonRecordingSpan, "__init__", tagged)
    monkeypatch.setattr(otel_context.Context, "marked", True, raising=False)
    assert capture.made_here == (True, False, False)
    through(capture)
    span = otel_trace.get_current_span(seen[0])
    assert vars(span)["tag"] == "made by the class"
    assert sink.errors == []


@FAST
@given(st.lists(raw_records(), min_size=1, max_size=4))
def test_the_compiled_encoder_writes_the_python_encoders_bytes(records: list[RawRecord]) -> None:
    python = encoder()
    native = compiled_encoder(REQUEST_WANTED, RESPONSE_WANTED)
    for raw in records:
        head, bodies = python.encode(raw)
        assert native.encode(raw) == b"".join([head, *bodies])
        assert view(decode_record(native.encode(raw))) == expected_view(raw)


def test_a_record_of_many_pieces_is_encoded_whole_and_lets_go_of_them() -> None:
    """More kept chunks and header fields than the encoder holds without a list of its own: the
    same bytes as the Python encoder's, and every object it held is let go of."""
    request_parts = [b"%03d" % index for index in range(40)]
    response_parts = [bytes([65 + index % 26]) * (index + 1) for index in range(40)]
    headers = [(name, b"v%d" % index) for index in range(12) for name in REQUEST_WANTED]
    scope = {"type": "http", "method": "POST", "path": "/p", "headers": headers, "client": ("10.0.0.1", 9)}
    raw = record_of(
        scope,
        request_parts=request_parts,
        request_size=sum(map(len, request_parts)),
        response_parts=response_parts,
        response_size=sum(map(len, response_parts)),
        response_headers=[(b"x-model-version", b"v%d" % index) for index in range(30)],
    )
    head, bodies = encoder().encode(raw)
    native = compiled_encoder(REQUEST_WANTED, RESPONSE_WANTED)
    held = [*request_parts, *response_parts, *(value for _, value in headers)]
    before = [sys.getrefcount(value) for value in held]
    for _ in range(3):
        assert native.encode(raw) == b"".join([head, *bodies])
    assert [sys.getrefcount(value) for value in held] == before
    assert view(decode_record(native.encode(raw))) == expected_view(raw)


@pytest.mark.parametrize("app_name", ["echo", "streamed", "fails while streaming", "never answers"])
def test_a_capture_with_an_encoder_offers_the_encoded_record(app_name: str) -> None:
    request = REQUESTS["chunked over the cap"]
    wanted = ({b"content-type"}, {b"content-type"})
    native = run_form("compiled", APPS[app_name], request, encoder=compiled_encoder(*wanted), ratio=1.0)[0]
    python = run_form("python", APPS[app_name], request, ratio=1.0)[0]
    assert isinstance(native, bytes)
    decoded = comparable(decode_record(native))
    expected = comparable(python)
    # Crossing to the monitor: a synthetic scope, the headers it keeps, bodies joined.
    for fields in (decoded, expected):
        fields.pop("scope")
        fields.pop("trace")  # ids differ between the runs; their presence is compared below
        fields.pop("root_path_at_start")
        fields["request_parts"] = b"".join(fields["request_parts"])
        fields["response_parts"] = b"".join(fields["response_parts"])
        fields["response_headers"] = [tuple(h) for h in fields["response_headers"]]
    assert decoded == expected
    assert decode_record(native)[15] is not None


def test_failures_of_the_queue_and_the_sink_never_reach_the_app() -> None:
    class BrokenSink(Sink):
        def note_first_answer(self, unix_ns: int) -> None:
            raise RuntimeError("sink broken")

    def offer(raw: Any, kept: int) -> None:
        raise MemoryError("queue broken")

    sink = BrokenSink()
    server = Server(*REQUESTS["one body"])
    capture = exchange_capture(echo, sink, offer, CAP, starter(), compiled=True)
    asyncio.run(capture(scope_of(), server.receive, server.send, 1, 1))  # type: ignore[arg-type]
    assert server.sent[0]["status"] == 200
    assert sink.errors == ["capture"]


def test_malformed_messages_pass_through_untouched_and_are_counted() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": "not a number"})
        await send({"type": "http.response.body", "body": "a str"})

    sink = Sink()
    records: list[Any] = []
    server = Server(*REQUESTS["one body"])
    capture = exchange_capture(app, sink, lambda r, k: records.append(r), CAP, starter(), compiled=True)
    asyncio.run(capture(scope_of(), server.receive, server.send, 1, 1))  # type: ignore[arg-type]
    assert [m["type"] for m in server.sent] == ["http.response.start", "http.response.body"]
    assert server.sent[0]["status"] == "not a number"  # the server decides what to do with it
    assert sink.errors == ["capture", "capture"]
    assert len(records) == 1


def cancel_inside(capture: Any) -> None:
    """Run one exchange as a task and cancel it once the app sets `scope["entered"]`; what the
    task raises is raised here."""

    async def main() -> None:
        entered = asyncio.Event()
        server = Server()
        task = asyncio.ensure_future(capture(scope_of(entered=entered), server.receive, server.send, 1, 1))
        await entered.wait()
        task.cancel()
        await task

    asyncio.run(main())


@pytest.mark.parametrize("form", FORMS)
def test_a_cancelled_exchange_is_recorded_and_the_cancellation_propagates(form: str) -> None:
    records: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["entered"].set()
        await asyncio.sleep(10)

    with pytest.raises(asyncio.CancelledError):
        cancel_inside(recording(app, form, records))
    assert [ExchangeRecord._make(r).exception_type for r in records] == ["CancelledError"]


@pytest.mark.parametrize("form", FORMS)
def test_an_app_that_handles_the_cancellation_and_answers_is_a_complete_exchange(form: str) -> None:
    records: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["entered"].set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await answer(send, 503, b"shutting down")

    cancel_inside(recording(app, form, records))
    record = ExchangeRecord._make(records[0])
    assert (record.status, record.exception_type, record.outcome) == (503, None, "complete")


@pytest.mark.parametrize("form", FORMS)
def test_closing_a_suspended_exchange_records_it_like_a_coroutine_does(form: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await Suspend()

    records: list[Any] = []
    server = Server()
    iterator = recording(app, form, records)(scope_of(), server.receive, server.send, 1, 1).__await__()
    assert iterator.send(None) == "suspended"
    iterator.close()
    assert [ExchangeRecord._make(r).exception_type for r in records] == ["GeneratorExit"]


def test_a_capture_never_awaited_offers_nothing() -> None:
    records: list[Any] = []
    capture = exchange_capture(echo, Sink(), lambda r, k: records.append(r), CAP, starter(), compiled=True)
    server = Server()
    awaitable = capture(scope_of(), server.receive, server.send, 1, 1)
    del awaitable
    gc.collect()
    assert records == []


def test_no_object_outlives_its_exchange() -> None:
    """Reference counts: thousands of exchanges (answered, failed) leave the heap as it was; a
    scope that holds the app's receive and send (a cycle through the wrappers) is collected."""
    kept: list[Any] = []
    capture = exchange_capture(echo, Sink(), lambda r, k: kept.append(r), CAP, starter(1.0), compiled=True)

    async def many(count: int) -> None:
        for i in range(count):
            server = Server(*REQUESTS["chunked over the cap"])
            app_scope = scope_of()
            await capture(app_scope, server.receive, server.send, 1, 1)
            kept.clear()
            if i % 2:
                failing = exchange_capture(
                    fails_before_answering, Sink(), lambda r, k: None, CAP, starter(), compiled=True
                )
                with pytest.raises(ValueError, match="model failed"):
                    await failing(scope_of(), Server().receive, Server().send, 1, 1)

    asyncio.run(many(500))  # warm-up: caches, free lists
    gc.collect()
    objects_before = len(gc.get_objects())
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    asyncio.run(many(5000))
    gc.collect()
    growth = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert len(gc.get_objects()) - objects_before < 200
    assert growth < 256 * 1024, growth  # 5000 exchanges of about 3 KiB each would be 15 MiB

    class Marker:
        pass

    async def keeps_its_callables(scope: Any, receive: Any, send: Any) -> None:
        scope["callables"] = (receive, send)
        await echo(scope, receive, send)

    cyclic = exchange_capture(keeps_its_callables, Sink(), lambda r, k: None, CAP, starter(), compiled=True)
    marker = Marker()
    alive = weakref.ref(marker)
    server = Server(*REQUESTS["one body"])
    asyncio.run(cyclic(scope_of(marker=marker), server.receive, server.send, 1, 1))  # type: ignore[arg-type]
    del marker, server
    gc.collect()
    assert alive() is None


def test_the_python_form_is_what_the_environment_switch_selects(monkeypatch: pytest.MonkeyPatch) -> None:
    def chosen() -> Any:
        return exchange_capture(echo, Sink(), lambda r, k: None, CAP, starter())

    monkeypatch.setenv(compiled.PURE_PYTHON_ENV, "1")
    assert isinstance(chosen(), PyExchangeCapture)
    assert compiled_encoder(REQUEST_WANTED, RESPONSE_WANTED) is None
    monkeypatch.setenv(compiled.PURE_PYTHON_ENV, "0")
    assert not isinstance(chosen(), PyExchangeCapture)


def test_records_queued_encoded_are_analysed_after_a_fall_back_to_inline(clean_otel_env: None) -> None:
    """A tap that falls back to analysing in its own process may find records the compiled
    capture already encoded for a monitor in its queue: they are decoded, not lost."""
    tap = Tap(echo, ModelTapConfig.from_env(model_name="m", monitor="inline", views_prefix=None))
    tap.start()
    try:
        request = REQUESTS["one body"]
        raw = run_form("python", echo, request)[0]
        native = compiled_encoder(REQUEST_WANTED, RESPONSE_WANTED)
        assert tap.queue.offer(native.encode(raw), 10)
        assert tap.queue.offer(raw, 10)
        assert tap.flush(5.0)
        assert tap.analyzer.records_processed == 2
        assert sum(point.count for point in tap.latest_snapshot().duration) == 2
    finally:
        tap.shutdown()
