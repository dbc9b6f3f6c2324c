"""The upstream connection's compiled reader of a whole response (`_speedups.parse_response`)
against llhttp's callbacks: whatever the compiled reader accepts must leave the connection in
exactly the state llhttp would have left it in (status, fields, framing, keep-alive, body), and it
must be taken for the usual response of a model server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltap.capture import compiled
from modeltap.guarded.codes import ProxyError
from modeltap.sidecar.upstream import BODY_HIGH_WATER, UpstreamConnection
from tests.support.fake_transport import FakeTransport

pytestmark = pytest.mark.skipif(
    not compiled.wanted(), reason="the extension is not built here, or MODELTAP_PURE_PYTHON turns it off"
)

MAX_HEAD = 1024
UVICORN = (
    b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 14:00:00 GMT\r\nserver: uvicorn\r\n"
    b"content-length: 22\r\ncontent-type: application/json\r\n\r\n" + b'{"predictions": [0.5]}'
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


def connection(loop: asyncio.AbstractEventLoop, *, compiled_reader: bool) -> UpstreamConnection:
    conn = UpstreamConnection(loop, MAX_HEAD)
    conn.connection_made(FakeTransport())
    if not compiled_reader:
        conn._parse_whole = None
    return conn


def outcome(conn: UpstreamConnection) -> dict[str, Any]:
    """Everything the proxy reads of a connection after a response arrived."""
    try:
        body: Any = conn.take_body()
    except ProxyError as failure:
        body = ("error", failure.code)
    error = conn._error
    return {
        "error": error.code if error is not None else None,
        "status": conn.status,
        "headers": conn.headers,
        "hop_by_hop": conn.hop_by_hop,
        "headers_done": conn.headers_done,
        "complete": conn.complete,
        "reusable": conn.reusable,
        "until_eof": conn._until_eof,
        "closed": conn.transport is not None and conn.transport.is_closing(),
        "body": body,
    }


def exchange(conn: UpstreamConnection, response: bytes, *, head: bool = False) -> dict[str, Any]:
    conn.send_request(b"GET / HTTP/1.1\r\nhost: upstream\r\n\r\n", b"", head)
    conn.data_received(response)
    return outcome(conn)


def both(loop: asyncio.AbstractEventLoop, responses: list[bytes]) -> tuple[list[Any], list[Any], list[bool]]:
    """The same responses, one after another on one connection, read each way; and whether the
    compiled reader took each one (llhttp never saw it)."""
    fast, slow = connection(loop, compiled_reader=True), connection(loop, compiled_reader=False)
    fast_results, slow_results, taken = [], [], []
    for response in responses:
        fast_results.append(exchange(fast, response))
        taken.append(fast._header_bytes == 0 and fast.headers_done)
        slow_results.append(exchange(slow, response))
        if not (fast.reusable and fast.complete and slow.reusable and slow.complete):
            break  # the pool would close it: the next request goes on a new connection
        fast.in_exchange = slow.in_exchange = False
    return fast_results, slow_results, taken


def test_the_usual_model_server_response_is_read_without_llhttp(loop: asyncio.AbstractEventLoop) -> None:
    fast, slow, taken = both(loop, [UVICORN, UVICORN, UVICORN])
    assert taken == [True, True, True]
    assert fast == slow
    assert fast[0]["status"] == 200
    assert fast[0]["body"] == b'{"predictions": [0.5]}'
    assert fast[0]["reusable"] is True
    assert fast[0]["headers"][1] == (b"server", b"uvicorn")


@pytest.mark.parametrize(
    "response",
    [
        UVICORN[:-1],  # the body not all there yet
        UVICORN + b"x",  # bytes after the body
        UVICORN.replace(b"HTTP/1.1", b"HTTP/1.0"),
        UVICORN.replace(b"200 OK", b"204 No Content"),
        UVICORN.replace(b"200 OK", b"304 Not Modified"),
        UVICORN.replace(b"200 OK", b"100 Continue"),
        UVICORN.replace(b"content-length: 22", b"transfer-encoding: chunked"),
        UVICORN.replace(b"content-length: 22", b"content-length: 22\r\ncontent-length: 22"),
        UVICORN.replace(b"content-length: 22", b"content-length: +22"),
        UVICORN.replace(b"content-length: 22\r\n", b""),  # read until the connection closes
        UVICORN.replace(b"server: uvicorn", b"server: uvicorn "),  # trailing whitespace
        UVICORN.replace(b"server: uvicorn", b"server : uvicorn"),
        UVICORN.replace(b"server: uvicorn", b"ser ver: uvicorn"),
        UVICORN.replace(b"server: uvicorn", b"server: uvi\x01corn"),
        UVICORN.replace(b"\r\nserver", b"\r\n server"),  # obs-fold
        UVICORN.replace(b"\r\n", b"\n"),
        UVICORN.replace(b"200 OK", b"200 O\x7fK"),
        UVICORN.replace(b"date: ", b"date: " + b"d" * MAX_HEAD),  # over the header limit
    ],
)
def test_other_shapes_are_left_to_llhttp(loop: asyncio.AbstractEventLoop, response: bytes) -> None:
    assert compiled._speedups.parse_response(response, MAX_HEAD, BODY_HIGH_WATER) is None
    fast, slow, _ = both(loop, [response])
    assert fast == slow


def test_a_head_request_never_takes_the_compiled_reader(loop: asyncio.AbstractEventLoop) -> None:
    fast, slow = connection(loop, compiled_reader=True), connection(loop, compiled_reader=False)
    assert exchange(fast, UVICORN, head=True) == exchange(slow, UVICORN, head=True)
    assert fast._header_bytes > 0


def test_connection_close_and_errors_are_read_as_llhttp_reads_them(loop: asyncio.AbstractEventLoop) -> None:
    close = UVICORN.replace(b"server: uvicorn", b"Connection: keep-alive , CLOSE")
    error = UVICORN.replace(b"200 OK", b"503 Service Unavailable")
    fast, slow, taken = both(loop, [close])
    assert taken == [True]
    assert fast == slow
    assert fast[0]["reusable"] is False
    assert fast[0]["hop_by_hop"] is True
    fast, slow, taken = both(loop, [error])
    assert taken == [True]
    assert fast == slow
    assert fast[0]["reusable"] is False  # a 5xx is never pooled


_TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~", min_size=1
)
_NAMES = st.one_of(
    st.sampled_from(
        [b"content-length", b"Content-Length", b"transfer-encoding", b"connection", b"Connection",
         b"keep-alive", b"upgrade", b"te", b"trailer", b"proxy-authenticate", b"date", b"server",
         b"content-type", b"x-request-id", b"bad name", b"a:b", b"", b"\xff"]
    ),
    _TOKEN.map(str.encode),
)  # fmt: skip
_VALUES = st.one_of(
    st.sampled_from(
        [b"", b"close", b"keep-alive", b"Keep-Alive, Close", b"x,close ,y", b"closed", b"chunked",
         b"application/json", b"a\tb", b"trailing ", b"\x80\xff obs-text", b"ctl\x01", b"del\x7f", b"12"]
    ),
    st.binary(min_size=1, max_size=12).map(lambda raw: bytes(0x21 + b % 0x5E for b in raw)),  # visible
    st.binary(max_size=12),
)  # fmt: skip


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """Mostly well-formed responses a model server could send, with one thing off now and then."""
    version = draw(
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"http/1.1"])
    )
    status = draw(st.one_of(st.sampled_from([200, 201, 400, 404, 422, 500, 503]), st.integers(0, 999)))
    reason = draw(st.sampled_from([b" OK", b"", b" ", b" Not Found", b" caf\xe9", b" bad\x00"]))
    body = draw(st.binary(max_size=64))
    fields = draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=6))
    length = draw(st.sampled_from(["right"] * 8 + ["none", "twice", "short", "long", "text"]))
    framing = {
        "right": [(b"content-length", b"%d" % len(body))],
        "none": [],
        "twice": [(b"content-length", b"%d" % len(body))] * 2,
        "short": [(b"content-length", b"%d" % max(0, len(body) - 1))],
        "long": [(b"content-length", b"%d" % (len(body) + 1))],
        "text": [(b"content-length", b" %d" % len(body))],
    }[length]
    at = draw(st.integers(0, len(fields)))
    fields = fields[:at] + framing + fields[at:]
    newline = draw(st.sampled_from([b"\r\n"] * 9 + [b"\n"]))
    head = b"%s %03d%s%s" % (version, status % 1000, reason, newline)
    head += b"".join(name + b": " + value + newline for name, value in fields) + newline
    tail = draw(st.sampled_from([b""] * 9 + [b"HTTP/1.1 200 OK\r\n", b"x"]))
    return head + body + tail


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """The usual response with a few bytes changed, inserted or removed: the reader's deep paths."""
    data = bytearray(UVICORN)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        else:
            del data[at]
    return bytes(data)


# 400 examples, as the compiled-against-Python checks of the request reader and the response
# writer (test_downstream_fast_path) and of the hand-off decoder (test_framing) run.
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(responses(), mangled()), min_size=1, max_size=3))
def test_whatever_the_compiled_reader_accepts_llhttp_reads_the_same(
    loop: asyncio.AbstractEventLoop, batch: list[bytes]
) -> None:
    fast, slow, _ = both(loop, batch)
    assert fast == slow


@pytest.mark.parametrize(
    "response",
    [
        UVICORN.replace(b"server: uvicorn", b"SERVER:uvicorn"),
        UVICORN.replace(b"server: uvicorn", b"x-empty:"),
        UVICORN.replace(b"server: uvicorn", b"x-tab:\t a\tb"),
        UVICORN.replace(b"server: uvicorn", b"x-obs: caf\xe9 \xff"),
        UVICORN.replace(b"server: uvicorn", b"Keep-Alive: timeout=5"),
        UVICORN.replace(b"server: uvicorn", b"connection: closed, x-close"),
        UVICORN.replace(b"200 OK", b"200"),
        UVICORN.replace(b"200 OK", b"201 "),
        UVICORN.replace(b"200 OK", b"422 Unprocessable \xe9ntity"),
        UVICORN.replace(b"content-length: 22", b"Content-Length: 000022"),
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ],
)
def test_usual_variations_are_read_without_llhttp_and_alike(
    loop: asyncio.AbstractEventLoop, response: bytes
) -> None:
    fast, slow, taken = both(loop, [response, UVICORN])
    assert taken == [True, True]
    assert fast == slow


def test_bytes_after_a_whole_response_in_the_same_read_end_the_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """An upstream that sends more than the response (the start of another one, unasked) broke
    framing: llhttp holds those bytes now, and the next response would be read behind them."""
    for compiled_reader in (True, False):
        conn = connection(loop, compiled_reader=compiled_reader)
        result = exchange(conn, UVICORN + b"HTTP/1.1 200 OK\r\n")
        assert result["complete"] is True
        assert result["body"] == b'{"predictions": [0.5]}'
        assert result["reusable"] is False


@settings(max_examples=400, deadline=None)
@given(st.one_of(mangled(), st.binary(max_size=300)), st.integers(0, 400), st.integers(0, 300))
def test_any_bytes_and_limits_give_none_or_a_response_within_them(
    data: bytes, max_head: int, max_body: int
) -> None:
    parsed = compiled._speedups.parse_response(data, max_head, max_body)
    if parsed is not None:
        status, fields, _, _, body = parsed
        assert 200 <= status <= 599
        assert len(body) <= max_body
        assert data.endswith(body)
        assert len(data) - len(body) <= max_head
        assert all(name == name.lower() and value in data for name, value in fields)


@pytest.mark.parametrize("prefix", [b"", UVICORN[:40], UVICORN[:-22]])
def test_every_cut_of_a_response_is_refused(prefix: bytes) -> None:
    for cut in range(len(prefix)):
        assert compiled._speedups.parse_response(prefix[:cut], MAX_HEAD, BODY_HIGH_WATER) is None
