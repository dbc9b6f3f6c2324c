"""The client protocol's compiled reader of a whole request (`_speedups.parse_request`) against
llhttp's callbacks: whatever the compiled reader accepts must reach the proxy app exactly as
llhttp and uvicorn would have delivered it (scope, body messages), and the client must get the
same bytes, the same refusals and the same connection state; the usual request of a model
client must be taken by it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState

from modeltap._types import Receive, Scope, Send
from modeltap.capture import compiled
from modeltap.sidecar.downstream import ClientLimits, protocol_class

pytestmark = pytest.mark.skipif(not compiled.AVAILABLE, reason="the extension is not built here")

LIMITS = ClientLimits(max_url_bytes=48, max_headers=6, max_header_bytes=200)
BODY = b'{"instances": [[1.0, 2.0]]}'
USUAL = (
    b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: client/1.0\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False
        self.paused = 0

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


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
        transport = _Transport()
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
