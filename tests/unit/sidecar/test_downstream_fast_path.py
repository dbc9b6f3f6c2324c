"""The client protocol's compiled reader of a whole request (`_speedups.parse_request`) against
llhttp's callbacks: whatever the compiled reader accepts must reach the proxy app exactly as
llhttp and uvicorn would have delivered it (scope, body messages), and the client must get the
same bytes, the same refusals and the same connection state; the usual request of a model
client must be taken by it. And the response head of such a request (`_speedups.response_head`)
against uvicorn's `send`: the same bytes, state and errors for any messages an app sends."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from modeltap._types import Receive, Scope, Send
from modeltap.capture import compiled
from modeltap.guarded.protocol import ClientLimits, _WholeRequestCycle, protocol_class
from tests.support.fake_transport import CLIENT_SOCKET, FakeTransport

pytestmark = pytest.mark.skipif(
    not compiled.wanted(), reason="the extension is not built here, or MODELTAP_PURE_PYTHON turns it off"
)

LIMITS = ClientLimits(max_url_bytes=48, max_headers=6, max_header_bytes=200)
BODY = b'{"instances": [[1.0, 2.0]]}'
USUAL = (
    b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: client/1.0\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


def serve(reads: list[bytes], *, compiled_reader: bool) -> dict[str, Any]:
    """Feed `reads` to one client connection, each after the app has answered what came before;
    everything the app saw and the client got, and how many requests the compiled reader took."""
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        visible = {key: value for key, value in scope.items() if key not in ("extensions", "state")}
        seen.append((visible, sorted(scope["extensions"]), messages))
        answer = b"%d bytes" % sum(len(m.get("body", b"")) for m in messages)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(answer))],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def run() -> dict[str, Any]:
        config = uvicorn.Config(app, http="httptools", loop="none", lifespan="off", log_config=None)
        config.load()
        errors: list[str] = []
        protocol = protocol_class(LIMITS, errors.append)(
            config=config, server_state=ServerState(), app_state={}
        )
        taken = 0
        serve_whole = protocol._serve_whole

        def counted(*request: Any) -> None:
            nonlocal taken
            taken += 1
            serve_whole(*request)

        protocol._serve_whole = counted  # type: ignore[method-assign,assignment]
        if not compiled_reader:
            protocol._read_whole = None
        transport = FakeTransport(CLIENT_SOCKET)
        protocol.connection_made(transport)
        for data in reads:
            if transport.closing:
                break
            protocol.data_received(data)
            for _ in range(10):  # the request's task runs to its end
                await asyncio.sleep(0)
        cycle = protocol.cycle
        return {
            "seen": seen,
            "written": b"".join(transport.written),
            "closed": transport.closing,
            "paused": transport.paused,
            "errors": errors,
            "phase": protocol._phase,
            "keep_alive": cycle.keep_alive if cycle is not None else None,
            "taken": taken,
        }

    return asyncio.run(run())


def both(reads: list[bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
    fast, slow = serve(reads, compiled_reader=True), serve(reads, compiled_reader=False)
    assert slow["taken"] == 0
    return fast, slow


def same(fast: dict[str, Any], slow: dict[str, Any]) -> None:
    assert {k: v for k, v in fast.items() if k != "taken"} == {k: v for k, v in slow.items() if k != "taken"}


def test_the_usual_model_client_request_is_read_without_llhttp() -> None:
    fast, slow = both([USUAL, USUAL, USUAL])
    same(fast, slow)
    assert fast["taken"] == 3
    scope, extensions, messages = fast["seen"][0]
    assert scope["method"] == "POST"
    assert scope["path"] == "/v1/models/m:predict"
    assert scope["headers"][0] == (b"host", b"127.0.0.1:8000")
    assert extensions == ["modeltap.connection"]
    assert messages == [{"type": "http.request", "body": BODY, "more_body": False}]
    assert fast["written"].count(b"HTTP/1.1 200 OK\r\n") == 3
    assert not fast["closed"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET /a/b?x=1&y=%s HTTP/1.1\r\nHost: a\r\n\r\n" % b"z?w",
        b"GET /a? HTTP/1.1\r\nHost: a\r\n\r\n",
        b"DELETE /m/1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        b"PUT /m HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"PATCH /m HTTP/1.1\r\nHost: a\r\nX-Token:\tv a l\r\nContent-Length: 3\r\n\r\nabc",
        b"HEAD /m HTTP/1.1\r\nHost: a\r\nCONTENT-LENGTH: 007\r\n\r\n" + b"b" * 7,
        b"OPTIONS //x/@:;=,(*)'!$~ HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive , keep-alive\r\n\r\n",
    ],
)
def test_the_usual_variations_are_read_without_llhttp(request_bytes: bytes) -> None:
    fast, slow = both([request_bytes, request_bytes])
    same(fast, slow)
    assert fast["taken"] == 2


@pytest.mark.parametrize(
    ("request_bytes", "refused"),
    [
        (b"GET /%7Ex HTTP/1.1\r\nHost: a\r\n\r\n", None),  # uvicorn unquotes
        (b"GET /x#f HTTP/1.1\r\nHost: a\r\n\r\n", None),
        (b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n", None),
        (b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n", None),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", None),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n", None),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n", None),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n", None),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nX: v \r\n\r\n", None),
        (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", None),
        (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n", None),  # pipelined
        (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabc", None),  # body to come
        (b"GET /x HTTP/1.1\r\n\r\n", "invalid_request"),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "invalid_request"),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", "method_not_allowed"),
        (
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            "upgrade_not_supported",
        ),
        (
            b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "invalid_request",
        ),
        (b"GET /" + b"x" * 48 + b" HTTP/1.1\r\nHost: a\r\n\r\n", "uri_too_long"),
        (b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 6 + b"\r\n", "request_headers_too_large"),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 200 + b"\r\n\r\n", "request_headers_too_large"),
        (b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n", "invalid_request"),
    ],
)
def test_what_the_compiled_reader_does_not_take_goes_to_llhttp(
    request_bytes: bytes, refused: str | None
) -> None:
    fast, slow = both([request_bytes])
    same(fast, slow)
    assert fast["taken"] == 0
    assert fast["errors"] == ([refused] if refused else [])


def test_a_request_in_two_reads_is_llhttps_and_the_next_whole_one_is_not() -> None:
    head, rest = USUAL[:20], USUAL[20:]
    fast, slow = both([head, rest, USUAL, b"\r\n", USUAL])
    same(fast, slow)
    assert fast["taken"] == 2  # the third read, and the fifth after llhttp skipped an empty line
    assert len(fast["seen"]) == 3


def test_a_large_body_pauses_reading_as_llhttp_does() -> None:
    body = b"x" * 70_000
    request = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    fast, slow = both([request])
    same(fast, slow)
    assert fast["taken"] == 1
    assert fast["paused"] >= 1


_TARGET_CHARS = "abcXYZ019-._~!$&'()*+,;=:@/?"
_ODD_TARGET_CHARS = '%# "<>\\^`{|}\x7f\x80'
_NAMES = [b"X-Request-Id", b"Accept", b"Authorization", b"Host", b"Content-Length", b"Connection",
          b"Transfer-Encoding", b"Expect", b"Upgrade", b"X Bad", b"X\x00"]  # fmt: skip
_VALUES = [b"a", b"application/json", b"Bearer t0k3n", b"keep-alive", b"Keep-Alive, keep-alive", b"close",
           b"upgrade", b"keep-alive, close", b"chunked", b"100-continue", b"5", b"05", b"-1", b"1 2", b"+3",
           b"", b"v ", b"\tv", b"caf\xc3\xa9", b"a\x01b", b"x" * 120]  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Mostly what a model client sends; about half of them with something off (a method, the
    target, the version, a field, the framing, bytes after the request)."""
    odd = draw(st.integers(0, 11))  # what is off: 0-5 nothing
    method = draw(st.sampled_from([b"POST", b"GET", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"]))
    if odd == 6:
        method = draw(st.sampled_from([b"CONNECT", b"get", b"BREW", b"PROPFIND"]))
    target = draw(st.sampled_from([b"/predict", b"/v1/models/m:predict", b"/"]))
    target += draw(st.text(alphabet=_TARGET_CHARS, max_size=30)).encode()
    if odd == 7:
        at = draw(st.integers(1, len(target)))
        odd_part = draw(st.sampled_from([*_ODD_TARGET_CHARS, "*", "http://a/x"])).encode("latin-1")
        target = target[:at] + odd_part + target[at:] if odd_part != b"http://a/x" else odd_part
    version = b"HTTP/1.1" if odd != 8 else draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"]))
    body = draw(st.binary(max_size=40))
    fields = [(b"Host", b"127.0.0.1:8000"), (b"Content-Type", b"application/json")]
    if body or draw(st.booleans()):
        fields.append((b"Content-Length", b"%d" % len(body)))
    for _ in range(draw(st.integers(0, 2))):
        fields.insert(
            draw(st.integers(0, len(fields))),
            (draw(st.sampled_from(_NAMES[:3])), draw(st.sampled_from(_VALUES[:5]))),
        )
    if odd == 9:  # a field the compiled reader must leave to llhttp, or too many of them
        field = (draw(st.sampled_from(_NAMES)), draw(st.sampled_from(_VALUES[5:])))
        fields.insert(draw(st.integers(0, len(fields))), field)
        fields.extend([(b"X-Pad", b"p" * draw(st.integers(1, 40)))] * draw(st.integers(0, 4)))
    if odd == 10:
        del fields[draw(st.integers(0, len(fields) - 1))]
    head = b"%s %s %s\r\n" % (method, target, version) + b"".join(b"%s: %s\r\n" % f for f in fields) + b"\r\n"
    request = head + body
    if odd == 11:
        request += draw(st.sampled_from([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\r\n", b"x"]))
    return request


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=3))
def test_generated_requests_reach_the_app_alike_both_ways(reads: list[bytes]) -> None:
    fast, slow = both(reads)
    same(fast, slow)


# ---- the response head ---------------------------------------------------------------------


class _Flow:
    write_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def respond(
    messages: list[dict[str, Any]], *, method: str, keep_alive: bool, defaults: list[Any], compiled_head: bool
) -> dict[str, Any]:
    """Send `messages` through a request cycle (the compiled reader's, or uvicorn's own)."""
    transport = FakeTransport(CLIENT_SOCKET)
    completed: list[bool] = []
    kind = _WholeRequestCycle if compiled_head else RequestResponseCycle
    cycle = kind(
        scope={"type": "http", "method": method, "path": "/", "http_version": "1.1", "headers": []},  # type: ignore[typeddict-item]
        transport=transport,
        flow=_Flow(),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=defaults,
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: completed.append(True),
    )
    outcomes: list[Any] = []
    for message in messages:
        call = cycle.send(message)  # type: ignore[arg-type]
        try:
            call.send(None)
        except StopIteration:
            outcomes.append("ok")
        except Exception as error:  # what uvicorn raises, the compiled head must raise alike
            outcomes.append((type(error).__name__, str(error)))
            break
        else:
            raise AssertionError("send suspended")
    return {
        "outcomes": outcomes,
        "written": transport.written,
        "closed": transport.closing,
        "completed": completed,
        "state": (
            cycle.response_started,
            cycle.response_complete,
            cycle.keep_alive,
            cycle.chunked_encoding,
            cycle.expected_content_length,
        ),
    }


def test_the_usual_response_head_is_written_as_uvicorn_writes_it() -> None:
    messages: list[dict[str, Any]] = [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"Content-Type", b"application/json"), (b"content-length", b"4")],
        },
        {"type": "http.response.body", "body": b"ab", "more_body": True},
        {"type": "http.response.body", "body": b"cd"},
    ]
    ours = respond(messages, method="POST", keep_alive=True, defaults=[(b"server", b"m")], compiled_head=True)
    theirs = respond(
        messages, method="POST", keep_alive=True, defaults=[(b"server", b"m")], compiled_head=False
    )
    assert ours == theirs
    assert (
        ours["written"][0]
        == b"HTTP/1.1 200 OK\r\nserver: m\r\ncontent-type: application/json\r\ncontent-length: 4\r\n\r\n"
    )
    assert ours["completed"] == [True]


_RESPONSE_NAMES = [b"content-type", b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection",
                   b"x-model-version", b"X Bad", b"caf\xc3\xa9", b""]  # fmt: skip
_RESPONSE_VALUES = [b"application/json", b"3", b"003", b"12", b"0", b"-1", b" 3", b"1_0", b"chunked",
                    b"Chunked", b"gzip, chunked", b"close", b"keep-alive, CLOSE", b"keep-alive", b"",
                    b"a\tb", b"a\x01b", b"caf\xc3\xa9", b"x" * 80]  # fmt: skip


@st.composite
def responses(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str, bool, list[Any]]:
    """A response as an app sends it: usually a head with Content-Length and the body in parts."""
    body = draw(st.binary(max_size=12))
    fields: list[Any] = [(b"content-type", b"application/json")]
    if draw(st.integers(0, 3)):
        fields.append((b"content-length", b"%d" % (len(body) + draw(st.sampled_from([0, 0, 0, 1, -1])))))
    for _ in range(draw(st.integers(0, 2))):
        field = (draw(st.sampled_from(_RESPONSE_NAMES)), draw(st.sampled_from(_RESPONSE_VALUES)))
        fields.insert(draw(st.integers(0, len(fields))), field)
    if draw(st.integers(0, 9)) == 0:
        fields.append(draw(st.sampled_from([["x", b"y"], (b"x",), ("x", "y"), (b"x", b"y", b"z")])))
    headers: Any = fields if draw(st.integers(0, 9)) else tuple(fields)
    status: Any = draw(st.sampled_from([200] * 6 + [201, 204, 304, 404, 500, 599, 600, 99, True, "200"]))
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    if draw(st.integers(0, 19)) == 0:
        del start[draw(st.sampled_from(["status", "headers"]))]
    cut = draw(st.integers(0, len(body)))
    parts = [body[:cut], body[cut:]] if draw(st.booleans()) else [body]
    messages = [start] + [
        {"type": "http.response.body", "body": part, "more_body": True} for part in parts[:-1]
    ]
    last: dict[str, Any] = {"type": "http.response.body", "body": parts[-1]}
    if draw(st.booleans()):
        last["more_body"] = False
    messages.append(last)
    if draw(st.integers(0, 9)) == 0:
        messages.insert(
            draw(st.integers(0, len(messages))),
            draw(st.sampled_from([start, last, {"type": "http.response.trailers"}])),
        )
    method = draw(st.sampled_from(["POST", "POST", "GET", "HEAD"]))
    defaults = draw(
        st.sampled_from(
            [[], [(b"server", b"uvicorn")], [(b"date", b"Sun, 06 Dec 2026 14:00:00 GMT"), (b"server", b"u")]]
        )
    )
    return messages, method, draw(st.booleans()), defaults


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_generated_responses_are_written_alike_both_ways(
    response: tuple[list[dict[str, Any]], str, bool, list[Any]],
) -> None:
    messages, method, keep_alive, defaults = response
    ours = respond(messages, method=method, keep_alive=keep_alive, defaults=defaults, compiled_head=True)
    theirs = respond(messages, method=method, keep_alive=keep_alive, defaults=defaults, compiled_head=False)
    assert ours == theirs
