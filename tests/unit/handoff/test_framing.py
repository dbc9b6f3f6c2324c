"""The hand-off wire format: a record survives encode -> RECORDS payload -> decode with every field
the analysis and the spans read; a malformed payload raises ValueError and nothing else; the
frame reader splits any chunking of a stream into the same messages."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltap.capture import compiled
from modeltap.capture.routes import RouteTemplates
from modeltap.handoff.framing import (
    _LENGTHS,
    COUNT,
    FRAME,
    RECORDS,
    FrameReader,
    RecordEncoder,
    compiled_encoder,
    decode_grouped,
    decode_records,
    json_message,
    message,
)
from modeltap.records import COLD_START_KEY, PROXY_ERROR_KEY, ExchangeRecord, RawRecord, TraceIds
from tests.support.timed_shapes import shape_of, timed_only

REQUEST_WANTED = (b"content-type", b"x-request-id", b"x-model-version", b"traceparent")
RESPONSE_WANTED = (b"content-type", b"x-model-version")
UNWANTED = (b"authorization", b"cookie", b"x-other")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Route:
    """What Starlette puts in `scope["route"]`: an object with a `path` template."""

    path: str


def encoder() -> RecordEncoder:
    return RecordEncoder(request_headers=REQUEST_WANTED, response_headers=RESPONSE_WANTED)


def payload_of(records: list[RawRecord], encode: RecordEncoder | None = None) -> bytes:
    """One RECORDS payload, laid out as the shipper writes it."""
    encode = encode or encoder()
    parts = [COUNT.pack(len(records))]
    for raw in records:
        head, bodies = encode.encode(raw)
        parts.append(head)
        parts.extend(bodies)
    return b"".join(parts)


def record_of(scope: dict[str, Any], **fields: Any) -> RawRecord:
    """A raw record with plain values, `fields` (ExchangeRecord names) overriding them."""
    values: dict[str, Any] = {
        "scope": scope, "root_path_at_start": "", "start_unix_ns": 1, "started": 0.0,
        "response_started": None, "ended": None, "finished": 1.0, "status": 200,
        "response_headers": [], "request_parts": [], "request_size": 0, "response_parts": [],
        "response_size": 0, "exception_type": None, "disconnected": False, "trace": None,
        "weight": 1, "payload_weight": 1, "first_body": None,
    }  # fmt: skip
    values.update(fields)
    return tuple(ExchangeRecord(**values))


# ---- strategies -----------------------------------------------------------------------------------

TEXT = st.characters(codec="utf-8")  # any code point UTF-8 can encode (no lone surrogates)
TOKEN = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")
paths = st.one_of(
    st.text(TEXT, max_size=40).map(lambda s: "/" + s),
    # Bytes that were not UTF-8, decoded as a server decodes them (surrogate escapes).
    st.binary(max_size=40).map(lambda b: "/" + b.decode("utf-8", "surrogateescape")),
)
hosts = st.one_of(
    st.sampled_from(["127.0.0.1", "::1", "10.1.2.3", "model.internal", "/run/app.sock"]),
    st.text(TEXT, min_size=1, max_size=20),
    # A Unix socket path that was not UTF-8 (surrogate escapes, as os.fsdecode gives).
    st.binary(min_size=1, max_size=20).map(lambda b: "/run/" + b.decode("utf-8", "surrogateescape")),
)
ports = st.integers(0, 65535)
header_names = st.sampled_from(REQUEST_WANTED + RESPONSE_WANTED + UNWANTED)
header_values = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"application/json", b"a\nb", b"a\r\nb", b"\n", b"x:y:z", b""]),
)
headers = st.lists(st.tuples(header_names, header_values), max_size=8)
chunks = st.lists(st.binary(max_size=50), max_size=4)
offsets = st.floats(0.0, 100.0, allow_nan=False)
maybe_offsets = st.none() | offsets
traces = st.none() | st.builds(
    TraceIds,
    trace_id=st.integers(1, 2**128 - 1),
    span_id=st.integers(1, 2**64 - 1),
    parent_span_id=st.integers(0, 2**64 - 1),
    parent_is_remote=st.booleans(),
    sampled=st.booleans(),
    trace_state=st.text(st.characters(max_codepoint=0xFF), max_size=40),
    enriched_local_span=st.booleans(),
)


@st.composite
def raw_records(draw: st.DrawFn) -> RawRecord:
    started = draw(st.floats(0.0, 1e6, allow_nan=False))

    def at(offset: float | None) -> float | None:
        return None if offset is None else started + offset

    scope: dict[str, Any] = {
        "type": "http",
        "method": draw(st.sampled_from(["GET", "POST"]) | TOKEN.filter(bool) | st.text(TEXT, min_size=1)),
        "scheme": draw(st.sampled_from(["http", "https"])),
        "http_version": draw(st.sampled_from(["1.0", "1.1", "2"])),
        "path": draw(paths),
        "query_string": draw(st.binary(max_size=30)),
        "headers": draw(headers),
        "client": draw(st.none() | st.tuples(hosts, ports)),
        "server": draw(st.none() | st.tuples(hosts, st.none() | ports)),
    }
    # A mount prefix routing appended to root_path after the request started, then the route.
    root_path_at_start = draw(st.sampled_from(["", "/api"]))
    mount = draw(st.sampled_from(["", "/v1", "/mødels"]))
    scope["root_path"] = root_path_at_start + mount
    if draw(st.booleans()):
        scope["route"] = Route(draw(st.text(TEXT, max_size=20).map(lambda s: "/{model}" + s)))
    if draw(st.booleans()):
        scope[PROXY_ERROR_KEY] = draw(st.sampled_from(["upstream_timeout", "upstream_refused", "ünïcode"]))
    if draw(st.booleans()):
        scope[COLD_START_KEY] = True
    request_size = draw(st.integers(-1, 2**40))
    return (
        scope,
        root_path_at_start,
        draw(st.integers(-(2**63), 2**63 - 1)),
        started,
        at(draw(maybe_offsets)),
        at(draw(maybe_offsets)),
        started + draw(offsets),
        draw(st.integers(0, 999)),
        draw(headers),
        draw(chunks),
        request_size,
        draw(chunks),
        draw(st.integers(0, 2**40)),
        draw(st.none() | st.text(TEXT, min_size=1, max_size=30)),
        draw(st.booleans()),
        draw(traces),
        draw(st.integers(1, 2**31 - 1)),
        draw(st.integers(0, 2**31 - 1)),
        at(draw(maybe_offsets)),
    )


def view(raw: RawRecord) -> dict[str, Any]:
    """Everything the analysis and the spans read from a record, timings relative to its start."""
    record = ExchangeRecord._make(raw)

    def relative(value: float | None) -> float | None:
        return None if value is None else value - record.started

    return {
        "method": record.method,
        "scheme": record.scheme,
        "http_version": record.http_version,
        "path": record.path,
        "query_string": record.query_string,
        "route": RouteTemplates().of(record.scope, record.root_path_at_start),
        "client": record.client,
        "server": record.server,
        "status": record.status,
        "request_size": record.request_size,
        "response_size": record.response_size,
        "weight": record.weight,
        "payload_weight": record.payload_weight,
        "exception_type": record.exception_type,
        "proxy_error": record.scope.get(PROXY_ERROR_KEY),
        "cold_start": bool(record.scope.get(COLD_START_KEY)),
        "error_type": record.error_type,
        "outcome": record.outcome,
        "disconnected": record.disconnected,
        "trace": record.trace,
        "start_unix_ns": record.start_unix_ns,
        "response_started": relative(record.response_started),
        "ended": relative(record.ended),
        "finished": relative(record.finished),
        "first_body": relative(record.first_body),
        "duration_s": record.duration_s,
        "ttfb_s": record.ttfb_s,
        "request_headers": [tuple(pair) for pair in record.request_headers],
        "response_headers": [tuple(pair) for pair in record.response_headers],
        "request_body": b"".join(record.request_parts),
        "response_body": b"".join(record.response_parts),
    }


def kept(pairs: list[tuple[bytes, bytes]], wanted: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in pairs if name in wanted and b"\n" not in value]


def expected_view(raw: RawRecord) -> dict[str, Any]:
    expected = view(raw)
    expected["request_headers"] = kept(raw[0]["headers"], REQUEST_WANTED)
    expected["response_headers"] = kept(raw[8], RESPONSE_WANTED)
    return expected


# ---- round trip -----------------------------------------------------------------------------------


@FAST
@given(st.lists(raw_records(), max_size=4))
def test_round_trip_keeps_every_field_the_analysis_reads(records: list[RawRecord]) -> None:
    decoded = decode_records(memoryview(payload_of(records)))
    assert len(decoded) == len(records)
    for raw, back in zip(records, decoded, strict=True):
        assert len(back) == len(ExchangeRecord._fields)
        assert view(back) == expected_view(raw)


@FAST
@given(st.lists(raw_records(), min_size=1, max_size=3), st.binary(min_size=1, max_size=8))
def test_a_view_onto_part_of_a_buffer_decodes_like_the_whole(records: list[RawRecord], around: bytes) -> None:
    """The decoder reads a view of a whole bytes object in place and copies any other view: a
    view that starts inside a larger buffer, or of a bytearray, gives the same records."""
    payload = payload_of(records)
    expected = [view(raw) for raw in decode_records(memoryview(payload))]
    inner = memoryview(around + payload + around)[len(around) : len(around) + len(payload)]
    assert [view(raw) for raw in decode_records(inner)] == expected
    assert [view(raw) for raw in decode_records(memoryview(bytearray(payload)))] == expected


def test_round_trip_of_a_full_record_field_by_field() -> None:
    """One record with every optional part present, checked against literal values."""
    trace = TraceIds(2**127 + 5, 2**63 + 7, 42, True, True, "vendor=a,other=b", True)
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "https",
        "http_version": "2",
        "path": "/api/v1/mødels/ä\udcff:predict",
        "root_path": "/api/v1",
        "route": Route("/mødels/{name}:predict"),
        "query_string": b"a=1&b=%FF",
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer secret"),
            (b"x-request-id", b"line\nbreak"),
            (b"x-model-version", b"v2"),
        ],
        "client": ("10.0.0.7", 51234),
        "server": ("/run/app.sock", None),
        PROXY_ERROR_KEY: "upstream_timeout",
    }
    raw = record_of(
        scope,
        root_path_at_start="/api",
        start_unix_ns=1_700_000_000_000_000_000,
        started=50.0,
        response_started=50.25,
        ended=50.5,
        finished=50.75,
        first_body=50.3,
        status=503,
        response_headers=[(b"content-type", b"text/plain"), (b"set-cookie", b"s=1")],
        request_parts=[b"ab", b"", b"cd"],
        request_size=4,
        response_parts=[b"x" * 10, b"y"],
        response_size=11,
        exception_type="TimeoutError",
        disconnected=True,
        trace=trace,
        weight=3,
        payload_weight=6,
    )
    (back,) = decode_records(memoryview(payload_of([raw])))
    record = ExchangeRecord._make(back)
    assert (record.method, record.scheme, record.http_version) == ("POST", "https", "2")
    assert record.path == "/api/v1/mødels/ä\udcff:predict"
    assert record.query_string == b"a=1&b=%FF"
    assert RouteTemplates().of(record.scope, record.root_path_at_start) == "/v1/mødels/{name}:predict"
    assert record.client == ("10.0.0.7", 51234)
    assert record.server == ("/run/app.sock", None)
    assert record.scope[PROXY_ERROR_KEY] == "upstream_timeout"
    assert record.error_type == "upstream_timeout"
    assert record.request_headers == [(b"content-type", b"application/json"), (b"x-model-version", b"v2")]
    assert record.response_headers == [(b"content-type", b"text/plain")]
    assert b"".join(record.request_parts) == b"abcd"
    assert b"".join(record.response_parts) == b"x" * 10 + b"y"
    assert (record.status, record.request_size, record.response_size) == (503, 4, 11)
    assert (record.weight, record.payload_weight) == (3, 6)
    assert record.exception_type == "TimeoutError"
    assert record.disconnected is True
    assert record.trace == trace
    assert record.start_unix_ns == 1_700_000_000_000_000_000
    assert record.started == 0.0
    assert (record.response_started, record.ended, record.finished, record.first_body) == pytest.approx(
        (0.25, 0.5, 0.75, 0.3)
    )


def test_readings_never_taken_stay_none() -> None:
    scope = {"type": "http", "path": "/", "headers": []}
    raw = record_of(scope, started=10.0, finished=10.5, status=0, request_size=-1,
                    exception_type="RuntimeError", payload_weight=0)  # fmt: skip
    (back,) = decode_records(memoryview(payload_of([raw])))
    record = ExchangeRecord._make(back)
    assert (record.response_started, record.ended, record.first_body) == (None, None, None)
    assert record.finished == 0.5
    assert record.outcome == "app_error"
    assert record.trace is None
    assert record.client is None
    assert record.server is None
    assert record.request_parts == []
    assert record.response_parts == []
    assert PROXY_ERROR_KEY not in record.scope
    assert COLD_START_KEY not in record.scope
    assert RouteTemplates().of(record.scope, record.root_path_at_start) is None


def test_encoder_reuses_its_route_cache_without_mixing_mounts() -> None:
    """The route object is memoised per (route, root_path): the same route under two mounts
    resolves to two templates."""
    route = Route("/predict")
    encode = encoder()

    def record(root_path: str) -> RawRecord:
        scope = {"type": "http", "path": root_path + "/predict", "root_path": root_path, "route": route}
        return record_of(scope)

    decoded = decode_records(memoryview(payload_of([record("/a"), record("/b"), record("/a")], encode)))
    templates = [RouteTemplates().of(back[0], back[1]) for back in decoded]
    assert templates == ["/a/predict", "/b/predict", "/a/predict"]


def fastapi_records() -> list[RawRecord]:
    """Records of a route FastAPI matched through `include_router`: its router's route in
    `scope["route"]` (no prefix), the whole template beside it, and look-alikes that are not."""
    route = Route("/things/{tid}")

    def scope(path: str, root_path: str, context: object) -> dict[str, Any]:
        fastapi = {"effective_route_context": context}
        return {"type": "http", "path": path, "root_path": root_path, "route": route, "fastapi": fastapi}

    whole = SimpleNamespace(original_route=route, path="/api/{tenant}/things/{tid}")
    return [
        record_of(scope("/api/acme/things/5", "", whole)),
        record_of(scope("/m/api/acme/things/5", "/m", whole)),  # under a mount that moved root_path
        record_of(scope("/things/5", "", SimpleNamespace(original_route=Route("/x"), path="/v1/x"))),
        record_of(scope("/things/5", "", SimpleNamespace(original_route=route, path=7))),  # not a path
    ]


FASTAPI_TEMPLATES = [
    "/api/{tenant}/things/{tid}",
    "/m/api/{tenant}/things/{tid}",
    "/things/{tid}",
    "/things/{tid}",
]


def test_fastapi_included_routes_keep_their_prefix() -> None:
    """FastAPI leaves its router's route in `scope["route"]` (no `include_router` prefix) and the
    whole template beside it: the record carries the whole one, for that route only."""
    decoded = decode_records(memoryview(payload_of(fastapi_records())))
    assert [RouteTemplates().of(back[0], back[1]) for back in decoded] == FASTAPI_TEMPLATES


@pytest.mark.skipif(not compiled.AVAILABLE, reason="the extension is not built here")
def test_the_compiled_encoder_reads_fastapis_template_as_the_python_one() -> None:
    native = compiled_encoder(REQUEST_WANTED, RESPONSE_WANTED)
    python = encoder()
    for raw in fastapi_records():
        head, bodies = python.encode(raw)
        assert native.encode(raw) == b"".join([head, *bodies])


def test_bodies_are_returned_as_separate_buffers() -> None:
    """The shipper hands the body chunks to sendmsg without copying them into the head."""
    body = b"z" * 1000
    scope = {"type": "http", "path": "/", "headers": []}
    raw = record_of(
        scope, request_parts=[body, b"q"], request_size=1001, response_parts=[b"r"], response_size=1
    )
    head, bodies = encoder().encode(raw)
    assert bodies == [body, b"q", b"r"]
    assert bodies[0] is body
    assert body not in head


def test_messages_are_length_prefixed() -> None:
    assert message(RECORDS, b"abc") == struct.pack("<IB", 4, RECORDS) + b"abc"
    assert json_message(7, {"id": 1}) == struct.pack("<IB", 9, 7) + b'{"id":1}'


# ---- malformed payloads ---------------------------------------------------------------------------


def assert_value_error_or_sound(payload: bytes) -> None:
    """A decode either raises ValueError or returns records the analysis can read."""
    try:
        records = decode_records(memoryview(payload))
    except ValueError:
        return
    for raw in records:
        record = ExchangeRecord._make(raw)
        for name, value in [*record.request_headers, *record.response_headers]:
            assert isinstance(name, bytes)
            assert isinstance(value, bytes)
        view(raw)


@FAST
@given(st.lists(raw_records(), min_size=1, max_size=3), st.data())
def test_every_truncation_raises_value_error(records: list[RawRecord], data: st.DataObject) -> None:
    payload = payload_of(records)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(ValueError):  # noqa: PT011
        decode_records(memoryview(payload[:cut]))


@FAST
@given(st.lists(raw_records(), max_size=3), st.binary(min_size=1, max_size=20))
def test_trailing_bytes_raise_value_error(records: list[RawRecord], extra: bytes) -> None:
    with pytest.raises(ValueError, match="trailing"):
        decode_records(memoryview(payload_of(records) + extra))


@FAST
@given(st.lists(raw_records(), max_size=3), st.integers(1, 2**32 - 1))
def test_a_count_that_disagrees_with_the_records_raises_value_error(
    records: list[RawRecord], more: int
) -> None:
    body = payload_of(records)[COUNT.size :]
    larger = min(len(records) + more, 2**32 - 1)
    with pytest.raises(ValueError):  # noqa: PT011
        decode_records(memoryview(COUNT.pack(larger) + body))
    if records:
        with pytest.raises(ValueError):  # noqa: PT011
            decode_records(memoryview(COUNT.pack(len(records) - 1) + body))


def test_a_field_length_past_the_end_raises_value_error() -> None:
    scope = {"type": "http", "path": "/p", "headers": []}
    raw = record_of(scope, request_parts=[b"body"], request_size=4)
    payload = bytearray(payload_of([raw]))
    # The lengths table follows the fixed part (no trace): one length per variable field.
    lengths_at = COUNT.size + struct.calcsize("<q4diqqiiBii")
    for index in range(_LENGTHS.size // 4):
        broken = bytearray(payload)
        struct.pack_into("<I", broken, lengths_at + 4 * index, 2**32 - 1)
        with pytest.raises(ValueError, match="beyond the end"):
            decode_records(memoryview(bytes(broken)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_value_error_or_decode(payload: bytes) -> None:
    assert_value_error_or_sound(payload)


def mutated(records: list[RawRecord], data: st.DataObject) -> bytes:
    """A payload of `records` with a few bytes flipped, set, inserted or deleted."""
    payload = bytearray(payload_of(records))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        at = data.draw(st.integers(0, len(payload) - 1)) if payload else 0
        if action == "flip" and payload:
            payload[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "set" and payload:
            payload[at] = data.draw(st.sampled_from([0x00, 0x0A, 0x3A, 0x80, 0xFF]))
        elif action == "insert":
            payload[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif payload:
            del payload[at : at + data.draw(st.integers(1, 8))]
    return bytes(payload)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_records(), min_size=1, max_size=2), st.data())
def test_mutated_payloads_raise_value_error_or_decode(records: list[RawRecord], data: st.DataObject) -> None:
    assert_value_error_or_sound(mutated(records, data))


def test_a_header_line_without_a_colon_is_rejected() -> None:
    """A header blob the encoder cannot have written (no `name:value`) is a broken batch."""
    scope = {"type": "http", "path": "/", "headers": [(b"content-type", b"abc")]}
    raw = record_of(scope)
    payload = payload_of([raw])
    broken = payload.replace(b"content-type:abc", b"content-typeXabc")
    assert broken != payload
    with pytest.raises(ValueError, match="header"):
        decode_records(memoryview(broken))


# ---- the frame reader -----------------------------------------------------------------------------

frames = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=8)


def read_all(reader: FrameReader, pieces: list[bytes]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for piece in pieces:
        out.extend((kind, bytes(payload)) for kind, payload in reader.feed(piece))
    return out


@settings(max_examples=150, deadline=None)
@given(frames, st.data())
def test_frame_reader_splits_any_chunking_into_the_same_messages(
    messages: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(message(kind, payload) for kind, payload in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    reader = FrameReader()
    assert read_all(reader, pieces) == messages
    assert reader.buffered == 0


@settings(max_examples=30, deadline=None)
@given(frames)
def test_frame_reader_byte_by_byte(messages: list[tuple[int, bytes]]) -> None:
    stream = b"".join(message(kind, payload) for kind, payload in messages)
    reader = FrameReader()
    assert read_all(reader, [stream[i : i + 1] for i in range(len(stream))]) == messages
    assert reader.buffered == 0


def test_frame_reader_keeps_a_partial_message_for_later() -> None:
    reader = FrameReader()
    whole = message(RECORDS, b"0123456789")
    assert reader.feed(whole[:7]) == []
    assert reader.buffered == 7
    ((kind, payload),) = reader.feed(whole[7:] + whole[:2])
    assert (kind, bytes(payload)) == (RECORDS, b"0123456789")
    assert reader.buffered == 2


def test_frame_reader_payloads_survive_later_feeds() -> None:
    """A returned payload is its own copy: the reader's buffer moves on under it."""
    reader = FrameReader()
    ((_, first),) = reader.feed(message(1, b"first"))
    reader.feed(message(2, b"second") + message(3, b"x" * 100)[:20])
    assert bytes(first) == b"first"


def test_frame_reader_rejects_a_zero_length() -> None:
    reader = FrameReader()
    with pytest.raises(ValueError, match="out of bounds"):
        reader.feed(message(1, b"ok") + FRAME.pack(0, 1))


def test_frame_reader_rejects_a_length_over_its_maximum() -> None:
    reader = FrameReader(max_message_bytes=100)
    ((kind, payload),) = reader.feed(message(5, b"p" * 99))  # exactly at the maximum: fine
    assert (kind, len(payload)) == (5, 99)
    with pytest.raises(ValueError, match="out of bounds"):
        reader.feed(FRAME.pack(101, 5))


def test_frame_reader_rejects_the_default_maximum_before_buffering() -> None:
    reader = FrameReader()
    with pytest.raises(ValueError, match="out of bounds"):
        reader.feed(FRAME.pack(2**32 - 1, RECORDS) + b"abc")


@FAST
@given(st.lists(raw_records(), min_size=1, max_size=4), st.lists(st.booleans(), min_size=4, max_size=4))
def test_a_batch_with_records_already_encoded_is_the_same_bytes(
    records: list[RawRecord], encoded: list[bool]
) -> None:
    """What the shipper writes for a batch, records encoded by the compiled capture (bytes) mixed
    with raw ones or not: the records' bytes one after another, either way."""
    expected = [b"".join([head, *bodies]) for head, bodies in map(encoder().encode, records)]
    batch: list[Any] = [
        data if flag else raw for data, raw, flag in zip(expected, records, encoded, strict=False)
    ]
    out: list[bytes] = []
    assert encoder().encode_batch(batch, out) == sum(map(len, expected))
    assert b"".join(out) == b"".join(expected)
    only_bytes: list[bytes] = []
    assert encoder().encode_batch(list(expected), only_bytes) == sum(map(len, expected))
    assert only_bytes == [b"".join(expected)]  # one buffer for the whole batch


# ---- the compiled decoder ---------------------------------------------------------------------------


def both_decoders(payload: bytes) -> tuple[Any, Any]:
    """What the compiled decoder and the Python one make of a payload: the records, or the
    ValueError's class (the messages may differ)."""
    outcomes: list[Any] = []
    for form in (True, False):
        with mock.patch.object(compiled, "wanted", lambda form=form: form):
            try:
                outcomes.append(decode_records(memoryview(payload)))
            except ValueError:
                outcomes.append(ValueError)
    return outcomes[0], outcomes[1]


needs_extension = pytest.mark.skipif(not compiled.AVAILABLE, reason="the extension is not built here")


@needs_extension
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_records(), max_size=4))
def test_the_compiled_decoder_gives_the_python_decoders_records(records: list[RawRecord]) -> None:
    fast, slow = both_decoders(payload_of(records))
    assert fast == slow
    assert len(fast) == len(records)


@needs_extension
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_records(), min_size=1, max_size=2), st.data())
def test_the_compiled_decoder_refuses_what_the_python_decoder_refuses(
    records: list[RawRecord], data: st.DataObject
) -> None:
    payload = mutated(records, data)
    if data.draw(st.booleans()):
        payload = payload[: data.draw(st.integers(0, len(payload)))]  # cut short as well
    fast, slow = both_decoders(payload)
    assert fast == slow


@needs_extension
def test_a_count_larger_than_the_payload_is_refused_before_allocating() -> None:
    with pytest.raises(ValueError, match="more records than bytes"):
        compiled._speedups.decode_records(
            COUNT.pack(2**32 - 1), TraceIds, "route", PROXY_ERROR_KEY, COLD_START_KEY
        )


# ---- records timed and counted only, by shape (`decode_grouped`) -------------------------------------


def _set_scope(key: str, values: st.SearchStrategy[Any]) -> Any:
    def change(raw: list[Any], scope: dict[str, Any], draw: st.DrawFn) -> None:
        scope[key] = draw(values)

    return change


def _set_field(index: int, values: st.SearchStrategy[Any]) -> Any:
    def change(raw: list[Any], scope: dict[str, Any], draw: st.DrawFn) -> None:
        raw[index] = draw(values)

    return change


def _route(raw: list[Any], scope: dict[str, Any], draw: st.DrawFn) -> None:
    scope["route"] = Route(draw(st.sampled_from(["/{a}", "/{b}"])))


def _unanswered(raw: list[Any], scope: dict[str, Any], draw: st.DrawFn) -> None:
    raw[5] = None if raw[5] is not None else raw[3]


SHAPE_CHANGES: dict[str, Any] = {
    "method": _set_scope("method", st.sampled_from(["GET", "PUT"])),
    "scheme": _set_scope("scheme", st.sampled_from(["http", "https"])),
    "http_version": _set_scope("http_version", st.sampled_from(["1.0", "2"])),
    "path": _set_scope("path", st.sampled_from(["/a", "/b"])),
    "route": _route,
    "proxy_error": _set_scope(PROXY_ERROR_KEY, st.sampled_from(["upstream_timeout", "x"])),
    "cold": _set_scope(COLD_START_KEY, st.booleans()),
    "status": _set_field(7, st.sampled_from([200, 503])),
    "response_headers": _set_field(8, st.sampled_from([[], [(b"x-model-version", b"2")]])),
    "exception": _set_field(13, st.sampled_from([None, "ValueError"])),
    "disconnected": _set_field(14, st.booleans()),
    "weight": _set_field(16, st.sampled_from([1, 2])),
    "unanswered": _unanswered,
}


@st.composite
def alike_batches(draw: st.DrawFn) -> list[RawRecord]:
    """Batches as traffic makes them: a few kinds of exchange, each many times over with its own
    clock readings, sizes, client and request headers; most timed and counted only."""
    bases = draw(st.lists(raw_records(), min_size=1, max_size=3))
    batch = []
    for _ in range(draw(st.integers(1, 12))):
        raw = list(draw(st.sampled_from(bases)))
        scope = dict(raw[0])
        if draw(st.booleans()):
            scope["client"] = draw(st.none() | st.tuples(hosts, ports))
            scope["headers"] = draw(headers)
        raw[0] = scope
        started = draw(st.floats(0.0, 1e6, allow_nan=False))
        raw[3] = started
        if raw[5] is not None or draw(st.booleans()):
            raw[5] = started + draw(offsets)  # answered, at another time
        raw[6] = started + draw(offsets)
        raw[10], raw[12] = draw(st.integers(-1, 99)), draw(st.integers(0, 99))
        # Now and then one field of its shape differs: each one the only difference somewhere.
        changed = draw(st.sampled_from([None, *SHAPE_CHANGES]))
        if changed is not None:
            SHAPE_CHANGES[changed](raw, scope, draw)
        if draw(st.integers(0, 3)):  # mostly: the payload sampled out, untraced
            raw[17], raw[9], raw[11], raw[15] = 0, [], [], None
        batch.append(tuple(raw))
    return batch


def assert_grouped_like_one_by_one(payload: bytes) -> None:
    one_by_one = decode_records(memoryview(payload))
    records, groups = decode_grouped(memoryview(payload))
    timed = [raw for raw in one_by_one if timed_only(raw)]
    rest = [raw for raw in one_by_one if not timed_only(raw)]
    assert [view(raw) for raw in records] == [view(raw) for raw in rest]
    assert len(groups) == len({repr(shape_of(raw)) for raw in timed})
    expanded = []
    for first, durations in groups:
        members = [raw for raw in timed if shape_of(raw) == shape_of(first)]
        assert view(first) == view(members[0])  # the group's record is its first
        assert durations == [ExchangeRecord._make(raw).duration_s for raw in members]
        expanded += members
    assert sorted(map(repr, map(view, expanded))) == sorted(map(repr, map(view, timed)))


@needs_extension
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alike_batches())
def test_grouped_records_are_the_records_one_by_one(batch: list[RawRecord]) -> None:
    assert_grouped_like_one_by_one(payload_of(batch))


@needs_extension
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alike_batches(), st.data())
def test_grouping_refuses_what_the_decoder_refuses(batch: list[RawRecord], data: st.DataObject) -> None:
    payload = mutated(batch, data)
    try:
        decode_records(memoryview(payload))
    except ValueError:
        with pytest.raises(ValueError):  # noqa: PT011
            decode_grouped(memoryview(payload))
        return
    assert_grouped_like_one_by_one(payload)


@needs_extension
def test_past_64_shapes_a_batch_comes_back_record_by_record() -> None:
    batch = [
        record_of(
            {"type": "http", "path": f"/m/{i % 100}", "headers": []}, payload_weight=0, finished=float(i)
        )
        for i in range(300)
    ]
    records, groups = decode_grouped(memoryview(payload_of(batch)))
    assert len(groups) == 64
    assert [durations for _, durations in groups][:2] == [[0.0, 100.0, 200.0], [1.0, 101.0, 201.0]]
    assert [ExchangeRecord._make(raw).path for raw in records] == [
        f"/m/{i % 100}" for i in range(300) if i % 100 >= 64
    ]


def test_without_the_extension_nothing_is_grouped() -> None:
    batch = [record_of({"type": "http", "path": "/m", "headers": []}, payload_weight=0)] * 3
    with mock.patch.object(compiled, "wanted", return_value=False):
        records, groups = decode_grouped(memoryview(payload_of(batch)))
    assert (len(records), groups) == (3, [])
