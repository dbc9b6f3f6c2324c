"""Self-test for the scripted ASGI driver in ``tests/support/asgi_driver.py``.

Middleware tests trust this driver to report exactly what an app received and sent, so these tests pin
its recordings against a real Starlette app and against bare ASGI apps with known behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.asgi_driver import (
    ASGIApp,
    DriverTimeoutError,
    Message,
    Receive,
    RecordingSend,
    Scope,
    ScriptedReceive,
    Send,
    http_request_messages,
    make_http_scope,
    run_asgi,
    run_asgi_async,
    run_lifespan,
)

START = "http.response.start"
BODY = "http.response.body"


class DemoError(Exception):
    """Raised by the demo endpoints so tests can check the exact object comes back."""


@dataclass
class Probe:
    """What the demo apps did, seen from inside them."""

    raised: list[BaseException] = field(default_factory=list)
    events: list[tuple[str, float]] = field(default_factory=list)


def build_demo_app(probe: Probe) -> Starlette:
    async def echo(request: Request) -> Response:
        return JSONResponse({"echo": await request.json()})

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for index in range(5):
                yield f"chunk-{index}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    async def boom(request: Request) -> Response:
        error = DemoError("failed before the response started")
        probe.raised.append(error)
        raise error

    async def boom_mid_stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first,"
            yield b"second,"
            error = DemoError("failed mid-stream")
            probe.raised.append(error)
            raise error

        return StreamingResponse(chunks(), media_type="text/plain")

    async def background(request: Request) -> Response:
        async def after_response() -> None:
            await asyncio.sleep(0.05)
            probe.events.append(("background-done", time.perf_counter()))

        return PlainTextResponse("accepted", status_code=202, background=BackgroundTask(after_response))

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream),
            Route("/boom", boom),
            Route("/boom-mid-stream", boom_mid_stream),
            Route("/background", background),
        ]
    )


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def demo_app(probe: Probe) -> Starlette:
    return build_demo_app(probe)


def get(path: str) -> dict[str, Any]:
    return make_http_scope("GET", path, headers=[])


def passthrough(app: ASGIApp) -> ASGIApp:
    """The simplest correct middleware: must not change any message sequence."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        async def inner_receive() -> Message:
            return await receive()

        async def inner_send(message: Message) -> None:
            await send(message)

        await app(scope, inner_receive, inner_send)

    return middleware


# --- scope --------------------------------------------------------------------------------------------


def test_make_http_scope_is_spec_complete() -> None:
    scope = make_http_scope()

    assert scope == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def test_make_http_scope_prefixes_root_path_and_percent_encodes_raw_path() -> None:
    scope = make_http_scope(
        "get",
        "/models/café v2",
        headers=[(b"x-trace", b"1")],
        query_string=b"a=1&b=2",
        root_path="/api",
        extensions={"http.response.trailers": {}},
        state={"model": "m"},
    )

    assert scope["method"] == "GET"
    assert scope["path"] == "/api/models/café v2"
    assert scope["raw_path"] == b"/api/models/caf%C3%A9%20v2"
    assert scope["root_path"] == "/api"
    assert scope["query_string"] == b"a=1&b=2"
    assert scope["headers"] == [(b"x-trace", b"1")]
    assert scope["extensions"] == {"http.response.trailers": {}}
    assert scope["state"] == {"model": "m"}


def test_starlette_routes_a_root_path_scope_like_uvicorn_does(demo_app: Starlette) -> None:
    result = run_asgi(demo_app, make_http_scope("GET", "/stream", headers=[], root_path="/api"))

    assert result.status == 200


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path": "predict"}, "path must start"),
        ({"root_path": "/api/"}, "root_path"),
    ],
)
def test_make_http_scope_rejects_malformed_paths(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_http_scope(**kwargs)


def test_http_request_messages_splits_body_and_marks_only_the_last_final() -> None:
    assert http_request_messages() == [{"type": "http.request", "body": b"", "more_body": False}]
    assert http_request_messages(b"abcde", chunk_size=2) == [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": True},
        {"type": "http.request", "body": b"e", "more_body": False},
    ]
    with pytest.raises(ValueError, match="chunk_size"):
        http_request_messages(b"x", chunk_size=0)


# --- Starlette app --------------------------------------------------------------------------------------


def test_json_echo_records_both_directions(demo_app: Starlette) -> None:
    request: list[Message] = [
        {"type": "http.request", "body": b'{"features": ', "more_body": True},
        {"type": "http.request", "body": b"[1, 2]}"},
    ]

    result = run_asgi(demo_app, make_http_scope("POST", "/echo"), request)

    assert result.exception is None
    assert result.received == request
    assert result.receive_calls == 2
    assert result.sent_types == [START, BODY]
    assert result.status == 200
    assert result.header(b"Content-Type") == b"application/json"
    assert result.header(b"content-length") == str(len(result.body)).encode()
    assert json.loads(result.body) == {"echo": {"features": [1, 2]}}
    assert result.response_complete
    assert result.delivered == result.sent
    assert result.started_at <= result.send_records[0].at <= result.finished_at


def test_streaming_response_records_five_chunks_then_the_end(demo_app: Starlette) -> None:
    result = run_asgi(demo_app, get("/stream"))

    assert result.exception is None
    assert result.sent_types == [START] + [BODY] * 6
    assert [message.get("more_body") for message in result.sent[1:]] == [True] * 5 + [False]
    assert result.body == b"".join(f"chunk-{index}\n".encode() for index in range(5))
    assert result.response_complete
    times = [record.at for record in result.send_records]
    assert times == sorted(times)
    assert result.response_completed_at == times[-1]


def test_exception_before_response_start_is_recorded_unchanged(demo_app: Starlette, probe: Probe) -> None:
    result = run_asgi(demo_app, get("/boom"))

    # ServerErrorMiddleware answers 500 and then re-raises the very same exception to the server.
    assert result.exception is probe.raised[0]
    assert result.sent_types == [START, BODY]
    assert result.status == 500
    assert result.body == b"Internal Server Error"
    assert result.response_complete


def test_exception_mid_stream_leaves_the_response_incomplete(demo_app: Starlette, probe: Probe) -> None:
    result = run_asgi(demo_app, get("/boom-mid-stream"))

    assert result.exception is probe.raised[0]
    assert result.sent_types == [START, BODY, BODY]
    assert result.status == 200
    assert result.body == b"first,second,"
    assert not result.response_complete
    assert result.response_completed_at is None


def test_background_task_runs_after_the_response_completed(demo_app: Starlette, probe: Probe) -> None:
    result = run_asgi(demo_app, get("/background"))

    assert result.exception is None
    assert result.status == 202
    assert result.body == b"accepted"
    assert result.response_completed_at is not None
    [(_, background_done_at)] = probe.events
    assert result.response_completed_at < background_done_at <= result.finished_at
    assert result.elapsed >= 0.045  # asyncio may fire a timer up to its clock resolution early


def test_passthrough_middleware_produces_identical_sequences(demo_app: Starlette) -> None:
    scope = make_http_scope("POST", "/echo")
    request = http_request_messages(b'{"x": 1}', chunk_size=3)

    bare = run_asgi(demo_app, scope, request)
    wrapped = run_asgi(passthrough(demo_app), scope, request)

    assert wrapped.sent == bare.sent
    assert wrapped.received == bare.received
    assert wrapped.exception is bare.exception is None


def test_the_caller_scope_is_copied_so_runs_can_share_it(demo_app: Starlette) -> None:
    scope = get("/stream")
    original = json.dumps(scope, default=repr, sort_keys=True)

    result = run_asgi(demo_app, scope)

    assert json.dumps(scope, default=repr, sort_keys=True) == original
    assert result.scope["router"] is demo_app.router  # Starlette's own writes are visible in the result


# --- client gone: raise_after / noop_after --------------------------------------------------------------


def test_raise_after_becomes_client_disconnect_in_starlette(demo_app: Starlette) -> None:
    result = run_asgi(demo_app, get("/stream"), raise_after=2)

    # Spec 2.4: the third send raises OSError; StreamingResponse turns that into ClientDisconnect.
    assert isinstance(result.exception, ClientDisconnect)
    assert isinstance(result.exception.__context__, OSError)
    assert str(result.exception.__context__) == "client disconnected"
    assert [record.outcome for record in result.send_records] == ["delivered", "delivered", "raised"]
    assert result.body == b"chunk-0\n"
    assert not result.response_complete


def test_raise_after_raises_oserror_into_a_bare_app_and_keeps_raising() -> None:
    errors: list[OSError] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await send({"type": START, "status": 200, "headers": []})
        for _ in range(2):
            try:
                await send({"type": BODY, "body": b"x", "more_body": True})
            except OSError as exc:
                errors.append(exc)
        message = await receive()  # a server that saw the client go reports it on receive as well
        assert message == {"type": "http.disconnect"}

    result = run_asgi(app, get("/"), raise_after=1)

    assert result.exception is None
    assert [str(error) for error in errors] == ["client disconnected"] * 2
    assert [record.outcome for record in result.send_records] == ["delivered", "raised", "raised"]
    assert result.received_types == ["http.request", "http.disconnect"]


def test_noop_after_drops_silently_and_the_app_finishes(demo_app: Starlette) -> None:
    result = run_asgi(demo_app, get("/stream"), noop_after=2)

    assert result.exception is None
    assert len(result.sent) == 7
    assert [record.outcome for record in result.send_records] == ["delivered"] * 2 + ["dropped"] * 5
    assert result.delivered == result.sent[:2]
    assert result.body == b"chunk-0\n"
    assert not result.response_complete


# --- receive: script, blocking, disconnect ----------------------------------------------------------------


def test_disconnect_at_injects_a_disconnect_and_truncates_the_script(demo_app: Starlette) -> None:
    request = http_request_messages(b'{"x": 1}', chunk_size=4)

    result = run_asgi(demo_app, make_http_scope("POST", "/echo"), request, disconnect_at=1)

    assert result.received == [request[0], {"type": "http.disconnect"}]
    # Starlette's request.body() raises ClientDisconnect; ServerErrorMiddleware still answers 500 first.
    assert isinstance(result.exception, ClientDisconnect)
    assert result.status == 500


def test_after_a_disconnect_every_receive_reports_it_again() -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.extend([await receive() for _ in range(3)])

    result = run_asgi(app, get("/"), [{"type": "http.request", "body": b"a"}], disconnect_at=0)

    assert seen == [{"type": "http.disconnect"}] * 3
    assert result.receive_calls == 3


def test_receive_blocks_after_the_script_until_disconnect() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await receive()  # nothing more scripted: must block until the client goes away

    async def scenario() -> tuple[bool, bool, Any]:
        receive = ScriptedReceive(http_request_messages(b"body"))
        running = asyncio.ensure_future(run_asgi_async(app, get("/"), receive))
        await asyncio.sleep(0.05)
        blocked = not running.done() and receive.calls == 2
        receive.disconnect()
        result = await running
        return blocked, receive.disconnected, result

    blocked, disconnected, result = asyncio.run(scenario())

    assert blocked
    assert disconnected
    assert result.received_types == ["http.request", "http.disconnect"]
    assert result.exception is None


def test_disconnect_from_another_thread_wakes_a_blocked_receive() -> None:
    receive = ScriptedReceive()

    async def app(scope: Scope, receive_: Receive, send: Send) -> None:
        threading.Timer(0.05, receive.disconnect).start()
        assert await receive_() == {"type": "http.disconnect"}

    result = run_asgi(app, get("/"), receive, timeout=2.0)

    assert result.exception is None
    assert result.elapsed >= 0.04


def test_disconnect_after_response_answers_once_the_response_is_complete() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": START, "status": 204, "headers": []})
        await send({"type": BODY, "body": b""})
        # Like Starlette's listen_for_disconnect: uvicorn answers at once when the response is done.
        assert await receive() == {"type": "http.disconnect"}

    result = run_asgi(app, get("/"), disconnect_after_response=True, timeout=2.0)

    assert result.exception is None
    assert result.received_types == ["http.request", "http.disconnect"]


def test_on_message_can_disconnect_the_client_mid_response() -> None:
    receive = ScriptedReceive(http_request_messages())

    def on_message(message: Message) -> None:
        if message["type"] == START:
            receive.disconnect()

    async def app(scope: Scope, receive_: Receive, send: Send) -> None:
        await receive_()
        await send({"type": START, "status": 200, "headers": []})
        assert await receive_() == {"type": "http.disconnect"}

    result = run_asgi(app, get("/"), receive, send=RecordingSend(on_message=on_message))

    assert result.exception is None
    assert result.received_types == ["http.request", "http.disconnect"]


def test_received_messages_are_copies_the_app_cannot_corrupt() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        message["body"] = b"tampered"

    script = [{"type": "http.request", "body": b"original"}]

    result = run_asgi(app, get("/"), script)

    assert result.received == [{"type": "http.request", "body": b"original"}]
    assert script == [{"type": "http.request", "body": b"original"}]


# --- send: recording, strictness, callbacks -------------------------------------------------------------


def test_sent_messages_are_snapshots_unaffected_by_later_mutation() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/plain")]
        start = {"type": START, "status": 200, "headers": headers}
        await send(start)
        headers.append((b"x-late", b"1"))
        start["status"] = 500
        buffer = bytearray(b"abc")
        await send({"type": BODY, "body": buffer})
        buffer[:] = b"xyz"

    result = run_asgi(app, get("/"))

    assert result.sent == [
        {"type": START, "status": 200, "headers": [(b"content-type", b"text/plain")]},
        {"type": BODY, "body": bytearray(b"abc")},
    ]
    assert result.body == b"abc"


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([{"type": BODY, "body": b"x"}], "Expected ASGI message 'http.response.start'"),
        (
            [{"type": START, "status": 200}, {"type": BODY}, {"type": BODY}],
            "after response already completed",
        ),
        (
            [
                {"type": START, "status": 200, "headers": [(b"content-length", b"5")]},
                {"type": BODY, "body": b"abc"},
            ],
            "shorter than Content-Length",
        ),
        ([{"type": START, "status": 200, "headers": [("content-type", "text/plain")]}], "byte strings"),
        ([{"type": START, "status": "200"}], "integer status"),
        ([{"type": START, "status": 200, "trailers": True}], "did not advertise"),
        ([{"type": "http.response.early_hint", "links": []}], "Unadvertised"),
    ],
)
def test_strict_send_rejects_protocol_violations_like_a_server(messages: list[Message], error: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in messages:
            await send(message)

    result = run_asgi(app, get("/"))

    assert isinstance(result.exception, RuntimeError)
    assert error in str(result.exception)
    assert result.send_records[-1].outcome == "rejected"
    assert result.sent == messages


def test_non_strict_send_records_whatever_the_app_sends() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": BODY, "body": b"early"})
        await send({"type": "custom.event"})

    result = run_asgi(app, get("/"), strict=False)

    assert result.exception is None
    assert result.sent_types == [BODY, "custom.event"]


def test_non_strict_summary_skips_malformed_headers_instead_of_crashing() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[Any] = [("content-type", "text/plain"), (b"x-ok", b"1"), (b"bad",)]
        await send({"type": START, "status": 200, "headers": headers})
        await send({"type": BODY, "body": b"done"})

    result = run_asgi(app, get("/"), strict=False)

    assert result.exception is None
    assert result.headers == [(b"x-ok", b"1")]
    assert result.body == b"done"
    assert result.response_complete


def test_trailers_complete_the_response_only_when_advertised_and_sent() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": [], "trailers": True})
        await send({"type": BODY, "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"1")]})

    scope = make_http_scope("GET", "/", headers=[], extensions={"http.response.trailers": {}})
    records: list[bool] = []
    recorder = RecordingSend(on_message=lambda message: records.append(recorder.response_complete))

    result = run_asgi(app, scope, send=recorder)

    assert result.exception is None
    assert records == [False, False, True]
    assert result.response_complete


def test_on_message_sees_every_message_and_may_be_async() -> None:
    seen: list[str] = []

    async def slow_client(message: Message) -> None:
        seen.append(message["type"])
        await asyncio.sleep(0.02)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": b"a", "more_body": True})
        await send({"type": BODY, "body": b"b"})

    result = run_asgi(app, get("/"), on_message=slow_client, noop_after=2)

    assert seen == [START, BODY, BODY]  # dropped messages are reported too
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(result.send_records)]
    assert all(gap >= 0.015 for gap in gaps)


# --- time box ---------------------------------------------------------------------------------------------


def test_a_hung_app_fails_with_a_partial_result_instead_of_hanging() -> None:
    cancelled = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": []})
        try:
            await receive()
            await receive()  # never answered: no disconnect is scripted
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.perf_counter()
    with pytest.raises(DriverTimeoutError, match=r"did not finish within 0\.2s") as caught:
        run_asgi(app, get("/"), timeout=0.2)

    assert time.perf_counter() - started < 2.0
    assert cancelled.is_set()
    result = caught.value.result
    assert not isinstance(result, list)
    assert result.sent_types == [START]
    assert result.receive_calls == 2
    assert result.exception is None


def test_an_app_raising_timeout_error_is_recorded_not_mistaken_for_the_time_box() -> None:
    error = TimeoutError("model backend timed out")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise error

    result = run_asgi(app, get("/"), timeout=1.0)

    assert result.exception is error


def test_run_asgi_async_works_inside_a_running_loop(demo_app: Starlette) -> None:
    async def scenario() -> bytes:
        result = await run_asgi_async(demo_app, get("/stream"))
        return result.body

    assert asyncio.run(scenario()).startswith(b"chunk-0\n")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"disconnect_at": 2},
        {"raise_after": -1},
        {"receive_messages": ScriptedReceive(), "disconnect_at": 0},
        {"send": RecordingSend(), "noop_after": 1},
    ],
)
def test_inconsistent_options_are_rejected(kwargs: dict[str, Any]) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("must not run")

    kwargs.setdefault("receive_messages", http_request_messages())
    with pytest.raises(ValueError, match=r"must|configure"):
        run_asgi(app, get("/"), **kwargs)


@settings(max_examples=40, deadline=None)
@given(chunks=st.lists(st.binary(max_size=32), max_size=6))
def test_streamed_echo_body_round_trips_for_any_chunking(chunks: list[bytes]) -> None:
    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": START, "status": 200, "headers": []})
        while True:
            message = await receive()
            more = bool(message.get("more_body", False))
            await send({"type": BODY, "body": message["body"], "more_body": more})
            if not more:
                return

    request = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks or [b""])
    ]

    result = run_asgi(echo, get("/"), request)

    assert result.exception is None
    assert result.received == request
    assert result.body == b"".join(chunks)
    assert result.response_complete


# --- lifespan --------------------------------------------------------------------------------------------


def build_lifespan_app(probe: Probe, *, fail: bool) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        probe.events.append(("startup", time.perf_counter()))
        if fail:
            error = DemoError("model weights missing")
            probe.raised.append(error)
            raise error
        yield {"model": "loaded"}
        probe.events.append(("shutdown", time.perf_counter()))

    return Starlette(lifespan=lifespan)


def test_lifespan_startup_and_shutdown_complete(probe: Probe) -> None:
    result = run_lifespan(build_lifespan_app(probe, fail=False))

    assert result == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert result.received == [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    assert result.exception is None
    assert result.startup_complete
    assert not result.startup_failed
    assert result.state == {"model": "loaded"}
    assert [name for name, _ in probe.events] == ["startup", "shutdown"]


def test_lifespan_startup_failure_reports_message_and_the_exact_exception(probe: Probe) -> None:
    result = run_lifespan(build_lifespan_app(probe, fail=True), fail_startup=True)

    assert result.types == ["lifespan.startup.failed"]
    assert result.failure_message is not None
    assert "model weights missing" in result.failure_message
    assert result.exception is probe.raised[0]
    assert result.received == [{"type": "lifespan.startup"}]  # no shutdown after a failed startup


def test_fail_startup_flags_an_app_whose_startup_succeeded(probe: Probe) -> None:
    with pytest.raises(AssertionError, match="expected lifespan startup to fail"):
        run_lifespan(build_lifespan_app(probe, fail=False), fail_startup=True)


def test_lifespan_against_an_app_without_lifespan_support() -> None:
    error = RuntimeError("unsupported scope type")

    async def http_only(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise error

    result = run_lifespan(http_only)

    assert result == []
    assert result.exception is error
    assert result.startup_failed
    assert run_lifespan(http_only, fail_startup=True).exception is error


def test_lifespan_app_still_waiting_after_a_failed_startup_is_abandoned() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no GPU"})
        await receive()  # a server that failed to start never answers this

    result = run_lifespan(app, timeout=2.0)

    assert result.types == ["lifespan.startup.failed"]
    assert result.failure_message == "no GPU"
    assert result.abandoned
    assert result.exception is None


def test_lifespan_app_that_never_answers_times_out() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.Event().wait()

    with pytest.raises(DriverTimeoutError, match="lifespan app did not answer") as caught:
        run_lifespan(app, timeout=0.2)

    assert caught.value.result == []


def test_lifespan_state_reaches_http_scope(probe: Probe) -> None:
    app = build_lifespan_app(probe, fail=False)
    lifespan = run_lifespan(app)

    async def reads_state(scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps(scope["state"]).encode()
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": body})

    result = run_asgi(reads_state, make_http_scope("GET", "/", state=lifespan.state))

    assert json.loads(result.body) == {"model": "loaded"}
