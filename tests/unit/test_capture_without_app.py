"""The compiled capture's entries for exchanges the sidecar forwards without calling the app
(`sidecar/direct.py`): `offer_whole` offers the record the capture offers for an app that
receives the whole body in one message and answers with one; `resume` is the capture of an
exchange whose start and trace identity were decided before; `root_trace` decides a trace as
the exchange's start does, or says it cannot (and then draws nothing)."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from modeltap.capture import compiled
from modeltap.capture.exchange import exchange_capture
from modeltap.capture.trace_context import TraceSampler, new_span_id
from modeltap.config import SamplerConfig
from modeltap.handoff.framing import compiled_encoder, decode_record
from modeltap.records import COLD_START_KEY, ExchangeRecord, TraceIds
from tests.unit.test_compiled_capture import CAP, Server, Sink, comparable, read_all, scope_of, starter

pytestmark = pytest.mark.skipif(not compiled.AVAILABLE, reason="modeltap._speedups is not built here")

HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"7")]


def capture_of(app: Any, records: list[Any], sink: Sink | None = None, **kw: Any) -> Any:
    return exchange_capture(
        app,
        sink or Sink(),
        lambda raw, kept: records.append((raw, kept)),
        CAP,
        starter(kw.pop("ratio", 0.0)),
        kw.pop("cold", 0),
        compiled=True,
        **kw,
    )


def through_the_app(
    request_body: bytes, status: int, response_body: bytes, weights: tuple[int, int], **kw: Any
) -> tuple[Any, int, Sink]:
    """The record of an app that reads the whole body, then answers in two messages (status 0:
    it returns without answering, as the proxy does when its client left)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await read_all(receive)
        if status:
            await send({"type": "http.response.start", "status": status, "headers": HEADERS})
            await send({"type": "http.response.body", "body": response_body, "more_body": False})

    records: list[Any] = []
    sink = Sink()
    capture = capture_of(app, records, sink, **kw)
    server = Server({"type": "http.request", "body": request_body, "more_body": False})
    asyncio.run(capture(scope_of(), server.receive, server.send, *weights))
    assert len(records) == 1
    return records[0][0], records[0][1], sink


def without_the_app(
    request_body: bytes, status: int, response_body: bytes, weights: tuple[int, int], **kw: Any
) -> tuple[Any, int, Sink]:
    records: list[Any] = []
    sink = Sink()
    capture = capture_of(None, records, sink, **kw)
    started, start_ns = time.perf_counter(), time.time_ns()
    answered = time.perf_counter() if status else None
    capture.offer_whole(
        scope_of(), *weights, None, start_ns, started, request_body, status,
        HEADERS if status else [], answered, response_body, answered,
    )  # fmt: skip
    assert len(records) == 1
    return records[0][0], records[0][1], sink


@pytest.mark.parametrize("weights", [(1, 1), (4, 0), (4, 8)])
@pytest.mark.parametrize("status", [200, 503, 0])
@pytest.mark.parametrize(
    ("request_body", "response_body"), [(b"0123456789", b"answer!"), (b"", b""), (b"x" * 40, b"y" * 40)]
)
def test_offer_whole_records_what_the_capture_records_for_such_an_app(
    request_body: bytes, response_body: bytes, status: int, weights: tuple[int, int]
) -> None:
    if not status:
        response_body = b""
    app_raw, app_kept, app_sink = through_the_app(request_body, status, response_body, weights, cold=1)
    raw, kept, sink = without_the_app(request_body, status, response_body, weights, cold=1)
    assert comparable(raw) == comparable(app_raw)
    assert comparable(raw)["in_order"]
    assert kept == app_kept
    assert raw[0][COLD_START_KEY] is True
    assert (sink.first_answers, sink.errors) == (app_sink.first_answers, app_sink.errors)
    assert sink.first_answers == int(bool(status))
    assert sink.errors == []


def test_offer_whole_with_an_encoder_offers_the_encoded_record() -> None:
    wanted = ({b"content-type"}, {b"content-type"})
    app_raw, _, _ = through_the_app(b"0123456789", 200, b"answer!", (1, 1))
    raw, _, _ = without_the_app(b"0123456789", 200, b"answer!", (1, 1), encoder=compiled_encoder(*wanted))
    assert isinstance(raw, bytes)
    decoded, expected = comparable(decode_record(raw)), comparable(app_raw)
    for fields in (decoded, expected):
        for name in ("scope", "root_path_at_start", "response_headers"):
            fields.pop(name)
    assert decoded == expected


def test_offer_whole_keeps_no_reference_to_what_it_was_given() -> None:
    records: list[Any] = []
    capture = capture_of(None, records, encoder=compiled_encoder({b"content-type"}, {b"content-type"}))
    scope, headers = scope_of(), list(HEADERS)
    ids = TraceIds(0xABC, 0xDEF, 0, False, True, "", False)
    request, response = b"body " * 9, b"answer " * 9  # over the cap: kept in part, as a slice
    given = (scope, headers, ids, request, response)
    before = [_refs(value) for value in given]
    capture.offer_whole(scope, 1, 1, ids, 0, 0.0, request, 200, headers, 1.0, response, 2.0)
    assert len(records) == 1
    assert [_refs(value) for value in given] == before


def _refs(value: Any) -> int:
    return sys.getrefcount(value)


def test_offer_whole_refuses_what_is_not_a_whole_exchange() -> None:
    capture = capture_of(None, [])
    with pytest.raises(TypeError):
        capture.offer_whole(scope_of(), 1, 1, None, 0, 0.0, "text", 200, [], 1.0, b"", 1.0)
    with pytest.raises(TypeError):
        capture.offer_whole(scope_of(), 1, 1, None, 0, 0.0, b"", 200, [], 1.0, b"")
    with pytest.raises(TypeError):
        capture.offer_whole(scope_of(), 1, 1, "ids", 0, 0.0, b"", 200, [], 1.0, b"", 1.0)


def noting(seen: list[Any]) -> Any:
    """An app that notes the span context current in it, reads the body and answers."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(otel_trace.get_current_span().get_span_context())
        await read_all(receive)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": b"answer!"})

    return app


def resumed_with(capture: Any, ids: TraceIds) -> None:
    """`capture.resume` of one exchange that started now, with `ids`."""
    server = Server({"type": "http.request", "body": b"0123456789", "more_body": False})
    started, start_ns = time.perf_counter(), time.time_ns()
    asyncio.run(capture.resume(scope_of(), server.receive, server.send, 1, 0, ids, start_ns, started))


def test_resume_records_from_the_given_start_with_the_given_trace_current_in_the_app() -> None:
    ids = TraceIds(0xABC, 0xDEF, 0, False, True, "", False)
    seen: list[Any] = []
    records: list[Any] = []
    capture = capture_of(noting(seen), records, ratio=0.0)  # would trace nothing by itself
    started, start_ns = time.perf_counter() - 0.5, time.time_ns() - 500_000_000
    server = Server({"type": "http.request", "body": b"0123456789", "more_body": False})
    asyncio.run(capture.resume(scope_of(), server.receive, server.send, 2, 0, ids, start_ns, started))
    record = ExchangeRecord._make(records[0][0])
    assert (record.start_unix_ns, record.started, record.trace) == (start_ns, started, ids)
    assert record.finished - record.started >= 0.5
    assert (record.weight, record.payload_weight, record.status) == (2, 0, 200)
    assert (seen[0].trace_id, seen[0].span_id) == (0xABC, 0xDEF)
    assert otel_context.get_current() == {}
    plain, _, _ = through_the_app(b"0123456789", 200, b"answer!", (2, 0))
    expected, resumed = comparable(plain), comparable(records[0][0])
    expected.pop("trace")
    resumed.pop("trace")
    assert resumed == expected


def test_resumed_ids_that_opentelemetry_calls_invalid_are_current_as_its_class_makes_them() -> None:
    """The capture makes a SpanContext itself only for valid ids; others go to the class, which
    marks them invalid, as the Python form's `_attach` would."""
    seen: list[Any] = []
    capture = capture_of(noting(seen), [], ratio=1.0)
    assert capture.made_here[0]
    sampled = otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED)
    invalid = [(0xABC, 1 << 64), (0xABC, 0), (0, 0xDEF), (1 << 128, 0xDEF), (-1, 5), (5, -1)]
    valid = [((1 << 128) - 1, (1 << 64) - 1), (1, 1)]
    for trace_id, span_id in invalid + valid:
        seen.clear()
        resumed_with(capture, TraceIds(trace_id, span_id, 0, False, True, "", False))
        assert seen == [otel_trace.SpanContext(trace_id, span_id, False, sampled)]
        assert seen[0].is_valid == ((trace_id, span_id) in valid)


def test_a_zero_draw_is_drawn_again_as_the_python_form_draws_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draws scripted by their width: the compiled capture takes the low 64 bits as two 32-bit
    draws, the Python form as one; both draw the high half and the span id again while zero."""

    def scripted(draws: dict[int, list[int]]) -> Any:
        def getrandbits(bits: int) -> int:
            return draws[bits].pop(0)

        return getrandbits

    monkeypatch.setattr(random, "getrandbits", scripted({32: [0, 0], 64: [0, 7, 0, 9]}))
    ids = capture_of(None, [], ratio=0.5).root_trace([])
    monkeypatch.setattr(random, "getrandbits", scripted({64: [0, 0, 7, 0, 9]}))
    trace_id = TraceSampler(SamplerConfig("parentbased_traceidratio", 0.5)).new_sampled_trace_id()
    assert (ids.trace_id, ids.span_id) == (trace_id, new_span_id()) == (7 << 64, 9)


def test_root_trace_draws_as_the_start_does() -> None:
    random.seed(7)
    capture = capture_of(None, [], ratio=0.5)
    drawn = [capture.root_trace([(b"host", b"m")]) for _ in range(400)]
    random.seed(7)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await read_all(receive)

    records: list[Any] = []
    started = capture_of(app, records, ratio=0.5)
    for _ in range(400):
        asyncio.run(started(scope_of(headers=[(b"host", b"m")]), Server().receive, Server().send, 1, 1))
    with_app = [ExchangeRecord._make(raw).trace for raw, _ in records]
    assert drawn == with_app
    assert 100 < sum(ids is not None for ids in drawn) < 300


def test_root_trace_draws_the_ids_the_python_sampler_draws() -> None:
    """The compiled draw takes the low 64 bits as two 32-bit draws: the same ids, in the same
    order, as `TraceSampler.new_sampled_trace_id` and `new_span_id` from the same state."""
    sampler = TraceSampler(SamplerConfig("parentbased_traceidratio", 0.3))
    random.seed(5)
    expected = []
    for _ in range(500):
        trace_id = sampler.new_sampled_trace_id()
        expected.append(None if trace_id is None else (trace_id, new_span_id()))
    random.seed(5)
    capture = capture_of(None, [], ratio=0.3)
    drawn = [capture.root_trace([]) for _ in range(500)]
    assert [None if ids is None else (ids.trace_id, ids.span_id) for ids in drawn] == expected
    assert 100 < sum(ids is not None for ids in expected) < 200


def test_root_trace_follows_a_ratio_changed_between_exchanges() -> None:
    starter_ = starter(1.0)
    no_app: Any = None  # root_trace decides before any app is called
    capture: Any = exchange_capture(no_app, Sink(), lambda raw, kept: None, CAP, starter_, 0, compiled=True)
    assert all(capture.root_trace([]) is not None for _ in range(50))
    starter_.sampler.set_ratio(0.0)
    assert all(capture.root_trace([]) is None for _ in range(50))
    starter_.sampler.set_ratio(0.5)
    kept = sum(capture.root_trace([]) is not None for _ in range(2000))
    assert 850 < kept < 1150


def test_root_trace_leaves_a_traceparent_or_a_current_context_to_the_python_form() -> None:
    capture = capture_of(None, [], ratio=1.0)
    state = random.getstate()
    traceparent = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"
    assert capture.root_trace([(b"traceparent", traceparent)]) is NotImplemented
    span = otel_trace.NonRecordingSpan(otel_trace.SpanContext(1, 2, False))
    token = otel_context.attach(otel_trace.set_span_in_context(span))
    try:
        assert capture.root_trace([]) is NotImplemented
    finally:
        otel_context.detach(token)
    assert random.getstate() == state  # nothing drawn
    assert isinstance(capture.root_trace([]), TraceIds)
    assert capture_of(None, [], ratio=0.0).root_trace([]) is None  # tracing off
