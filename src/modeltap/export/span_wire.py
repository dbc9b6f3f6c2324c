"""Spans straight to OTLP protobuf bytes, without SDK span objects.

Building a `ReadableSpan` and running the SDK's encoder costs about 75 µs per span on the
reference machine, more than the request it describes. Exchange spans have a fixed shape and
most attribute pairs repeat (method, route, model, server address), so they are written here
directly in protobuf wire format, with the encoded attribute fragments memoised. Field numbers
are those of `opentelemetry/proto/trace/v1/trace.proto`; the tests decode the output with the
official generated classes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.sdk.resources import Resource

from modeltap._version import __version__
from modeltap.export.spans import ExchangeIdentity, SpanOptions, span_attributes, span_name, span_status
from modeltap.records import ExchangeRecord

_FIXED64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")
_KIND_INTERNAL = 1
_KIND_SERVER = 2
_STATUS_ERROR = 2
# Span.flags: HAS_IS_REMOTE (bit 8) and IS_REMOTE (bit 9) of the parent, as the SDK writes them.
_FLAGS_LOCAL_PARENT = 0x100
_FLAGS_REMOTE_PARENT = 0x300
# Memoised KeyValue fragments: bounded, cleared when full (values are small and repeat).
_CACHE_LIMIT = 8192
_CACHEABLE_CHARS = 256


def varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def any_value(value: Any) -> bytes:
    """An AnyValue message body."""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, (list, tuple)):
        return _field(b"\x2a", b"".join(_field(b"\x0a", any_value(item)) for item in value))
    return _field(b"\x0a", str(value).encode("utf-8", "replace"))


def key_value(key: str, value: Any) -> bytes:
    """A KeyValue message body."""
    return _field(b"\x0a", key.encode()) + _field(b"\x12", any_value(value))


class SpanWireEncoder:
    """Encodes exchange spans as OTLP `Span` message bodies and wraps batches into requests.

    Example::

        encoder = SpanWireEncoder(options)
        span = encoder.encode(record, identity)
        payload = export_request(resource, [span])  # an ExportTraceServiceRequest
    """

    def __init__(self, options: SpanOptions) -> None:
        self._options = options
        self._attributes: dict[tuple[str, Any], bytes] = {}

    def encode(self, record: ExchangeRecord, identity: ExchangeIdentity) -> bytes:
        ids = record.trace
        assert ids is not None
        attrs = span_attributes(record, identity, self._options)
        start = record.start_unix_ns
        end = start + int(record.duration_s * 1e9)
        parts = [
            b"\x0a\x10" + ids.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + ids.span_id.to_bytes(8, "big"),
        ]
        if ids.trace_state:
            parts.append(_field(b"\x1a", ids.trace_state.encode("latin-1")))
        if ids.parent_span_id:
            parts.append(b"\x22\x08" + ids.parent_span_id.to_bytes(8, "big"))
        parts.append(_field(b"\x2a", span_name(record, identity.route).encode("utf-8", "replace")))
        parts.append(b"\x30" + bytes((_KIND_INTERNAL if ids.enriched_local_span else _KIND_SERVER,)))
        parts.append(b"\x39" + _FIXED64.pack(start))
        parts.append(b"\x41" + _FIXED64.pack(end))
        cache = self._attributes
        for item in attrs.items():
            fragment = cache.get(item)
            if fragment is None:
                fragment = _field(b"\x4a", key_value(*item))
                value = item[1]
                # Floats (timings) and long strings rarely repeat: encode them, do not keep them.
                if not isinstance(value, float) and (
                    not isinstance(value, str) or len(value) <= _CACHEABLE_CHARS
                ):
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[item] = fragment
            parts.append(fragment)
        for reason, count in identity.violations.items():
            if count:
                event = (
                    b"\x09"
                    + _FIXED64.pack(end)
                    + _field(b"\x12", b"modeltap.data_quality.violation")
                    + _field(b"\x1a", key_value("modeltap.violation.reason", reason))
                    + _field(b"\x1a", key_value("count", count))
                )
                parts.append(_field(b"\x5a", event))
        is_error, description = span_status(record)
        if is_error:
            status = (
                (_field(b"\x12", description.encode()) if description else b"")
                + b"\x18"
                + bytes((_STATUS_ERROR,))
            )
            parts.append(_field(b"\x7a", status))
        flags = _FLAGS_REMOTE_PARENT if ids.parent_is_remote else _FLAGS_LOCAL_PARENT
        parts.append(b"\x85\x01" + struct.pack("<I", flags))
        return b"".join(parts)


def export_request(resource: Resource, spans: Iterable[bytes]) -> bytes:
    """An ExportTraceServiceRequest with one ResourceSpans holding the encoded `spans`."""
    scope = _field(b"\x0a", _field(b"\x0a", b"modeltap") + _field(b"\x12", __version__.encode()))
    scope_spans = scope + b"".join(_field(b"\x12", span) for span in spans)
    resource_spans = _field(b"\x0a", resource_message(resource.attributes)) + _field(b"\x12", scope_spans)
    return _field(b"\x0a", resource_spans)


def resource_message(attributes: Mapping[str, Any]) -> bytes:
    return b"".join(_field(b"\x0a", key_value(key, value)) for key, value in attributes.items())
