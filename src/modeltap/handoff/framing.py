"""The wire format between the serving processes and their monitor (a Unix stream socket).

Every message is `[u32 length][u8 type][payload]` (little-endian; `length` counts the type byte
and the payload). A batch of records is one RECORDS message; small messages (hello, counts,
flush, control) carry a JSON object. No pickle: the monitor parses bytes it can bound and check.

A record is the raw tuple the request path built (`modeltap.records.ExchangeRecord` order),
flattened to what the analysis reads: fixed numbers in one struct, clock readings relative to the
exchange's start (the two processes do not share `perf_counter`), the route template already
resolved (a framework's route object does not cross), the headers the analysis and spans use,
and the kept body bytes. The body bytes are not copied on the serving side: `encode` returns
them as separate buffers for `socket.sendmsg`. The compiled capture (`modeltap._speedups`)
writes the same bytes itself, bodies included, when the exchange ends (`compiled_encoder`): the
queue then holds bytes, which pass through here unchanged.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any

import orjson

from modeltap.capture import compiled
from modeltap.capture.routes import RouteTemplates
from modeltap.records import (
    COLD_START_KEY,
    ENCODED_HEAD,
    PROXY_ERROR_KEY,
    ROUTE_TEMPLATE_KEY,
    QueuedRecord,
    RawRecord,
    TimedGroup,
    TraceIds,
)

HELLO, RECORDS, COUNTS, FLUSH, FLUSHED, CONTROL, BYE = 1, 2, 3, 4, 5, 6, 7
FRAME = struct.Struct("<IB")
COUNT = struct.Struct("<I")
# A message larger than this is a broken peer, not a batch (records carry at most 2 x the decode
# cap of body bytes, and a batch is cut well below this).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

# start_unix_ns, response_started, ended, finished, first_body (relative seconds, NaN = none),
# status, request_size, response_size, weight, payload_weight, flags, client_port, server_port
_FIXED = ENCODED_HEAD
_TRACE = struct.Struct("<QQQQ")  # trace id (high, low), span id, parent span id
# Lengths of: method NUL scheme NUL http_version, path, query_string, route template, client host
# NUL server host, exception type, proxy error, trace state, request headers, response headers,
# request body, response body.
_LENGTHS = struct.Struct("<12I")
_TWO_LENGTHS, _THREE_LENGTHS = struct.Struct("<2H"), struct.Struct("<3H")  # of `_joined` fields
_NAN = math.nan

_DISCONNECTED, _TRACED, _REMOTE_PARENT, _SAMPLED, _ENRICHED, _COLD = 1, 2, 4, 8, 16, 32
_NO_PORT = -1


def message(kind: int, payload: bytes) -> bytes:
    return FRAME.pack(len(payload) + 1, kind) + payload


def json_message(kind: int, document: Any) -> bytes:
    return message(kind, orjson.dumps(document))


def _absolute(offset: float) -> float | None:
    return None if offset != offset else offset  # NaN: the reading was never taken


def _headers(headers: Iterable[tuple[bytes, bytes]], wanted: frozenset[bytes]) -> bytes:
    """`name:value` lines. Names are tokens (no colon); a value holding a line break cannot
    come from an HTTP/1.1 parser, and is left out rather than escaped."""
    return b"\n".join(
        [name + b":" + value for name, value in headers if name in wanted and b"\n" not in value]
    )


def _joined(parts: list[bytes]) -> bytes:
    """Several short texts as one field: their u16 lengths, then the texts (each cut at 64 KiB)."""
    parts = [part[:65535] for part in parts]
    return struct.pack(f"<{len(parts)}H", *map(len, parts)) + b"".join(parts)


def _split(blob: bytes, lengths_of: struct.Struct) -> list[bytes]:
    """The texts of a `_joined` field, `lengths_of` the Struct of its u16 lengths."""
    lengths = lengths_of.unpack_from(blob)
    position = lengths_of.size
    if position + sum(lengths) != len(blob):
        raise ValueError("malformed joined field")
    parts = []
    for length in lengths:
        parts.append(blob[position : position + length])
        position += length
    return parts


def _parse_headers(blob: bytes) -> list[tuple[bytes, bytes]]:
    if not blob:
        return []
    headers = [tuple(line.split(b":", 1)) for line in blob.split(b"\n")]
    # Every line the encoder writes has a colon; one without would reach the analysis as a
    # 1-tuple and break it there, far from the cause: the batch is malformed. (Each pair holds
    # one or two parts: two each is the only way to twice as many parts as lines.)
    if sum(map(len, headers)) != 2 * len(headers):
        raise ValueError("a header line without a colon")
    return headers  # type: ignore[return-value]


def _text_of(field: bytes) -> str:
    # The inverse of `RecordEncoder._text`: host names (a Unix socket path is one), exception
    # types and error codes may hold surrogate escapes, which a strict decode refuses.
    return field.decode("utf-8", "surrogateescape")


class RecordEncoder:
    """Serving side: raw records to bytes. One thread uses an instance (the shipper's).

    Example::

        encoder = RecordEncoder(request_headers={b"content-type"}, response_headers={b"content-type"})
        head, bodies = encoder.encode(raw_record)
    """

    def __init__(self, request_headers: Iterable[bytes], response_headers: Iterable[bytes]) -> None:
        self._request_wanted = frozenset(request_headers)
        self._response_wanted = frozenset(response_headers)
        self._routes = RouteTemplates()
        # Methods, schemes, versions and peer addresses repeat: encode each once (bounded).
        self._texts: dict[str, bytes] = {}
        self._protocols: dict[tuple[Any, Any, Any], bytes] = {}
        self._peer_texts: dict[tuple[Any, Any], bytes] = {}

    def _text(self, value: Any) -> bytes:
        texts = self._texts
        encoded = texts.get(value)
        if encoded is None:
            encoded = str(value).encode("utf-8", "surrogateescape")
            if len(texts) < 1024:
                texts[value] = encoded
        return encoded

    def _protocol(self, method: Any, scheme: Any, version: Any) -> bytes:
        """Method, scheme and HTTP version as one field (they repeat: encoded once each)."""
        key = (method, scheme, version)
        encoded = self._protocols.get(key)
        if encoded is None:
            encoded = _joined([self._text(v) for v in key])
            if len(self._protocols) < 256:
                self._protocols[key] = encoded
        return encoded

    def encode(self, raw: RawRecord) -> tuple[bytes, list[bytes]]:
        """The record's bytes: everything but the bodies, then the kept body chunks."""
        out: list[bytes] = []
        self.encode_into(raw, out)
        return out[0], out[1:]

    def encode_batch(self, batch: list[QueuedRecord], out: list[bytes]) -> int:
        """Append a batch's buffers to `out`; returns how many bytes were appended. When the
        compiled capture encoded all of them already, they go as one buffer joined in C: no
        Python step per record, and `sendmsg` takes one buffer instead of hundreds (each taken
        apart and released by the socket module)."""
        try:
            joined = b"".join(batch)  # type: ignore[arg-type]
        except TypeError:  # raw records (the pure-Python capture) among them
            total = 0
            for raw in batch:
                total += self.encode_into(raw, out)
            return total
        out.append(joined)
        return len(joined)

    def encode_into(self, raw: QueuedRecord, out: list[bytes]) -> int:
        """Append the record's buffers to `out` (the kept body chunks as they are, not copied);
        returns how many bytes were appended. The shipper's hot loop: one call per exchange.
        A record the compiled capture already encoded is appended as it is."""
        if isinstance(raw, bytes):
            out.append(raw)
            return len(raw)
        (scope, root_path_at_start, start_ns, started, response_started, ended, finished, status,
         response_headers, request_parts, request_size, response_parts, response_size,
         exception_type, disconnected, trace, weight, payload_weight, first_body) = raw  # fmt: skip
        get = scope.get
        text = self._text
        client = get("client")
        server = get("server")
        flags = _DISCONNECTED if disconnected else 0
        if get(COLD_START_KEY):
            flags |= _COLD
        trace_part = trace_state = b""
        if trace is not None:
            flags |= _TRACED
            if trace.parent_is_remote:
                flags |= _REMOTE_PARENT
            if trace.sampled:
                flags |= _SAMPLED
            if trace.enriched_local_span:
                flags |= _ENRICHED
            trace_part = _TRACE.pack(
                trace.trace_id >> 64, trace.trace_id & 0xFFFFFFFFFFFFFFFF, trace.span_id, trace.parent_span_id
            )
            trace_state = trace.trace_state.encode("latin-1", "replace")
        template = self._routes.of(scope, root_path_at_start)
        proxy_error = get(PROXY_ERROR_KEY)
        protocol = self._protocol(get("method", "GET"), get("scheme", "http"), get("http_version", "1.1"))
        path = get("path", "").encode("utf-8", "surrogateescape")
        query = get("query_string", b"")
        if type(query) is not bytes:
            query = bytes(query)
        route = text(template) if template else b""
        peers = self._peers(client, server)
        failure = text(exception_type) if exception_type else b""
        proxy = text(proxy_error) if proxy_error else b""
        request_headers = _headers(get("headers") or (), self._request_wanted)
        answer_headers = _headers(response_headers, self._response_wanted)
        request_length = response_length = 0
        for part in request_parts:
            request_length += len(part)
        for part in response_parts:
            response_length += len(part)
        head = b"".join(
            (
                _FIXED.pack(
                    start_ns,
                    _NAN if response_started is None else response_started - started,
                    _NAN if ended is None else ended - started,
                    finished - started,
                    _NAN if first_body is None else first_body - started,
                    status,
                    request_size,
                    response_size,
                    weight,
                    payload_weight,
                    flags,
                    client[1] if client and client[1] is not None else _NO_PORT,
                    server[1] if server and server[1] is not None else _NO_PORT,
                ),
                trace_part,
                _LENGTHS.pack(
                    len(protocol),
                    len(path),
                    len(query),
                    len(route),
                    len(peers),
                    len(failure),
                    len(proxy),
                    len(trace_state),
                    len(request_headers),
                    len(answer_headers),
                    request_length,
                    response_length,
                ),
                protocol,
                path,
                query,
                route,
                peers,
                failure,
                proxy,
                trace_state,
                request_headers,
                answer_headers,
            )
        )
        out.append(head)
        out.extend(request_parts)
        out.extend(response_parts)
        return len(head) + request_length + response_length

    def _peers(self, client: Any, server: Any) -> bytes:
        """Client and server host as one field (a host of None is an empty part)."""
        key = (client[0] if client else None, server[0] if server else None)
        encoded = self._peer_texts.get(key)
        if encoded is None:
            encoded = _joined([self._text(v) if v is not None else b"" for v in key])
            if len(self._peer_texts) < 1024:
                self._peer_texts[key] = encoded
        return encoded


def compiled_encoder(request_headers: Iterable[bytes], response_headers: Iterable[bytes]) -> Any:
    """The compiled capture's encoder for these header choices (`RecordEncoder`'s bytes), or
    None where `modeltap._speedups` was not built (or is turned off)."""
    if not compiled.wanted():
        return None
    return compiled._speedups.Encoder(
        frozenset(request_headers),
        frozenset(response_headers),
        RouteTemplates().of,
        "route",
        ROUTE_TEMPLATE_KEY,
        PROXY_ERROR_KEY,
        COLD_START_KEY,
    )


def decode_record(data: bytes) -> RawRecord:
    """One encoded record (as the compiled capture queues it) back to a raw record: what the
    analysis takes when the tap falls back to analysing in its own process."""
    try:
        record, position = _decode_one(data, 0)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed record: {exc}") from None
    if position != len(data):
        raise ValueError("trailing bytes after the record")
    return record


def _batch_bytes(payload: memoryview) -> bytes:
    """The payload as one bytes object: every field is then one slice of it (a memoryview slice
    and its copy to bytes were two steps per field, twelve fields a record). `FrameReader` hands
    out views of whole bytes objects: those are read as they are, anything else is copied once."""
    whole = payload.obj
    return whole if isinstance(whole, bytes) and len(whole) == payload.nbytes else payload.tobytes()


def decode_records(payload: memoryview) -> list[RawRecord]:
    """Monitor side: a RECORDS payload back to raw records (a synthetic scope per record).

    Raises `ValueError` on a malformed payload; the caller drops the connection."""
    data = _batch_bytes(payload)
    if compiled.wanted():  # the same records from compiled code (a third of the monitor's time)
        decoded: list[RawRecord] = compiled._speedups.decode_records(
            data, TraceIds, ROUTE_TEMPLATE_KEY, PROXY_ERROR_KEY, COLD_START_KEY
        )
        return decoded
    try:
        (count,) = COUNT.unpack_from(data, 0)
        position = COUNT.size
        records: list[RawRecord] = []
        for _ in range(count):
            record, position = _decode_one(data, position)
            records.append(record)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed record batch: {exc}") from None
    if position != len(data):
        raise ValueError("trailing bytes after the record batch")
    return records


def decode_grouped(payload: memoryview) -> tuple[list[RawRecord], list[TimedGroup]]:
    """Monitor side: a RECORDS payload back to (records, groups). Records timed and counted only
    (untraced, their payload sampled out: under sustained load nearly all of them) come back one
    per shape, with the durations of all of that shape: `(record, [seconds, ...])`, for
    `BatchPipeline.process_timed`; every other record as `decode_records` gives it. The pure-Python
    form groups nothing (the same statistics, a record at a time).

    Raises `ValueError` on a malformed payload, as `decode_records` does."""
    data = _batch_bytes(payload)
    if compiled.wanted():
        grouped: tuple[list[RawRecord], list[TimedGroup]] = compiled._speedups.decode_grouped(
            data, TraceIds, ROUTE_TEMPLATE_KEY, PROXY_ERROR_KEY, COLD_START_KEY
        )
        return grouped
    return decode_records(memoryview(data)), []


def _decode_one(payload: bytes, position: int) -> tuple[RawRecord, int]:
    fixed = _FIXED.unpack_from(payload, position)
    (start_ns, response_started, ended, finished, first_body, status, request_size, response_size,
     weight, payload_weight, flags, client_port, server_port) = fixed  # fmt: skip
    position += _FIXED.size
    trace = None
    if flags & _TRACED:
        high, low, span_id, parent_span_id = _TRACE.unpack_from(payload, position)
        position += _TRACE.size
        trace = TraceIds(
            (high << 64) | low,
            span_id,
            parent_span_id,
            bool(flags & _REMOTE_PARENT),
            bool(flags & _SAMPLED),
            "",  # filled below
            bool(flags & _ENRICHED),
        )
    lengths = _LENGTHS.unpack_from(payload, position)
    position += _LENGTHS.size
    if position + sum(lengths) > len(payload):
        raise ValueError("field beyond the end of the batch")
    fields: list[bytes] = []
    for length in lengths:
        end = position + length
        fields.append(payload[position:end])
        position = end
    (protocol, path, query, template, peers, exception_type, proxy_error, trace_state,
     request_headers, response_headers, request_body, response_body) = fields  # fmt: skip
    method, scheme, http_version = _split(protocol, _THREE_LENGTHS)
    client_host, server_host = _split(peers, _TWO_LENGTHS)
    if trace is not None:
        trace = trace._replace(trace_state=trace_state.decode("latin-1"))
    scope: dict[str, Any] = {
        "type": "http",
        "method": _text_of(method),
        "scheme": _text_of(scheme),
        "http_version": _text_of(http_version),
        "path": _text_of(path),
        "root_path": "",
        "query_string": query,
        "headers": _parse_headers(request_headers),
        "client": (_text_of(client_host), client_port) if client_host else None,
        "server": (_text_of(server_host), None if server_port == _NO_PORT else server_port)
        if server_host
        else None,
    }
    if template:
        scope[ROUTE_TEMPLATE_KEY] = _text_of(template)
    if proxy_error:
        scope[PROXY_ERROR_KEY] = _text_of(proxy_error)
    if flags & _COLD:
        scope[COLD_START_KEY] = True
    record = (
        scope,
        "",
        start_ns,
        0.0,
        _absolute(response_started),
        _absolute(ended),
        finished,
        status,
        _parse_headers(response_headers),
        [request_body] if request_body else [],
        request_size,
        [response_body] if response_body else [],
        response_size,
        _text_of(exception_type) if exception_type else None,
        bool(flags & _DISCONNECTED),
        trace,
        weight,
        payload_weight,
        _absolute(first_body),
    )
    return record, position


class FrameReader:
    """Splits a byte stream into (type, payload) messages.

    Example::

        reader = FrameReader()
        for kind, payload in reader.feed(chunk):
            ...
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_message_bytes

    def feed(self, data: bytes) -> list[tuple[int, memoryview]]:
        buffer = self._buffer
        buffer += data
        messages: list[tuple[int, memoryview]] = []
        position = 0
        size = FRAME.size
        while len(buffer) - position >= size:
            length, kind = FRAME.unpack_from(buffer, position)
            if length < 1 or length > self._max:
                raise ValueError(f"message length {length} out of bounds")
            end = position + 4 + length
            if end > len(buffer):
                break
            messages.append((kind, memoryview(bytes(buffer[position + size : end]))))
            position = end
        if position:
            del buffer[:position]
        return messages

    @property
    def buffered(self) -> int:
        return len(self._buffer)
