"""The middleware never changes an exchange: RELIABILITY.md rows C1-C8, C11-C14, C18 and E8.

Every test runs the same scripted request through the bare app and through `ModelTapMiddleware`
and compares what the app received and what reached the client, message by message. Where a row
also asks for the exchange to be counted, the count is read back through `tap.flush()` and the
published snapshot or `/modeltap/status`.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from modeltap import ModelTapConfig, ModelTapMiddleware
from tests.support.asgi_driver import (
    ASGIApp,
    DriverResult,
    Message,
    Receive,
    Scope,
    Send,
    http_request_messages,
    make_http_scope,
    run_asgi,
    run_lifespan,
)
from tests.support.tapping import BODY, START, MakeMiddleware, status_document

# Every test here runs with the compiled capture and with the pure-Python one.
pytestmark = pytest.mark.usefixtures("each_capture_form")

KIB = 1024
MIB = 1024 * KIB


class ModelFailure(Exception):
    """What the demo apps raise, so a test can check the very same object comes back."""


# --- helpers -------------------------------------------------------------------------------------


def duration_series(middleware: ModelTapMiddleware) -> list[dict[str, Any]]:
    """Attributes of every http.server.request.duration series, with its count under `count`."""
    assert middleware.tap.flush(5.0)
    return [
        {**dict(point.attributes), "count": point.count}
        for point in middleware.tap.latest_snapshot().duration
    ]


def assert_same_exchange(bare: DriverResult, tapped: DriverResult) -> None:
    """Both sides of the exchange are identical: messages, boundaries, outcomes and the exception type."""
    assert tapped.received == bare.received
    assert tapped.receive_calls == bare.receive_calls
    assert tapped.sent == bare.sent
    assert [r.outcome for r in tapped.send_records] == [r.outcome for r in bare.send_records]
    assert tapped.status == bare.status
    assert tapped.headers == bare.headers
    assert hashlib.sha256(tapped.body).digest() == hashlib.sha256(bare.body).digest()
    assert tapped.response_complete == bare.response_complete
    assert type(tapped.exception) is type(bare.exception)


async def read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """Read the request like a framework does, stopping at the last chunk or a disconnect."""
    chunks: list[bytes] = []
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] == "http.disconnect":
            break
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


async def streaming_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo every request chunk back as its own response chunk, as soon as it arrives."""
    await send({"type": START, "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = bool(message.get("more_body", False))
        await send({"type": BODY, "body": message.get("body", b""), "more_body": more})
        if not more:
            return


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    body, _ = await read_body(receive)
    payload = json.dumps({"path": scope["path"], "received": len(body)}).encode()
    await send({"type": START, "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": BODY, "body": payload})


def request_messages(chunks: list[bytes]) -> list[Message]:
    return [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]


# --- C1 / E8: identical messages and bytes ------------------------------------------------------


@pytest.mark.timeout(60)
def test_random_chunked_bodies_pass_through_identically(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(streaming_echo)

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(chunks=st.lists(st.binary(max_size=4096), min_size=1, max_size=6))
    def check(chunks: list[bytes]) -> None:
        messages = request_messages(chunks)
        scope = make_http_scope("POST", "/echo", headers=[(b"content-type", b"application/octet-stream")])
        bare = run_asgi(streaming_echo, scope, messages)
        tapped = run_asgi(middleware, scope, messages)

        assert_same_exchange(bare, tapped)
        assert tapped.received == messages
        assert tapped.body == b"".join(chunks)

    check()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [
        (1, None),
        (64 * KIB - 1, None),
        (64 * KIB, None),
        (64 * KIB + 1, None),
        (64 * KIB + 1, 4 * KIB),
        (MIB + 1, 64 * KIB),
    ],
    ids=["1B", "64KiB-1", "64KiB", "64KiB+1", "64KiB+1-chunked", "1MiB+1-chunked"],
)
def test_sized_bodies_are_byte_identical(
    make_middleware: MakeMiddleware, size: int, chunk_size: int | None
) -> None:
    body = bytes((i * 31 + 7) % 256 for i in range(size))
    messages = http_request_messages(body, chunk_size=chunk_size)
    scope = make_http_scope("POST", "/echo", headers=[(b"content-type", b"application/octet-stream")])
    middleware = make_middleware(streaming_echo)

    bare = run_asgi(streaming_echo, scope, messages)
    tapped = run_asgi(middleware, scope, messages)

    assert_same_exchange(bare, tapped)
    assert hashlib.sha256(tapped.body).hexdigest() == hashlib.sha256(body).hexdigest()
    assert status_document(middleware)["requests"]["total"] == 1


def test_app_receives_and_server_gets_the_very_same_message_objects(make_middleware: MakeMiddleware) -> None:
    """The tee keeps references: no copy, no re-chunking, no new dicts in either direction."""
    script: list[Message] = request_messages([b"first", b"", b"third"])
    app_received: list[Message] = []
    app_sent: list[Message] = []
    server_got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            app_received.append(message)
            if not message.get("more_body", False):
                break
        for message in (
            {"type": START, "status": 200, "headers": [(b"content-length", b"2")]},
            {"type": BODY, "body": b"o", "more_body": True},
            {"type": BODY, "body": bytearray(b"k"), "more_body": False},
        ):
            app_sent.append(message)
            await send(message)

    async def serve() -> None:
        pending = iter(script)

        async def receive() -> Message:
            return next(pending)

        async def send(message: Message) -> None:
            server_got.append(message)

        await make_middleware(app)(make_http_scope("POST", "/objects"), receive, send)

    asyncio.run(serve())

    assert len(app_received) == len(script)
    assert all(got is original for got, original in zip(app_received, script, strict=True))
    assert len(server_got) == len(app_sent)
    assert all(got is original for got, original in zip(server_got, app_sent, strict=True))


@pytest.mark.timeout(30)
def test_streamed_response_chunks_are_forwarded_one_by_one(make_middleware: MakeMiddleware) -> None:
    """Each chunk reaches the server before the app produces the next one (no buffering, C9)."""
    chunk_count = 40
    arrived = [asyncio.Event() for _ in range(chunk_count)]
    produced_at: list[float] = []

    def on_message(message: Message) -> None:
        if message["type"] == BODY and message.get("more_body", False):
            arrived[int(message["body"].split(b":")[0])].set()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for index in range(chunk_count):
            produced_at.append(time.perf_counter())
            await send({"type": BODY, "body": b"%d:data\n\n" % index, "more_body": True})
            # A middleware that held the chunk back would leave this waiting until the timeout.
            await asyncio.wait_for(arrived[index].wait(), timeout=1.0)
        await send({"type": BODY, "body": b"", "more_body": False})

    result = run_asgi(
        make_middleware(app), make_http_scope("GET", "/stream", headers=[]), on_message=on_message
    )

    assert result.exception is None
    chunk_records = [r for r in result.send_records if r.message["type"] == BODY and r.message["more_body"]]
    assert [int(r.message["body"].split(b":")[0]) for r in chunk_records] == list(range(chunk_count))
    for index in range(chunk_count - 1):
        assert produced_at[index] <= chunk_records[index].at < produced_at[index + 1]


# --- C2: no eager consumption --------------------------------------------------------------------


def test_app_that_never_reads_the_body_gets_no_receive_calls(make_middleware: MakeMiddleware) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": BODY, "body": b"ok"})

    messages = http_request_messages(b"x" * 10_000, chunk_size=1000)
    scope = make_http_scope("POST", "/no-read")
    middleware = make_middleware(app)

    bare = run_asgi(app, scope, messages)
    tapped = run_asgi(middleware, scope, messages)

    assert tapped.receive_calls == 0
    assert_same_exchange(bare, tapped)
    assert status_document(middleware)["requests"]["total"] == 1


# --- C3 / C4: disconnects -------------------------------------------------------------------------


def test_disconnect_mid_body_reaches_the_app_unchanged(make_middleware: MakeMiddleware) -> None:
    messages = request_messages([b'{"a":', b" 1", b"}"])
    scope = make_http_scope("POST", "/upload")
    middleware = make_middleware(ok_app)

    bare = run_asgi(ok_app, scope, messages, disconnect_at=1)
    tapped = run_asgi(middleware, scope, messages, disconnect_at=1)

    assert_same_exchange(bare, tapped)
    assert tapped.received_types == ["http.request", "http.disconnect"]
    assert tapped.exception is None


def test_disconnected_exchange_is_counted_as_client_disconnected(make_middleware: MakeMiddleware) -> None:
    async def gives_up(scope: Scope, receive: Receive, send: Send) -> None:
        _, messages = await read_body(receive)
        assert messages[-1]["type"] == "http.disconnect"

    middleware = make_middleware(gives_up)
    result = run_asgi(
        middleware, make_http_scope("POST", "/upload"), request_messages([b"a", b"b"]), disconnect_at=1
    )

    assert result.exception is None
    assert result.sent == []
    assert status_document(middleware)["requests"]["total"] == 1
    [series] = duration_series(middleware)
    assert series["error.type"] == "client_disconnected"
    assert series["count"] == 1
    # No response was sent, so the series must not claim one (semconv: status code only if sent);
    # a client going away is not a server error.
    assert "http.response.status_code" not in series


def test_disconnect_polled_after_the_response_still_arrives(make_middleware: MakeMiddleware) -> None:
    """C4: a long-running app polling for disconnect after its response gets it through the tee."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": b"done"})
        message = await asyncio.wait_for(receive(), timeout=2.0)
        assert message["type"] == "http.disconnect"

    scope = make_http_scope("POST", "/poll")
    middleware = make_middleware(app)
    bare = run_asgi(app, scope, http_request_messages(b"{}"), disconnect_after_response=True)
    tapped = run_asgi(middleware, scope, http_request_messages(b"{}"), disconnect_after_response=True)

    assert_same_exchange(bare, tapped)
    assert tapped.exception is None
    assert tapped.received_types == ["http.request", "http.disconnect"]
    document = status_document(middleware)
    assert document["requests"]["total"] == 1
    assert document["requests"]["errors"] == 0
    assert all("error.type" not in series for series in duration_series(middleware))


# --- C5 - C8: exceptions and broken clients --------------------------------------------------------


def test_exception_before_response_start_propagates_unchanged(make_middleware: MakeMiddleware) -> None:
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        error = ModelFailure("model not loaded")
        raised.append(error)
        raise error

    scope = make_http_scope("POST", "/predict")
    middleware = make_middleware(app)
    bare = run_asgi(app, scope, http_request_messages(b"{}"))
    tapped = run_asgi(middleware, scope, http_request_messages(b"{}"))

    assert_same_exchange(bare, tapped)
    assert tapped.sent == []
    assert tapped.exception is raised[-1]
    document = status_document(middleware)
    assert document["requests"]["total"] == 1
    assert document["requests"]["errors"] == 1
    [series] = duration_series(middleware)
    assert series["http.response.status_code"] == 500
    assert series["error.type"] == "ModelFailure"
    assert series["count"] == 1


@pytest.mark.timeout(30)
def test_exception_before_start_gives_the_client_the_same_500_via_httpx(
    make_middleware: MakeMiddleware,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise ModelFailure("boom")

    async def call(target: ASGIApp) -> httpx.Response:
        transport = httpx.ASGITransport(app=target, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.post("/predict", json={"instances": [[1]]})

    middleware = make_middleware(app)
    bare = asyncio.run(call(app))
    tapped = asyncio.run(call(middleware))

    assert tapped.status_code == bare.status_code == 500
    assert tapped.content == bare.content
    assert status_document(middleware)["requests"]["total"] == 1


def test_exception_after_response_start_propagates_without_extra_messages(
    make_middleware: MakeMiddleware,
) -> None:
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": BODY, "body": b"partial,", "more_body": True})
        error = ModelFailure("died mid-stream")
        raised.append(error)
        raise error

    scope = make_http_scope("GET", "/stream", headers=[])
    middleware = make_middleware(app)
    bare = run_asgi(app, scope)
    tapped = run_asgi(middleware, scope)

    assert_same_exchange(bare, tapped)
    assert tapped.sent_types == [START, BODY]
    assert tapped.response_complete is False
    assert tapped.exception is raised[-1]
    [series] = duration_series(middleware)
    assert series["error.type"] == "ModelFailure"
    assert series["http.response.status_code"] == 200
    assert status_document(middleware)["requests"]["total"] == 1


def test_send_raising_oserror_propagates_to_the_app_unchanged(make_middleware: MakeMiddleware) -> None:
    seen: list[OSError] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": []})
        try:
            await send({"type": BODY, "body": b"never delivered"})
        except OSError as error:
            seen.append(error)
            raise

    scope = make_http_scope("GET", "/predict", headers=[])
    middleware = make_middleware(app)
    bare = run_asgi(app, scope, raise_after=1)
    tapped = run_asgi(middleware, scope, raise_after=1)

    assert_same_exchange(bare, tapped)
    assert tapped.exception is seen[-1]
    assert [r.outcome for r in tapped.send_records] == ["delivered", "raised"]
    assert status_document(middleware)["requests"]["total"] == 1
    [series] = duration_series(middleware)
    assert series["error.type"] == "OSError"


@pytest.mark.timeout(30)
def test_send_that_silently_drops_does_not_hang(make_middleware: MakeMiddleware) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": []})
        for _ in range(3):
            await send({"type": BODY, "body": b"chunk", "more_body": True})
        await send({"type": BODY, "body": b"", "more_body": False})
        # uvicorn >= 0.28.1: the client is gone, so receive answers http.disconnect right away.
        assert (await receive())["type"] == "http.disconnect"

    scope = make_http_scope("GET", "/predict", headers=[])
    middleware = make_middleware(app)
    bare = run_asgi(app, scope, [], noop_after=1, timeout=2.0)
    tapped = run_asgi(middleware, scope, [], noop_after=1, timeout=2.0)

    assert_same_exchange(bare, tapped)
    assert tapped.exception is None
    assert [r.outcome for r in tapped.send_records] == ["delivered"] + ["dropped"] * 4
    assert tapped.elapsed < 1.0
    assert status_document(middleware)["requests"]["total"] == 1


# --- C11: contextvars --------------------------------------------------------------------------------

outer_value: contextvars.ContextVar[str] = contextvars.ContextVar("outer_value", default="unset")
app_value: contextvars.ContextVar[str] = contextvars.ContextVar("app_value", default="unset")


def test_contextvars_cross_the_middleware_in_both_directions(make_middleware: MakeMiddleware) -> None:
    seen: dict[str, str] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["app saw outer"] = outer_value.get()
        app_value.set("set by the app")
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": b"ok"})

    def outer(inner: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            token = outer_value.set("set by the outer middleware")
            try:
                await inner(scope, receive, send)
                seen["outer saw app"] = app_value.get()
            finally:
                outer_value.reset(token)

        return middleware

    result = run_asgi(outer(make_middleware(app)), make_http_scope("GET", "/ctx", headers=[]))

    assert result.exception is None
    assert seen == {"app saw outer": "set by the outer middleware", "outer saw app": "set by the app"}


# --- C12 / C13: lifespan and websocket --------------------------------------------------------------


def test_lifespan_passes_through_untouched(make_middleware: MakeMiddleware) -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"model": "loaded"}

    app = Starlette(routes=[], lifespan=lifespan)

    bare = run_lifespan(app)
    tapped = run_lifespan(make_middleware(app))

    assert list(tapped) == list(bare)
    assert tapped.types == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert tapped.received == bare.received
    assert tapped.state == bare.state == {"model": "loaded"}
    assert tapped.exception is None


def test_lifespan_startup_failure_is_forwarded(make_middleware: MakeMiddleware) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "weights missing"})

    bare = run_lifespan(app, fail_startup=True)
    tapped = run_lifespan(make_middleware(app), fail_startup=True)

    assert list(tapped) == list(bare)
    assert tapped.failure_message == "weights missing"
    assert tapped.exception is None


def test_app_without_lifespan_support_raises_the_same_exception(make_middleware: MakeMiddleware) -> None:
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        error = ModelFailure(f"unsupported scope {scope['type']}")
        raised.append(error)
        raise error

    tapped = run_lifespan(make_middleware(app), fail_startup=True)

    assert tapped.exception is raised[-1]
    assert list(tapped) == []


def test_monitoring_starts_with_the_app_not_on_the_first_request(make_middleware: MakeMiddleware) -> None:
    """Inline mode loads the statistics (scipy: about half a second) as it starts: at the app's
    startup, before the server takes requests, so the first request does not wait for it."""
    started: list[tuple[bool, bool]] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield

    middleware = make_middleware(Starlette(routes=[], lifespan=lifespan))
    tap = middleware.tap

    async def lifespan_then_look() -> None:
        startup_done = asyncio.Event()
        shutdown = asyncio.Event()
        answers: list[str] = []

        async def receive() -> Message:
            if not answers:
                return {"type": "lifespan.startup"}
            await shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                # What the server sees as the app reports itself started.
                started.append((tap.capture is not None, tap._analyzer is not None))
                startup_done.set()
            answers.append(message["type"])

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        task = asyncio.ensure_future(middleware(scope, receive, send))
        await asyncio.wait_for(startup_done.wait(), 30)
        shutdown.set()
        await asyncio.wait_for(task, 30)
        assert answers == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

    assert (tap.capture, tap._analyzer) == (None, None)
    asyncio.run(lifespan_then_look())

    assert started == [(True, True)]


def test_a_failed_start_at_startup_serves_unmonitored(
    make_middleware: MakeMiddleware, monkeypatch: pytest.MonkeyPatch
) -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield

    async def predict(request: Request) -> JSONResponse:
        return JSONResponse({"predictions": [1]})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])], lifespan=lifespan)
    middleware = make_middleware(app)

    def broken() -> None:
        raise OSError("no threads here")

    monkeypatch.setattr(middleware.tap, "start", broken)
    bare = run_lifespan(app)
    tapped = run_lifespan(middleware)
    answered = run_asgi(middleware, make_http_scope("POST", "/predict"), http_request_messages(b"{}"))

    assert list(tapped) == list(bare)
    assert answered.status == 200
    assert answered.body == b'{"predictions":[1]}'
    assert middleware.enabled is False


async def run_websocket(
    app: ASGIApp, path: str, incoming: list[Message]
) -> tuple[list[Message], list[Message]]:
    """A minimal websocket 'server': replays `incoming`, records what the app sent and received."""
    pending = list(incoming)
    received: list[Message] = []
    sent: list[Message] = []
    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
        "state": {},
    }

    async def receive() -> Message:
        message = pending.pop(0) if pending else {"type": "websocket.disconnect", "code": 1000}
        received.append(dict(message))
        return dict(message)

    async def send(message: Message) -> None:
        sent.append(dict(message))

    await asyncio.wait_for(app(scope, receive, send), timeout=5.0)
    return received, sent


@pytest.mark.parametrize("path", ["/ws", "/modeltap/status"])
def test_websocket_passes_through_untouched(make_middleware: MakeMiddleware, path: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": f"{scope['path']}:{message.get('text')}"})

    incoming: list[Message] = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hello"},
        {"type": "websocket.receive", "bytes": b"\x00\x01"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    middleware = make_middleware(app)

    bare = asyncio.run(run_websocket(app, path, incoming))
    tapped = asyncio.run(run_websocket(middleware, path, incoming))

    assert tapped == bare
    assert tapped[1][0] == {"type": "websocket.accept"}
    assert status_document(middleware)["requests"]["total"] == 0


# --- C14: extension messages -------------------------------------------------------------------------


def test_pathsend_passes_through(make_middleware: MakeMiddleware) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": START, "status": 200, "headers": [(b"content-type", b"application/octet-stream")]}
        )
        await send({"type": "http.response.pathsend", "path": "/srv/models/weights.bin"})

    scope = make_http_scope("GET", "/weights", headers=[], extensions={"http.response.pathsend": {}})
    middleware = make_middleware(app)
    bare = run_asgi(app, scope)
    tapped = run_asgi(middleware, scope)

    assert_same_exchange(bare, tapped)
    assert tapped.sent_types == [START, "http.response.pathsend"]
    assert tapped.response_complete is True
    document = status_document(middleware)
    assert document["requests"]["total"] == 1
    assert document["latency_s"]["count"] == 1


def test_starlette_file_response_uses_pathsend_through_the_middleware(
    make_middleware: MakeMiddleware, tmp_path: Path
) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x00" * 1000)

    async def download(request: Request) -> Response:
        return FileResponse(weights)

    app = Starlette(routes=[Route("/weights", download)])
    scope = make_http_scope("GET", "/weights", headers=[], extensions={"http.response.pathsend": {}})
    middleware = make_middleware(app)
    bare = run_asgi(app, scope)
    tapped = run_asgi(middleware, scope)

    assert tapped.sent == bare.sent
    assert tapped.sent[-1] == {"type": "http.response.pathsend", "path": str(weights)}


def test_trailers_pass_through(make_middleware: MakeMiddleware) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send(
            {"type": START, "status": 200, "headers": [(b"trailer", b"grpc-status")], "trailers": True}
        )
        await send({"type": BODY, "body": b"part 1,", "more_body": True})
        await send({"type": BODY, "body": b"part 2", "more_body": False})
        await send(
            {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False}
        )

    scope = make_http_scope("POST", "/grpcish", extensions={"http.response.trailers": {}})
    middleware = make_middleware(app)
    bare = run_asgi(app, scope, http_request_messages(b"{}"))
    tapped = run_asgi(middleware, scope, http_request_messages(b"{}"))

    assert_same_exchange(bare, tapped)
    assert tapped.sent_types == [START, BODY, BODY, "http.response.trailers"]
    assert tapped.response_complete is True
    assert status_document(middleware)["requests"]["total"] == 1


def test_unknown_extension_message_passes_through(make_middleware: MakeMiddleware) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": "http.response.zerocopy", "file": 7, "count": 10, "more_body": False})

    scope = make_http_scope("GET", "/zc", headers=[], extensions={"http.response.zerocopy": {}})
    middleware = make_middleware(app)
    bare = run_asgi(app, scope)
    tapped = run_asgi(middleware, scope)

    assert_same_exchange(bare, tapped)
    assert tapped.sent[-1] == {"type": "http.response.zerocopy", "file": 7, "count": 10, "more_body": False}


# --- C18: disabled means a pure passthrough ---------------------------------------------------------


def worker_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("modeltap"))


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "environ",
    [{"MODELTAP_ENABLED": "false"}, {"OTEL_SDK_DISABLED": "true"}, {"OTEL_SDK_DISABLED": "TRUE"}],
)
def test_disabled_by_environment_is_pure_passthrough(environ: dict[str, str]) -> None:
    threads_before = worker_threads()
    config = ModelTapConfig.from_env(environ, monitor="inline", model_name="demo")
    assert config.enabled is False
    middleware = ModelTapMiddleware(ok_app, config=config)
    try:
        for scope, messages in (
            (
                make_http_scope("POST", "/predict"),
                http_request_messages(b'{"instances": [[1, 2]]}', chunk_size=3),
            ),
            (make_http_scope("GET", "/modeltap/status", headers=[]), http_request_messages()),
            (make_http_scope("GET", "/modeltap/metrics", headers=[]), http_request_messages()),
        ):
            bare = run_asgi(ok_app, scope, messages)
            tapped = run_asgi(middleware, scope, messages)
            assert_same_exchange(bare, tapped)
            # The views are not served: the app itself answered.
            assert json.loads(tapped.body)["path"] == scope["path"]
        assert worker_threads() == threads_before
        assert middleware.tap.flush(1.0)
        assert middleware.tap.latest_snapshot().duration == ()
    finally:
        middleware.tap.shutdown()


def test_disabled_from_process_environment(clean_otel_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELTAP_ENABLED", "false")
    middleware = ModelTapMiddleware(ok_app, model_name="demo", monitor="inline")
    try:
        result = run_asgi(middleware, make_http_scope("GET", "/modeltap/status", headers=[]))
        assert json.loads(result.body) == {"path": "/modeltap/status", "received": 0}
    finally:
        middleware.tap.shutdown()


def test_plain_text_starlette_app_identical(make_middleware: MakeMiddleware) -> None:
    """A framework app end to end (Starlette adds its own headers) stays identical."""

    async def hello(request: Request) -> Response:
        return PlainTextResponse(f"hello {request.path_params['name']}")

    app = Starlette(routes=[Route("/hello/{name}", hello)])
    scope = make_http_scope("GET", "/hello/world", headers=[(b"host", b"testserver")])
    middleware = make_middleware(app)

    bare = run_asgi(app, scope)
    tapped = run_asgi(middleware, scope)

    assert_same_exchange(bare, tapped)
    assert tapped.body == b"hello world"
