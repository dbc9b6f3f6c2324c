"""The sidecar against hostile or odd client input (RELIABILITY.md B1-B17, B19, B20).

Every request here is written on a raw socket (httpx refuses to send malformed bytes) to a real
sidecar in front of a real upstream: a recording echo app under uvicorn, or a small raw asyncio
server where the test needs to see the upstream's connection itself (cancellation, scripted
responses). The tests assert what a client and the upstream observe: the status and
`x-modeltap-error` code, that the connection was closed, the sidecar's error counters, and how
many requests the upstream received. A request the sidecar rejects for its framing must never
reach the upstream, whether it arrives all at once or byte by byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import httpx
import pytest

from modeltap.config import ModelTapConfig
from tests.support.echo_upstream import EchoUpstream
from tests.support.polling import wait_until
from tests.support.raw_client import RawClient, RawExchange, exchange
from tests.support.sidecar import RunningSidecar, running_sidecar

HEADER_TIMEOUT_S = 0.3
BODY_TIMEOUT_S = 0.3
MAX_BODY_BYTES = 4096

# ---- B1-B5: framing the sidecar must refuse (also the fuzzer's seed corpus) ---------------------


@dataclass(frozen=True)
class Malformed:
    row: str
    data: bytes
    status: int
    code: str


def _post(headers: bytes, body: bytes) -> bytes:
    return b"POST /v1/models/m:predict HTTP/1.1\r\nHost: model\r\n" + headers + b"\r\n" + body


MALFORMED: dict[str, Malformed] = {
    # B1: both framings; a front end and a back end could disagree on where the request ends.
    "cl_then_te": Malformed(
        "B1",
        _post(
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"
        ),
        400,
        "invalid_request",
    ),
    "te_then_cl": Malformed(
        "B1",
        _post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
        400,
        "invalid_request",
    ),
    # B2: conflicting lengths.
    "two_lengths": Malformed(
        "B2", _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), 400, "invalid_request"
    ),
    "length_list": Malformed("B2", _post(b"Content-Length: 5, 6\r\n", b"hello!"), 400, "invalid_request"),
    "signed_length": Malformed("B2", _post(b"Content-Length: +5\r\n", b"hello"), 400, "invalid_request"),
    # B3: transfer codings the proxy cannot re-frame.
    "te_twice": Malformed(
        "B3",
        _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        501,
        "unsupported_transfer_encoding",
    ),
    "gzip_chunked": Malformed(
        "B3",
        _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
        501,
        "unsupported_transfer_encoding",
    ),
    "gzip_then_chunked_fields": Malformed(
        "B3",
        _post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        501,
        "unsupported_transfer_encoding",
    ),
    "chunked_gzip": Malformed(
        "B3",
        _post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
        501,
        "unsupported_transfer_encoding",
    ),
    "xchunked": Malformed(
        "B3", _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 501, "unsupported_transfer_encoding"
    ),
    # B4: chunked bodies that parsers have disagreed on (CVE-2025-43859, CVE-2025-22871, ...).
    "chunk_data_garbage": Malformed(
        "B4",
        _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"),
        400,
        "invalid_request",
    ),
    "chunk_smuggle": Malformed(
        "B4",
        _post(
            b"Transfer-Encoding: chunked\r\n",
            b"2\r\nabXXGET /smuggled HTTP/1.1\r\nHost: model\r\n\r\n0\r\n\r\n",
        ),
        400,
        "invalid_request",
    ),
    "chunk_size_bare_lf": Malformed(
        "B4", _post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n"), 400, "invalid_request"
    ),
    "chunk_ext_lone_lf": Malformed(
        "B4",
        _post(b"Transfer-Encoding: chunked\r\n", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
        400,
        "invalid_request",
    ),
    # B5: header syntax that lets two parsers read different fields.
    "obs_fold": Malformed(
        "B5", b"GET /x HTTP/1.1\r\nHost: model\r\nX-A: b\r\n c\r\n\r\n", 400, "invalid_request"
    ),
    "space_before_colon": Malformed(
        "B5", b"GET /x HTTP/1.1\r\nHost: model\r\nX-A : b\r\n\r\n", 400, "invalid_request"
    ),
    "te_nbsp": Malformed(
        "B5",
        _post(b"Transfer-Encoding\xa0: chunked\r\nContent-Length: 5\r\n", b"hello"),
        400,
        "invalid_request",
    ),
    "nul_in_value": Malformed(
        "B5", b"GET /x HTTP/1.1\r\nHost: model\r\nX-A: b\x00c\r\n\r\n", 400, "invalid_request"
    ),
    "bare_cr_in_value": Malformed(
        "B5", b"GET /x HTTP/1.1\r\nHost: model\r\nX-A: b\rc\r\n\r\n", 400, "invalid_request"
    ),
    "bare_lf_lines": Malformed("B5", b"GET /x HTTP/1.1\nHost: model\n\n", 400, "invalid_request"),
    # RFC 9112 3.2: exactly one Host on HTTP/1.1 (the last one used to win and be forwarded).
    "two_hosts": Malformed(
        "B7", b"GET /x HTTP/1.1\r\nHost: model\r\nHost: evil.example\r\n\r\n", 400, "invalid_request"
    ),
    "two_equal_hosts": Malformed(
        "B7", _post(b"Host: model\r\nContent-Length: 2\r\n", b"{}"), 400, "invalid_request"
    ),
    "no_host": Malformed("B7", b"GET /x HTTP/1.1\r\nX-A: b\r\n\r\n", 400, "invalid_request"),
    "no_host_post": Malformed(
        "B7", b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400, "invalid_request"
    ),
    "two_hosts_http10": Malformed(
        "B7", b"GET /x HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400, "invalid_request"
    ),
}

VALID_POST = _post(
    b"Content-Type: application/json\r\nContent-Length: 27\r\n", b'{"instances": [[1.0, 2.0]]}'
)


# ---- fixtures and helpers -------------------------------------------------------------------


@dataclass
class Stack:
    echo: EchoUpstream
    sidecar: RunningSidecar

    @property
    def port(self) -> int:
        return self.sidecar.port


@contextlib.contextmanager
def _stack(**settings: Any) -> Iterator[Stack]:
    echo = EchoUpstream()
    with echo.serving() as upstream, running_sidecar(upstream, **settings) as sidecar:
        yield Stack(echo, sidecar)


def _fresh(stack: Stack) -> Stack:
    assert wait_until(lambda: stack.sidecar.sidecar.proxy.inflight == 0, timeout_s=3.0), (
        "a request is still in flight"
    )
    stack.echo.reset()
    return stack


@pytest.fixture(scope="module")
def module_stack() -> Iterator[Stack]:
    # Default client timeouts: byte-by-byte delivery on a busy machine must not meet them.
    with _stack(max_request_body_bytes=MAX_BODY_BYTES) as stack:
        yield stack


@pytest.fixture
def stack(module_stack: Stack) -> Stack:
    """The module's sidecar and echo upstream, with the upstream's record emptied."""
    return _fresh(module_stack)


@pytest.fixture(scope="module")
def module_timeout_stack() -> Iterator[Stack]:
    with _stack(header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S) as stack:
        yield stack


@pytest.fixture
def timeout_stack(module_timeout_stack: Stack) -> Stack:
    """A sidecar with 300 ms header and body timeouts (B13, B14)."""
    return _fresh(module_timeout_stack)


@pytest.fixture
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails the test if anything (the sidecar, uvicorn) logged at ERROR meanwhile."""
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


class ErrorCounts:
    """The sidecar's `modeltap.proxy.errors` increments since construction."""

    def __init__(self, sidecar: RunningSidecar) -> None:
        self._sidecar = sidecar
        self._before = sidecar.proxy_errors()

    def new(self) -> dict[str, int]:
        after = self._sidecar.proxy_errors()
        return {k: v - self._before.get(k, 0) for k, v in after.items() if v != self._before.get(k, 0)}

    def wait_for(self, expected: dict[str, int], timeout_s: float = 3.0) -> dict[str, int]:
        wait_until(lambda: self.new() == expected, timeout_s)
        return self.new()


def assert_rejected(answer: RawExchange, status: int, code: str) -> None:
    response = answer.response
    assert (response.status, response.error_code) == (status, code), answer.summary()
    assert response.header("connection") == b"close"
    assert answer.closed, "the sidecar must close the connection after refusing a request"


def echo_json(answer: RawExchange) -> dict[str, Any]:
    response = answer.response
    assert response.status == 200, answer.summary()
    assert response.header("x-echo") == b"1"
    document = json.loads(response.body)
    assert isinstance(document, dict)
    return document


def get(path: str = "/x", headers: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: model\r\n" + headers + b"\r\n"


# ---- B1-B5 ----------------------------------------------------------------------------------


def recorded_exchanges(sidecar: RunningSidecar) -> tuple[int, int]:
    """(exchanges, failed exchanges) the sidecar's capture has recorded so far."""
    sidecar.sidecar.tap.flush()
    requests = httpx.get(f"{sidecar.admin_url}/status").json()["requests"]
    return int(requests["total"]), int(requests["errors"])


class _HeadEvents:
    def __init__(self) -> None:
        self.headers_complete = 0

    def on_headers_complete(self) -> None:
        self.headers_complete += 1


@pytest.mark.parametrize(
    ("name", "llhttp_raises", "head_completes"),
    [
        ("cl_then_te", True, False),
        ("te_then_cl", True, False),
        ("two_lengths", True, False),
        ("length_list", True, False),
        ("te_twice", True, False),
        ("xchunked", True, True),
        ("gzip_chunked", False, True),
        ("gzip_then_chunked_fields", False, True),
    ],
)
def test_where_llhttp_refuses_a_head(name: str, llhttp_raises: bool, head_completes: bool) -> None:
    """B1-B3: for both framings and conflicting lengths llhttp raises while the fields are
    parsed, before `on_headers_complete` (where uvicorn starts the app task), byte by byte or
    not, so no request ever exists. Transfer codings other than plain `chunked` are different:
    llhttp completes the head first (and accepts `gzip, chunked` outright), so the sidecar
    refuses them itself in `on_headers_complete`, before the request is created; the end-to-end
    tests below check that the upstream gets nothing either way."""
    events = _HeadEvents()
    parser = httptools.HttpRequestParser(events)
    data = MALFORMED[name].data
    raised = False
    try:
        for i in range(len(data)):
            parser.feed_data(data[i : i + 1])
    except httptools.HttpParserError:
        raised = True
    assert raised == llhttp_raises
    assert events.headers_complete == int(head_completes)


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_framing_is_refused_and_never_forwarded(stack: Stack, name: str) -> None:
    """B1-B5, all at once: the status and code, a closed connection, one count, no upstream
    request. A bad head is refused before the proxy app starts (no exchange is recorded); a bad
    chunked body is found after it started, and its exchange is recorded as failed."""
    case = MALFORMED[name]
    exchanges, failed = recorded_exchanges(stack.sidecar)
    errors = ErrorCounts(stack.sidecar)
    answer = exchange(stack.port, case.data, wait_close_s=2.0)
    assert_rejected(answer, case.status, case.code)
    assert errors.new() == {case.code: 1}
    time.sleep(0.05)  # anything forwarded would have reached the echo app by now
    assert stack.echo.count == 0
    assert stack.sidecar.sidecar.pool.active == 0
    started = 1 if case.row == "B4" else 0
    assert recorded_exchanges(stack.sidecar) == (exchanges + started, failed + started)


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_framing_byte_by_byte_is_refused_the_same_way(stack: Stack, name: str) -> None:
    """B1-B5 delivered one byte per write (B19 for bad input): the same answer. Framing errors in
    the head are caught before the request exists, so the upstream gets nothing; a chunked body
    that goes bad after its first bytes may already be streaming upstream, and that upstream
    request is then aborted: never completed, never a second (smuggled) request."""
    case = MALFORMED[name]
    errors = ErrorCounts(stack.sidecar)
    with RawClient(stack.port) as client:
        client.send_bytewise(case.data)
        answer = client.read(responses=1, timeout_s=3.0)
        client.wait_closed(2.0)
        answer = client.exchange()
    assert_rejected(answer, case.status, case.code)
    assert errors.wait_for({case.code: 1}) == {case.code: 1}
    time.sleep(0.05)
    records = stack.echo.records
    if case.row == "B4":
        assert len(records) <= 1
        assert not any(r.completed for r in records)
        assert all(r.path == "/v1/models/m:predict" for r in records)
    else:
        assert records == []


# ---- B6 -------------------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(stack: Stack) -> None:
    """B6: three requests in one write (one with a body) get three responses, in order."""
    body = b'{"instances": [[3.0]]}'
    data = (
        get("/first")
        + _post(b"Content-Length: %d\r\n" % len(body), body).replace(b"/v1/models/m:predict", b"/second")
        + get("/third")
    )
    with RawClient(stack.port) as client:
        client.send(data)
        answer = client.read(responses=3)
    assert answer.statuses == [200, 200, 200], answer.summary()
    paths = [json.loads(r.body)["path"] for r in answer.responses]
    assert paths == ["/first", "/second", "/third"]
    assert json.loads(answer.responses[1].body)["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert [r.path for r in stack.echo.records] == ["/first", "/second", "/third"]


@pytest.mark.parametrize(
    "second",
    [
        MALFORMED["cl_then_te"].data,  # refused while its head is parsed
        MALFORMED["chunk_data_garbage"].data,  # refused in its body, queued behind the first
        b"GET /\nTransfer-Encoding:chunked\r\n\r\n\x00",  # the same, as the fuzzer found it
        # Refused once its head is complete (by the sidecar, not llhttp).
        MALFORMED["two_hosts"].data,
        b"CONNECT model:443 HTTP/1.1\r\nHost: model:443\r\n\r\n",
    ],
    ids=["bad_head", "bad_body", "fuzz_found", "two_hosts", "connect"],
)
@pytest.mark.usefixtures("no_error_logs")
def test_a_bad_request_pipelined_behind_a_good_one_never_takes_its_answer(
    stack: Stack, second: bytes
) -> None:
    """B6: a refused request queued behind one not yet answered must not be answered first (the
    client would read the 400 as the answer to its first request): the connection is closed;
    the first request is then not forwarded, or its answer is delivered. One count, nothing
    logged at ERROR (uvloop raises if an earlier response is written to the closed transport)."""
    errors = ErrorCounts(stack.sidecar)
    answer = exchange(stack.port, b"POST /first HTTP/1.1\r\nHost: model\r\n\r\n" + second, responses=None)
    assert answer.closed
    assert [r.error_code for r in answer.responses] in ([], [None]), answer.summary()
    assert wait_until(lambda: stack.sidecar.sidecar.proxy.inflight == 0, timeout_s=3.0)
    assert stack.echo.count == len(answer.responses)
    assert len(errors.new()) == 1
    assert set(errors.new().values()) == {1}


# ---- B7 -------------------------------------------------------------------------------------


@pytest.fixture
def evil() -> Iterator[tuple[EchoUpstream, int]]:
    """A second upstream on another port: a request that reaches it went where a client said."""
    upstream = EchoUpstream()
    with upstream.serving() as url:
        yield upstream, int(url.rsplit(":", 1)[1])


def test_request_targets_never_choose_the_upstream(stack: Stack, evil: tuple[EchoUpstream, int]) -> None:
    """B7: absolute-form targets, paths that look like URLs and a foreign Host all go to the
    configured upstream (absolute-form: the authority is ignored, the path kept), never to the
    host they name."""
    evil_echo, evil_port = evil
    evil_host = b"127.0.0.1:%d" % evil_port
    cases: list[tuple[bytes, str, str]] = [
        # (request, raw path the configured upstream must see, raw query)
        (b"GET http://" + evil_host + b"/x?q=1 HTTP/1.1\r\nHost: " + evil_host + b"\r\n\r\n", "/x", "q=1"),
        (
            b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: model\r\n\r\n",
            "/latest/meta-data/",
            "",
        ),
        (get("/http://" + evil_host.decode() + "/"), "/http://" + evil_host.decode() + "/", ""),
        (get("//" + evil_host.decode() + "/x"), "//" + evil_host.decode() + "/x", ""),
        (b"GET /x HTTP/1.1\r\nHost: " + evil_host + b"\r\n\r\n", "/x", ""),
    ]
    for data, raw_path, query in cases:
        stack.echo.reset()
        document = echo_json(exchange(stack.port, data))
        assert (document["raw_path"], document["query"]) == (raw_path, query), data
        assert stack.echo.count == 1
    # An absolute-form target without a path is not a request the proxy can forward.
    errors = ErrorCounts(stack.sidecar)
    stack.echo.reset()
    answer = exchange(
        stack.port, b"GET http://" + evil_host + b" HTTP/1.1\r\nHost: model\r\n\r\n", wait_close_s=2
    )
    assert_rejected(answer, 400, "invalid_request")
    assert errors.new() == {"invalid_request": 1}
    time.sleep(0.05)
    assert stack.echo.count == 0
    assert evil_echo.count == 0


def test_host_rules_say_why_and_http10_may_omit_it(stack: Stack) -> None:
    """RFC 9112 3.2: the 400 for a missing or repeated Host says what is wrong; HTTP/1.0 without
    Host is valid and reaches the upstream with the upstream's own authority."""
    answer = exchange(stack.port, MALFORMED["two_hosts"].data, wait_close_s=2)
    assert_rejected(answer, 400, "invalid_request")
    assert b"Host" in answer.response.body
    errors = ErrorCounts(stack.sidecar)
    document = echo_json(exchange(stack.port, b"GET /old HTTP/1.0\r\n\r\n", wait_close_s=2))
    hosts = [value for name, value in document["headers"] if name == "host"]
    upstream_authority = stack.sidecar.sidecar.settings.upstream.removeprefix("http://")
    assert (document["raw_path"], hosts) == ("/old", [upstream_authority])
    assert stack.echo.count == 1
    assert errors.new() == {}


# ---- B8 -------------------------------------------------------------------------------------

UPGRADES = {
    "connect": (b"CONNECT model:443 HTTP/1.1\r\nHost: model:443\r\n\r\n", 405, "method_not_allowed"),
    "websocket": (
        get(
            "/ws",
            b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
        501,
        "upgrade_not_supported",
    ),
    "h2c": (
        get(
            "/x",
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
        501,
        "upgrade_not_supported",
    ),
    "h2c_post": (
        _post(b"Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n", b"hello"),
        501,
        "upgrade_not_supported",
    ),
}


@pytest.mark.parametrize("name", list(UPGRADES))
def test_connect_and_upgrades_are_refused(stack: Stack, name: str) -> None:
    """B8: CONNECT answers 405, an upgrade request 501; never a half-upgraded connection (the
    connection is closed) and nothing reaches the upstream."""
    data, status, code = UPGRADES[name]
    errors = ErrorCounts(stack.sidecar)
    answer = exchange(stack.port, data, wait_close_s=2.0)
    assert_rejected(answer, status, code)
    assert answer.interim == []  # no 101 Switching Protocols
    assert errors.new() == {code: 1}
    time.sleep(0.05)
    assert stack.echo.count == 0


def test_upgrade_header_without_connection_upgrade_is_stripped(stack: Stack) -> None:
    """B8: `Upgrade` alone is not an upgrade request; it is hop-by-hop, so it is not forwarded."""
    document = echo_json(exchange(stack.port, get("/x", b"Upgrade: websocket\r\n")))
    names = {name for name, _value in document["headers"]}
    assert "upgrade" not in names


# ---- B9, B10, B11 ---------------------------------------------------------------------------


def test_hop_by_hop_fields_are_not_forwarded_in_either_direction(stack: Stack) -> None:
    """B9: request and response lose `Connection`, everything it names, and the fixed hop-by-hop
    fields; end-to-end fields pass."""
    request = get(
        "/x",
        b"Connection: keep-alive, X-Foo\r\nX-Foo: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\n"
        b"X-Kept: yes\r\n"
        # what the echo app should answer with:
        b"X-Echo-Response-Header: Connection: x-bar\r\nX-Echo-Response-Header: X-Bar: 1\r\n"
        b"X-Echo-Response-Header: Keep-Alive: timeout=9\r\n"
        b"X-Echo-Response-Header: Proxy-Authenticate: Basic\r\n"
        b"X-Echo-Response-Header: Proxy-Connection: keep-alive\r\nX-Echo-Response-Header: Trailer: X-T\r\n"
        b"X-Echo-Response-Header: X-Kept-Response: yes\r\n",
    )
    answer = exchange(stack.port, request)
    document = echo_json(answer)
    upstream_names = {name for name, _value in document["headers"]}
    hop = {"connection", "x-foo", "keep-alive", "te", "proxy-authorization", "proxy-connection", "trailer"}
    assert upstream_names & hop == set()
    assert "x-kept" in upstream_names
    response = answer.response
    client_names = {name for name, _value in response.headers}
    assert (
        client_names & {b"x-bar", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"trailer"}
        == set()
    )
    assert response.header_values("connection") in ([], [b"keep-alive"])
    assert response.header("x-kept-response") == b"yes"


def test_connection_naming_x_forwarded_for_does_not_remove_the_sidecars_own(stack: Stack) -> None:
    """B10: strip, then add: a client listing X-Forwarded-For in Connection loses its own value,
    but the sidecar's X-Forwarded-For (the real peer) is still there, exactly once."""
    request = get("/x", b"Connection: X-Forwarded-For\r\nX-Forwarded-For: 1.2.3.4\r\n")
    document = echo_json(exchange(stack.port, request, bind_host="127.0.0.2"))
    forwarded = [value for name, value in document["headers"] if name == "x-forwarded-for"]
    assert forwarded == ["127.0.0.2"]
    assert document["client"] == ["127.0.0.2", 0]


SPOOFED = b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n"


def _forwarding(document: dict[str, Any]) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for name, value in document["headers"]:
        if name.startswith("x-forwarded-"):
            fields.setdefault(name, []).append(value)
    return fields


def test_spoofed_forwarding_fields_from_an_untrusted_peer(stack: Stack) -> None:
    """B11: X-Forwarded-For is appended (the client's value, then the real peer); Proto and Host
    are overwritten; uvicorn upstream trusting only the sidecar (127.0.0.1) sees the real peer."""
    document = echo_json(exchange(stack.port, get("/x", SPOOFED), bind_host="127.0.0.2"))
    assert _forwarding(document) == {
        "x-forwarded-for": ["1.2.3.4, 127.0.0.2"],
        "x-forwarded-proto": ["http"],
        "x-forwarded-host": ["model"],
    }
    assert document["client"] == ["127.0.0.2", 0]
    assert document["scheme"] == "http"


def test_forwarding_fields_from_a_trusted_proxy_are_kept() -> None:
    """B11: a peer inside `trusted_proxies` is another proxy: its Proto and Host stand; the For
    chain is still appended."""
    echo = EchoUpstream()
    with echo.serving() as upstream, running_sidecar(upstream, trusted_proxies=("127.0.0.0/8",)) as sidecar:
        document = echo_json(exchange(sidecar.port, get("/x", SPOOFED), bind_host="127.0.0.2"))
    assert _forwarding(document) == {
        "x-forwarded-for": ["1.2.3.4, 127.0.0.2"],
        "x-forwarded-proto": ["https"],
        "x-forwarded-host": ["evil.example"],
    }
    # uvicorn trusts only the sidecar, so the client it reports is the first untrusted hop.
    assert document["client"] == ["127.0.0.2", 0]
    assert document["scheme"] == "https"


# ---- B12 ------------------------------------------------------------------------------------

OVERSIZE = {
    "request_line_20k": (
        b"GET /" + b"a" * 20 * 1024 + b" HTTP/1.1\r\nHost: model\r\n\r\n",
        414,
        "uri_too_long",
    ),
    "headers_200": (
        get("/x", b"".join(b"X-H%d: v\r\n" % i for i in range(200))),
        431,
        "request_headers_too_large",
    ),
    "header_40k": (get("/x", b"X-Big: " + b"v" * 40 * 1024 + b"\r\n"), 431, "request_headers_too_large"),
}


@pytest.mark.parametrize("name", list(OVERSIZE))
def test_oversized_heads_are_refused(stack: Stack, name: str) -> None:
    """B12: a 20 KiB request line is 414, 200 fields or one 40 KiB field 431; nothing forwarded."""
    data, status, code = OVERSIZE[name]
    errors = ErrorCounts(stack.sidecar)
    answer = exchange(stack.port, data, wait_close_s=2.0)
    assert_rejected(answer, status, code)
    assert errors.new() == {code: 1}
    time.sleep(0.05)
    assert stack.echo.count == 0


# ---- B13 ------------------------------------------------------------------------------------


@dataclass
class SlowOutcome:
    started: float
    closed: float = 0.0
    answer: bytes = b""


async def _slowloris(port: int, count: int, drip_interval_s: float) -> tuple[list[SlowOutcome], float, bytes]:
    loop = asyncio.get_running_loop()

    async def one(started: float, sock: socket.socket) -> SlowOutcome:
        reader, writer = await asyncio.open_connection(sock=sock)
        outcome = SlowOutcome(started=started)
        received = bytearray()

        async def read_all() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    received.extend(chunk)

        reading = asyncio.ensure_future(read_all())
        for byte in b"X-Drip: " + b"a" * 1000:
            done, _ = await asyncio.wait({reading}, timeout=drip_interval_s)
            if done:
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
        await asyncio.wait_for(reading, 5.0)
        outcome.closed = loop.time()
        outcome.answer = bytes(received)
        writer.close()
        return outcome

    # Connected and started synchronously, so each request has begun when the sidecar accepts
    # it, however busy this loop is later (a connection that sends nothing is closed silently).
    opened: list[tuple[float, socket.socket]] = []
    for _ in range(count):
        started = loop.time()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /slow HTTP/1.1\r\n")
        opened.append((started, sock))
    slow = [asyncio.ensure_future(one(started, sock)) for started, sock in opened]
    await asyncio.sleep(0.02)  # let them start dripping

    def normal_request() -> tuple[float, bytes]:
        answer = exchange(port, get("/normal"), timeout_s=5.0)
        return loop.time(), answer.raw

    normal_done, normal_raw = await asyncio.to_thread(normal_request)
    outcomes = await asyncio.gather(*slow)
    return outcomes, normal_done, normal_raw


def test_slowloris_connections_are_cut_at_the_header_timeout(timeout_stack: Stack) -> None:
    """B13: 200 connections dripping a header byte every 50 ms each get 408 and a close at about
    `header_timeout_s`, and a normal request made meanwhile is answered before they are cut."""
    errors = ErrorCounts(timeout_stack.sidecar)
    outcomes, normal_done, normal_raw = asyncio.run(_slowloris(timeout_stack.port, 200, 0.05))
    assert normal_raw.startswith(b"HTTP/1.1 200 "), normal_raw[:200]
    assert [r.path for r in timeout_stack.echo.records] == ["/normal"]
    for outcome in outcomes:
        assert outcome.answer.startswith(b"HTTP/1.1 408 "), outcome.answer[:200]
        assert b"x-modeltap-error: request_header_timeout\r\n" in outcome.answer
        elapsed = outcome.closed - outcome.started
        assert HEADER_TIMEOUT_S - 0.01 <= elapsed <= HEADER_TIMEOUT_S + 1.5, elapsed
    assert normal_done < min(o.closed for o in outcomes)
    assert errors.new() == {"request_header_timeout": 200}


# ---- B14 ------------------------------------------------------------------------------------


def test_slow_body_gets_408_and_the_upstream_request_is_aborted(timeout_stack: Stack) -> None:
    """B14: headers at once, 10 of 1000 body bytes, then silence: 408 at about `body_timeout_s`
    after the last byte, the connection closed; the upstream request already under way is
    aborted (the echo app sees its client disconnect and never completes it)."""
    errors = ErrorCounts(timeout_stack.sidecar)
    with RawClient(timeout_stack.port) as client:
        sent = time.monotonic()  # before the sidecar can have seen the bytes
        client.send(_post(b"Content-Length: 1000\r\n", b"0123456789"))
        answer = client.read(responses=1, timeout_s=5.0)
        client.wait_closed(2.0)
        answered = client.closed_at or time.monotonic()
        answer = client.exchange()
    assert_rejected(answer, 408, "request_body_timeout")
    assert BODY_TIMEOUT_S - 0.01 <= answered - sent <= BODY_TIMEOUT_S + 1.5
    assert timeout_stack.echo.wait_for(lambda records: len(records) == 1 and records[0].disconnected)
    assert not timeout_stack.echo.records[0].completed
    assert errors.wait_for({"request_body_timeout": 1}) == {"request_body_timeout": 1}
    assert wait_until(lambda: timeout_stack.sidecar.sidecar.pool.active == 0)


def test_a_body_trickling_within_the_idle_timeout_is_not_cut(timeout_stack: Stack) -> None:
    """B14: the body timeout is an idle timeout, not a total one: a byte every 100 ms (under the
    300 ms bound) for longer than 300 ms in all still gets through."""
    body = b"0123456"
    with RawClient(timeout_stack.port) as client:
        client.send(_post(b"Content-Length: %d\r\n" % len(body), b""))
        client.send_slowly(body, delay_s=BODY_TIMEOUT_S / 3)
        document = echo_json(client.read(responses=1))
    assert document["body_sha256"] == hashlib.sha256(body).hexdigest()


# ---- B15, B16 -------------------------------------------------------------------------------


@pytest.mark.parametrize("expect_continue", [False, True])
def test_declared_body_over_the_limit_is_refused_before_the_upstream(
    stack: Stack, expect_continue: bool
) -> None:
    """B15: Content-Length above `max_request_body_bytes` answers 413 before any upstream
    connection is used; with `Expect: 100-continue` no `100 Continue` is sent first."""
    opened = stack.sidecar.sidecar.pool.opened
    errors = ErrorCounts(stack.sidecar)
    expect = b"Expect: 100-continue\r\n" if expect_continue else b""
    answer = exchange(stack.port, _post(b"Content-Length: 10485760\r\n" + expect, b""), wait_close_s=2.0)
    assert_rejected(answer, 413, "request_body_too_large")
    assert answer.interim == []
    assert b"100 Continue" not in answer.raw
    assert errors.new() == {"request_body_too_large": 1}
    assert stack.echo.count == 0
    assert stack.sidecar.sidecar.pool.opened == opened


def test_chunked_body_over_the_limit_in_one_piece_is_refused(stack: Stack) -> None:
    """B16: a chunked body already over the limit when first read: 413, nothing forwarded."""
    chunk = b"a" * (MAX_BODY_BYTES + 1)
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
    errors = ErrorCounts(stack.sidecar)
    answer = exchange(stack.port, _post(b"Transfer-Encoding: chunked\r\n", body), wait_close_s=2.0)
    assert_rejected(answer, 413, "request_body_too_large")
    assert errors.new() == {"request_body_too_large": 1}
    time.sleep(0.05)
    assert stack.echo.count == 0


def test_chunked_body_crossing_the_limit_while_streaming_aborts_the_upstream_request(stack: Stack) -> None:
    """B16: the first chunk is under the limit and is already streaming upstream when the second
    crosses it: the client gets 413 and the upstream's half request is cut off (its connection
    closed: the echo app sees a disconnect, never a complete request)."""
    half = b"b" * (MAX_BODY_BYTES * 3 // 4)
    errors = ErrorCounts(stack.sidecar)
    with RawClient(stack.port) as client:
        client.send(_post(b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n" % (len(half), half)))
        assert stack.echo.wait_for(lambda records: len(records) == 1), "the first chunk was not streamed"
        client.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(half), half))
        answer = client.read(responses=1)
        client.wait_closed(2.0)
        answer = client.exchange()
    assert_rejected(answer, 413, "request_body_too_large")
    assert errors.new() == {"request_body_too_large": 1}
    assert stack.echo.wait_for(lambda records: records[0].disconnected)
    assert not stack.echo.records[0].completed
    assert wait_until(lambda: stack.sidecar.sidecar.pool.active == 0, timeout_s=3.0)


# ---- B17: a raw upstream that shows its own connection ---------------------------------------


@dataclass
class UpstreamConnectionLog:
    head: bytes = b""
    body_bytes: int = 0
    closed_at: float | None = None


@dataclass
class RawUpstream:
    """A raw asyncio upstream on its own thread. `mode`: "hang" (read the request, never
    answer), "stream" (a chunked response, one chunk every 50 ms, forever) or "respond" (answer
    `response` to every request). It records each connection and when the sidecar closed it."""

    mode: str
    response: bytes = b""
    connections: list[UpstreamConnectionLog] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raw-upstream", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        )
        self._server = future.result(5)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc_info: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> list[UpstreamConnectionLog]:
        """Connections that carried a request (the sidecar's readiness probe only connects)."""
        with self._lock:
            return [
                UpstreamConnectionLog(c.head, c.body_bytes, c.closed_at) for c in self.connections if c.head
            ]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log = UpstreamConnectionLog()
        with self._lock:
            self.connections.append(log)
        streaming: asyncio.Future[None] | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                with self._lock:
                    log.head = head
                if self.mode == "respond":
                    length = _content_length(head)
                    if length:
                        await reader.readexactly(length)
                    writer.write(self.response)
                    continue
                if self.mode == "stream":
                    streaming = asyncio.ensure_future(_stream_forever(writer))
                while chunk := await reader.read(65536):
                    with self._lock:
                        log.body_bytes += len(chunk)
                break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with self._lock:
                log.closed_at = time.monotonic()
            if streaming is not None:
                streaming.cancel()
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _sep, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def _stream_forever(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
    with contextlib.suppress(ConnectionError):
        while True:
            writer.write(b"6\r\ntoken\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)


def _assert_cancelled_upstream(upstream: RawUpstream, sidecar: RunningSidecar, errors: ErrorCounts) -> None:
    assert wait_until(lambda: all(c.closed_at is not None for c in upstream.logs())), (
        "the upstream connection was left open after the client went away"
    )
    assert len(upstream.logs()) == 1
    assert wait_until(lambda: sidecar.sidecar.proxy.inflight == 0, timeout_s=3.0)
    assert sidecar.sidecar.pool.active == 0
    assert sidecar.sidecar.pool.idle_count == 0  # a cancelled exchange's connection is not pooled
    assert errors.wait_for({"client_disconnected": 1}) == {"client_disconnected": 1}


@pytest.mark.usefixtures("no_error_logs")
def test_client_gone_mid_upload_cancels_the_upstream_request() -> None:
    """B17: the client closes after 1000 of 100000 body bytes: the upstream connection carrying
    the half request is closed, the proxy's slot and pool connection are freed, and the event
    is counted as `client_disconnected` (nothing logged at ERROR)."""
    with RawUpstream("hang") as upstream, running_sidecar(upstream.url) as sidecar:
        errors = ErrorCounts(sidecar)
        with RawClient(sidecar.port) as client:
            client.send(_post(b"Content-Length: 100000\r\n", b"x" * 1000))
            assert wait_until(lambda: any(c.body_bytes >= 1000 for c in upstream.logs()))
        _assert_cancelled_upstream(upstream, sidecar, errors)


@pytest.mark.usefixtures("no_error_logs")
def test_client_gone_while_waiting_for_the_response_cancels_the_upstream_request() -> None:
    """B17: the upstream would never answer; the client leaves: the upstream sees its
    connection closed at once (not at the response deadline)."""
    with RawUpstream("hang") as upstream, running_sidecar(upstream.url, response_timeout_s=30.0) as sidecar:
        errors = ErrorCounts(sidecar)
        with RawClient(sidecar.port) as client:
            client.send(VALID_POST)
            assert wait_until(lambda: any(c.head for c in upstream.logs()))
        _assert_cancelled_upstream(upstream, sidecar, errors)


@pytest.mark.usefixtures("no_error_logs")
def test_client_gone_mid_response_cancels_the_upstream_stream() -> None:
    """B17: an endless streamed response; the client reads its start and leaves: the upstream
    stream is cut (its connection closed), the slot freed, `client_disconnected` counted."""
    with RawUpstream("stream") as upstream, running_sidecar(upstream.url) as sidecar:
        errors = ErrorCounts(sidecar)
        with RawClient(sidecar.port) as client:
            client.send(get("/stream"))
            deadline = time.monotonic() + 3.0
            while b"token" not in client.exchange().raw and time.monotonic() < deadline:
                client.read(timeout_s=0.05)
            assert client.exchange().raw.startswith(b"HTTP/1.1 200 ")
        _assert_cancelled_upstream(upstream, sidecar, errors)


# ---- B19 ------------------------------------------------------------------------------------

VALID = {
    "get": get("/v1/models/m", b"Accept: application/json\r\n"),
    "post_length": VALID_POST,
    "post_chunked": _post(
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
        b'10\r\n{"instances": [[\r\nb\r\n1.0, 2.0]]}\r\n0\r\n\r\n',
    ),
    "pipelined": get("/a") + VALID_POST,
}


@pytest.mark.parametrize("name", list(VALID))
def test_byte_by_byte_delivery_gets_the_same_answer(stack: Stack, name: str) -> None:
    """B19: a valid request (or two pipelined) written one byte per send is answered exactly as
    when written at once: same statuses, same bodies (the upstream's echo of what it got)."""
    data = VALID[name]
    expected = 2 if name == "pipelined" else 1
    with RawClient(stack.port) as client:
        client.send(data)
        at_once = client.read(responses=expected)
    with RawClient(stack.port) as client:
        client.send_bytewise(data, delay_s=0.001)
        bytewise = client.read(responses=expected)
    assert at_once.statuses == [200] * expected, at_once.summary()
    assert bytewise.statuses == at_once.statuses
    assert [_unframed(r.body) for r in bytewise.responses] == [_unframed(r.body) for r in at_once.responses]
    assert stack.echo.count == 2 * expected
    if name.startswith("post"):
        sent = b'{"instances": [[1.0, 2.0]]}'
        digests = {json.loads(r.body)["body_sha256"] for r in [*at_once.responses, *bytewise.responses]}
        assert digests == {hashlib.sha256(sent).hexdigest()}


def _unframed(echo_body: bytes) -> dict[str, Any]:
    """The echo without the framing field the proxy chose: a body it had whole is forwarded with
    Content-Length, one still arriving is streamed chunked; everything else must be identical."""
    document = json.loads(echo_body)
    document["headers"] = [
        [name, value]
        for name, value in document["headers"]
        if name not in ("content-length", "transfer-encoding")
    ]
    assert isinstance(document, dict)
    return document


# ---- B20 ------------------------------------------------------------------------------------


def _response(body: bytes, headers: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + headers
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


INJECTED_VERSION = "v1\r\nSet-Cookie: session=stolen\r\n\r\n<html>"


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(
            {
                "model_name": "m",
                "model_version": INJECTED_VERSION,
                "outputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            }
        ).encode(),
        # Raw CR LF inside the JSON string: not even valid JSON.
        b'{"model_name": "m", "model_version": "v1\r\nSet-Cookie: session=stolen", "outputs": []}',
    ],
    ids=["escaped", "raw"],
)
def test_model_version_with_crlf_never_becomes_a_header(body: bytes) -> None:
    """B20: an upstream answering with a model version that carries CR LF and a Set-Cookie:
    the client gets exactly the upstream's response (same body bytes, no Set-Cookie, no error
    code), the sidecar keeps serving, and its own views (/metrics, /status) stay well formed."""
    request = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: model\r\nContent-Type: application/json\r\n"
    payload = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}'
    request += b"Content-Length: %d\r\n\r\n" % len(payload) + payload
    with (
        RawUpstream("respond", response=_response(body)) as upstream,
        running_sidecar(
            upstream.url, ModelTapConfig(monitor="inline", views_prefix=None, model_name="m")
        ) as sidecar,
    ):
        errors = ErrorCounts(sidecar)
        for _ in range(3):
            answer = exchange(sidecar.port, request)
            response = answer.response
            assert response.status == 200, answer.summary()
            assert response.body == body
            assert response.header("set-cookie") is None
            assert response.error_code is None
            assert [name for name, _ in response.headers].count(b"content-length") == 1
        sidecar.sidecar.tap.flush()
        metrics = httpx.get(f"{sidecar.admin_url}/metrics")
        assert metrics.status_code == 200
        for line in metrics.text.splitlines():
            assert not line.lower().startswith(("set-cookie", "<html>")), line
        status = httpx.get(f"{sidecar.admin_url}/status")
        assert status.status_code == 200
        assert status.json()["requests"]["total"] == 3
        versions: list[str] = status.json()["model"]["versions"]
        if b"\\r\\n" in body:  # valid JSON: the version was decoded, and is kept without CR LF
            assert len(versions) == 1
            assert "Set-Cookie" in versions[0]
        assert all("\r" not in v and "\n" not in v for v in versions), versions
        assert errors.new() == {}


@pytest.mark.parametrize(
    "version_header",
    [b"x-model-version: v1\r\n Set-Cookie: session=stolen\r\n", b"x-model-version: v1\rSet-Cookie: x\r\n"],
    ids=["folded", "bare_cr"],
)
def test_version_header_hiding_a_set_cookie_is_an_upstream_protocol_error(version_header: bytes) -> None:
    """B20, header side: a version header folded onto a Set-Cookie line, or split by a bare CR,
    is not a response the sidecar forwards: 502 `upstream_protocol_error` (never a 500, never
    the cookie), and the next request is served."""
    body = b'{"model_name": "m", "model_version": "v1", "outputs": []}'
    with (
        RawUpstream("respond", response=_response(body, version_header)) as upstream,
        running_sidecar(upstream.url) as sidecar,
    ):
        errors = ErrorCounts(sidecar)
        for _ in range(2):
            answer = exchange(sidecar.port, VALID_POST)
            response = answer.response
            assert (response.status, response.error_code) == (502, "upstream_protocol_error"), (
                answer.summary()
            )
            assert response.header("set-cookie") is None
            assert b"stolen" not in answer.raw
        assert errors.new() == {"upstream_protocol_error": 2}
