"""The hand-written span encoding equals the SDK's encoding of the same span, field by field."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.resources import Resource

from modeltap.export.span_wire import SpanWireEncoder, any_value, export_request, varint
from modeltap.export.spans import ExchangeIdentity, SpanOptions, build_span
from modeltap.records import ExchangeRecord, TraceIds


class _Route:
    path = "/v1/models/{name}:predict"


def _record(**changes: Any) -> ExchangeRecord:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/models/churn:predict",
        "query_string": b"sig=secret&x=1",
        "headers": [(b"host", b"model"), (b"user-agent", b"curl/8"), (b"authorization", b"Bearer t")],
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
        "client": ("127.0.0.1", 50123),
        "server": ("127.0.0.1", 8080),
        "route": _Route(),
    }
    fields: dict[str, Any] = {
        "scope": scope,
        "root_path_at_start": "",
        "start_unix_ns": time.time_ns(),
        "started": 10.0,
        "response_started": 10.002,
        "ended": 10.004,
        "finished": 10.005,
        "status": 200,
        "response_headers": [(b"content-type", b"application/json")],
        "request_parts": [b'{"instances": [[1, 2]]}'],
        "request_size": 23,
        "response_parts": [b'{"predictions": [0.5]}'],
        "response_size": 22,
        "exception_type": None,
        "disconnected": False,
        "trace": TraceIds(0x1234 << 64 | 0xABCD, 0x42, 0x99, True, True, "vendor=x", False),
        "weight": 1,
        "payload_weight": 1,
        "first_body": 10.003,
    }
    fields.update(changes)
    return ExchangeRecord(**fields)


IDENTITY = ExchangeIdentity(
    route="/v1/models/{name}:predict",
    model_name="churn",
    model_version="3",
    request_id="req-1",
    protocol="kserve_v1",
    violations={"missing": 2},
)
OPTIONS = SpanOptions(
    capture_payloads=True,
    max_payload_bytes=10,
    request_headers=("authorization", "user-agent"),
    response_headers=(),
)
RESOURCE = Resource.create({"service.name": "svc", "service.instance.id": "abc"})


def _decode_wire(record: ExchangeRecord, identity: ExchangeIdentity = IDENTITY) -> Any:
    encoder = SpanWireEncoder(OPTIONS)
    payload = export_request(RESOURCE, [encoder.encode(record, identity), encoder.encode(record, identity)])
    request = ExportTraceServiceRequest.FromString(payload)
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "modeltap"
    assert len(scope_spans.spans) == 2
    assert scope_spans.spans[0] == scope_spans.spans[1]  # the memoised fragments give the same bytes
    return resource_spans.resource, scope_spans.spans[0]


def _decode_sdk(record: ExchangeRecord, identity: ExchangeIdentity = IDENTITY) -> Any:
    request = encode_spans([build_span(record, identity, OPTIONS, RESOURCE)])
    resource_spans = request.resource_spans[0]
    return resource_spans.resource, resource_spans.scope_spans[0].spans[0]


def assert_same_span(wire: Any, sdk: Any) -> None:
    """Field by field; attributes as a mapping (their order is the encoder's) with none twice."""
    for field in (
        "trace_id",
        "span_id",
        "parent_span_id",
        "trace_state",
        "name",
        "kind",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "status",
        "events",
        "flags",
    ):
        assert getattr(wire, field) == getattr(sdk, field), field
    assert {kv.key: kv.value for kv in wire.attributes} == {kv.key: kv.value for kv in sdk.attributes}
    assert len(wire.attributes) == len(sdk.attributes)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"status": 503},
        {"exception_type": "ValueError", "status": 0, "ended": None},
        {"trace": TraceIds(7, 8, 0, False, True, "", False)},
        {"trace": TraceIds(7, 8, 9, False, True, "", True)},
    ],
    ids=["ok", "5xx", "exception", "root", "child-of-local"],
)
def test_wire_span_equals_sdk_span(changes: dict[str, Any]) -> None:
    record = _record(**changes)
    wire_resource, wire = _decode_wire(record)
    sdk_resource, sdk = _decode_sdk(record)
    assert wire_resource == sdk_resource
    assert_same_span(wire, sdk)


def test_credentials_and_query_secrets_never_exported() -> None:
    _, span = _decode_wire(_record())
    attributes = {kv.key: kv.value.string_value for kv in span.attributes}
    assert attributes["http.request.header.authorization"] == "REDACTED"
    assert attributes["url.query"] == "sig=REDACTED&x=1"
    assert attributes["modeltap.request.body"] == '{"instance'  # 10 bytes, opt-in capture


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=50),
    )
)
def test_any_value_round_trips(value: Any) -> None:
    decoded = AnyValue.FromString(any_value(value))
    kind = decoded.WhichOneof("value")
    got = getattr(decoded, kind) if kind else ""
    assert got == value
    assert type(got) is type(value)


# One encoder across a sequence of records that each differ from an earlier one in a field or
# two: the shapes it remembers must never lend one record's attributes, name or status to another.
_CHANGES: dict[str, Any] = {
    "method": ["POST", "GET", "BREW"],
    "path": ["/v1/models/churn:predict", "/v2/models/churn/infer", "/"],
    "query_string": [b"", b"sig=secret&x=1", b"x=2"],
    "headers": [
        [(b"host", b"model"), (b"user-agent", b"curl/8"), (b"authorization", b"Bearer t")],
        [(b"host", b"model")],
        [(b"user-agent", b"a"), (b"user-agent", b"b"), (b"x-a", b"1"), (b"X-A", b"2")],
    ],
    "client": [("127.0.0.1", 50123), ("127.0.0.1", 50124), ("10.0.0.2", 50123), None],
    "server": [("127.0.0.1", 8080), ("model", None), None],
    "modeltap.proxy_error": [None, "upstream_timeout", "client_disconnected"],
}
_RECORD_CHANGES: dict[str, list[Any]] = {
    "status": [200, 404, 503, 0],
    "ended": [10.004, None],
    "response_started": [10.002, None],
    "exception_type": [None, "ValueError"],
    "disconnected": [False, True],
    "request_size": [23, -1, 7],
    "response_size": [22, 5],
    "response_headers": [[(b"content-type", b"application/json")], [], [(b"x-model-version", b"4")]],
    "trace": [
        TraceIds(0x1234 << 64 | 0xABCD, 0x42, 0x99, True, True, "vendor=x", False),
        TraceIds(7, 8, 0, False, True, "", False),
        TraceIds(7, 9, 3, False, True, "", True),
    ],
}
_IDENTITY_CHANGES: dict[str, list[Any]] = {
    "route": ["/v1/models/{name}:predict", None, "/v2/models/{name}/infer"],
    "model_name": ["churn", "fraud"],
    "model_version": ["3", "4"],
    "request_id": ["req-1", None, "req-2"],
    "protocol": ["kserve_v1", "oip_v2"],
    "violations": [{"missing": 2}, {}, {"missing": 0, "out_of_range": 1}],
}
_STEP = st.one_of(
    *(
        st.tuples(st.just(where), st.sampled_from(sorted(table)), st.integers(0, 3))
        for where, table in (
            ("scope", _CHANGES),
            ("record", _RECORD_CHANGES),
            ("identity", _IDENTITY_CHANGES),
        )
    )
)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.lists(_STEP, min_size=1, max_size=2), min_size=2, max_size=12),
    options=st.sampled_from(
        [
            SpanOptions(capture_payloads=False, max_payload_bytes=0, request_headers=(), response_headers=()),
            OPTIONS,
            SpanOptions(
                capture_payloads=False,
                max_payload_bytes=0,
                request_headers=("x-a", "authorization"),
                response_headers=("Content-Type", "x-model-version"),
            ),
        ]
    ),
)
def test_remembered_shapes_encode_each_span_as_the_sdk_does(
    steps: list[list[tuple[str, str, int]]], options: SpanOptions
) -> None:
    encoder = SpanWireEncoder(options)
    scope = dict(_record().scope)
    record_fields: dict[str, Any] = {}
    identity_fields: dict[str, Any] = {}
    for changes in steps:
        for where, field, index in changes:
            table = {"scope": _CHANGES, "record": _RECORD_CHANGES, "identity": _IDENTITY_CHANGES}[where]
            value = table[field][index % len(table[field])]
            {"scope": scope, "record": record_fields, "identity": identity_fields}[where][field] = value
        record = _record(scope=dict(scope), **record_fields)
        identity = IDENTITY._replace(**identity_fields)
        payload = export_request(RESOURCE, [encoder.encode(record, identity)])
        (wire,) = ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans
        sdk = encode_spans([build_span(record, identity, options, RESOURCE)]).resource_spans[0]
        (expected,) = sdk.scope_spans[0].spans
        assert_same_span(wire, expected)


def test_remembered_shapes_are_bounded_and_long_client_text_is_not_kept() -> None:
    options = SpanOptions(
        capture_payloads=False, max_payload_bytes=0, request_headers=(), response_headers=()
    )
    encoder = SpanWireEncoder(options)
    identity = ExchangeIdentity("/x", "m", "1", None, "json", {})
    for index in range(5000):
        encoder.encode(_record(scope={**_record().scope, "path": f"/p/{index}"}), identity)
        assert len(encoder._shapes) <= 1024
    encoder._shapes.clear()
    long_path = _record(scope={**_record().scope, "path": "/" + "a" * 600})
    span = ExportTraceServiceRequest.FromString(
        export_request(RESOURCE, [encoder.encode(long_path, identity)])
    )
    (wire,) = span.resource_spans[0].scope_spans[0].spans
    assert {kv.key: kv.value.string_value for kv in wire.attributes}["url.path"] == "/" + "a" * 600
    assert not encoder._shapes


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20_000), max_size=6))
def test_a_batch_of_any_span_sizes_decodes_as_one_request(sizes: list[int]) -> None:
    """Spans framed whatever their size (one, two and three bytes of length), in order, under one
    resource and modeltap's scope; an empty batch too."""
    # A Span holding only its name: `name` is field 5 (length-delimited).
    names = [chr(ord("a") + index) * size for index, size in enumerate(sizes)]
    spans = [b"\x2a" + varint(len(name)) + name.encode() for name in names]
    request = ExportTraceServiceRequest.FromString(export_request(RESOURCE, spans))
    (resource_spans,) = request.resource_spans
    assert {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes} == {
        key: str(value) for key, value in RESOURCE.attributes.items()
    }
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "modeltap"
    assert [span.name for span in scope_spans.spans] == names
