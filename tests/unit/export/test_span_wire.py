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

from modeltap.export.span_wire import SpanWireEncoder, any_value, export_request
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
