"""What the middleware records about each exchange, read back through the public views.

Rows: C10 (latency excludes background work), C16 (route templates, HEAD, 204), E6 (bad payloads
never affect the response, and are counted), E9 (non-200 responses captured), plus exact counts under
concurrency, queue overflow (drop and count, never block) and the decoded KServe V1 feature counts.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Host, Mount, Route

from modeltap import ModelTapMiddleware
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
    run_asgi_async,
)
from tests.support.tapping import BODY, PROMETHEUS_LABEL, START, MakeMiddleware, status_document

# Every test here runs with the compiled capture and with the pure-Python one.
pytestmark = pytest.mark.usefixtures("each_capture_form")

MIB = 1024 * 1024
KSERVE_BODY = b'{"instances": [[1, 2], [3, null]]}'


# --- helpers -------------------------------------------------------------------------------------


def metrics_text(middleware: ModelTapMiddleware) -> str:
    assert middleware.tap.flush(5.0)
    result = run_asgi(middleware, make_http_scope("GET", "/modeltap/metrics", headers=[]))
    assert result.status == 200, result.body
    return result.body.decode()


def duration_count_series(text: str) -> list[dict[str, str]]:
    """Label sets (plus the sample value under `value`) of every duration `_count` sample."""
    series = []
    for line in text.splitlines():
        if line.startswith("http_server_request_duration_seconds_count{"):
            labels, value = line[len("http_server_request_duration_seconds_count") :].rsplit(" ", 1)
            series.append({**dict(PROMETHEUS_LABEL.findall(labels)), "value": value})
    return series


def feature(document: dict[str, Any], name: str, role: str = "input") -> dict[str, Any]:
    matches = [
        f
        for model in document["models"]
        for f in model["features"]
        if f["name"] == name and f["role"] == role
    ]
    assert len(matches) == 1, (name, role, document["models"])
    found: dict[str, Any] = matches[0]
    return found


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def json_app(status: int = 200, payload: bytes = b'{"predictions": [0, 1]}') -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": START, "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": BODY, "body": payload})

    return app


def assert_same_response(bare: DriverResult, tapped: DriverResult) -> None:
    assert tapped.received == bare.received
    assert tapped.sent == bare.sent
    assert tapped.status == bare.status
    assert tapped.body == bare.body
    assert tapped.exception is None
    assert bare.exception is None


def predict_scope(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return make_http_scope("POST", "/v1/models/demo:predict", headers=headers)


# --- decoded data ----------------------------------------------------------------------------------


def test_kserve_v1_features_and_missing_counts_are_exact(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(json_app(), model_name="demo")
    result = run_asgi(middleware, predict_scope(), http_request_messages(KSERVE_BODY))
    assert result.status == 200

    document = status_document(middleware)

    assert document["requests"]["total"] == 1
    [model] = document["models"]
    assert model["name"] == "demo"
    assert model["decoded_rows"] == 2
    f0, f1 = feature(document, "f0"), feature(document, "f1")
    assert (f0["count"], f0["missing"]) == (2, 0)
    assert (f1["count"], f1["missing"]) == (1, 1)
    assert (f0["mean"], f0["min"], f0["max"]) == (2.0, 1.0, 3.0)
    assert (f1["mean"], f1["missing_rate"]) == (2.0, 0.5)
    prediction = feature(document, "prediction", role="output")
    assert (prediction["count"], prediction["missing"]) == (2, 0)
    assert document["violations"] == {"missing": 1}


def test_model_name_comes_from_the_kserve_path_when_not_configured(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(json_app(), model_name=None)  # None: not configured
    run_asgi(
        middleware, make_http_scope("POST", "/v1/models/churn:predict"), http_request_messages(KSERVE_BODY)
    )

    document = status_document(middleware)

    assert [m["name"] for m in document["models"]] == ["churn"]
    assert feature(document, "f1")["missing"] == 1


@pytest.mark.timeout(60)
def test_body_split_anywhere_decodes_to_the_same_counts(make_middleware: MakeMiddleware) -> None:
    """C1: capture is the concatenation of the chunks, whatever their boundaries."""
    middleware = make_middleware(json_app(), model_name="demo")
    runs = 0

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(cuts=st.lists(st.integers(min_value=0, max_value=len(KSERVE_BODY)), max_size=6))
    def check(cuts: list[int]) -> None:
        nonlocal runs
        edges = [0, *sorted(cuts), len(KSERVE_BODY)]
        chunks = [KSERVE_BODY[a:b] for a, b in itertools.pairwise(edges)]
        messages: list[Message] = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]
        result = run_asgi(middleware, predict_scope(), messages)
        assert result.status == 200
        runs += 1
        document = status_document(middleware)
        assert feature(document, "f0")["count"] == 2 * runs
        assert feature(document, "f1")["missing"] == runs
        assert document["violations"] == {"missing": runs}

    check()
    assert runs > 0


# --- E6: payloads the decoder cannot use ----------------------------------------------------------


def gzip_bomb() -> bytes:
    return gzip.compress(b'{"instances": [' + b"[0]," * 100_000 + b"[0]]}")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("headers", "body", "violation"),
    [
        ([(b"content-type", b"application/json")], b'{"instances": [[1, 2], ', "decode_error"),
        ([(b"content-type", b"application/octet-stream")], bytes(range(256)) * 4, "decode_error"),
        (
            [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")],
            b"not gzip",
            "decode_error",
        ),
        ([(b"content-type", b"application/json"), (b"content-encoding", b"br")], KSERVE_BODY, "decode_error"),
    ],
    ids=["truncated-json", "binary", "broken-gzip", "unknown-coding"],
)
def test_undecodable_request_is_counted_and_never_affects_the_response(
    make_middleware: MakeMiddleware, headers: list[tuple[bytes, bytes]], body: bytes, violation: str
) -> None:
    app = json_app()
    middleware = make_middleware(app, model_name="demo")
    messages = http_request_messages(body, chunk_size=100)

    bare = run_asgi(app, predict_scope(headers), messages)
    tapped = run_asgi(middleware, predict_scope(headers), messages)

    assert_same_response(bare, tapped)
    document = status_document(middleware)
    assert document["requests"]["total"] == 1
    assert document["requests"]["errors"] == 0
    assert document["violations"] == {violation: 1}
    assert document["monitoring"]["internal_errors"] == {}


def test_gzip_request_body_is_decoded_and_passed_through_compressed(make_middleware: MakeMiddleware) -> None:
    app = json_app()
    middleware = make_middleware(app, model_name="demo")
    body = gzip.compress(KSERVE_BODY)
    headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]

    bare = run_asgi(app, predict_scope(headers), http_request_messages(body))
    tapped = run_asgi(middleware, predict_scope(headers), http_request_messages(body))

    assert_same_response(bare, tapped)
    assert tapped.received[0]["body"] == body
    document = status_document(middleware)
    assert feature(document, "f0")["count"] == 2
    assert document["violations"] == {"missing": 1}


def test_gzip_bomb_is_skipped_and_counted(make_middleware: MakeMiddleware) -> None:
    app = json_app()
    middleware = make_middleware(app, model_name="demo", max_body_bytes=64 * 1024)
    body = gzip_bomb()
    assert len(body) < 64 * 1024
    headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]

    bare = run_asgi(app, predict_scope(headers), http_request_messages(body))
    tapped = run_asgi(middleware, predict_scope(headers), http_request_messages(body))

    assert_same_response(bare, tapped)
    document = status_document(middleware)
    assert document["requests"]["total"] == 1
    assert document["dropped"]["body_too_large"] == 1
    assert document["models"][0]["features"] == []


@pytest.mark.timeout(30)
def test_body_over_the_decode_cap_is_skipped_and_counted(make_middleware: MakeMiddleware) -> None:
    async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        await send({"type": START, "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": BODY, "body": json.dumps({"predictions": [len(body)]}).encode()})

    big = b'{"instances": [' + b"[1.5, 2.5]," * (10 * MIB // 11) + b"[0, 0]]}"
    assert len(big) > 10 * MIB - 16
    messages = http_request_messages(big, chunk_size=256 * 1024)
    middleware = make_middleware(echo_length, model_name="demo", max_body_bytes=MIB)

    bare = run_asgi(echo_length, predict_scope(), messages)
    tapped = run_asgi(middleware, predict_scope(), messages)

    assert_same_response(bare, tapped)
    assert json.loads(tapped.body) == {"predictions": [len(big)]}
    document = status_document(middleware)
    assert document["requests"]["total"] == 1
    assert document["dropped"]["body_over_cap"] == 1
    assert document["violations"] == {}
    assert document["models"][0]["features"] == []


def test_rejected_exchanges_count_data_quality_but_feed_no_feature_state(
    make_middleware: MakeMiddleware,
) -> None:
    # A 400 is the model refusing the input: its body is not a prediction, and its inputs are
    # not part of the distribution the model serves; their violations still count.
    app = json_app(status=400, payload=b'{"error": "bad input"}')
    middleware = make_middleware(app, model_name="demo")

    run_asgi(middleware, predict_scope(), http_request_messages(KSERVE_BODY))

    document = status_document(middleware)
    assert [f for m in document["models"] for f in m["features"]] == []
    assert document["violations"] == {"missing": 1}
    assert document["requests"]["total"] == 1


# --- E9: every status is captured -----------------------------------------------------------------


@pytest.mark.parametrize(("status", "is_error"), [(200, False), (404, False), (429, False), (503, True)])
def test_every_status_is_captured(make_middleware: MakeMiddleware, status: int, is_error: bool) -> None:
    middleware = make_middleware(json_app(status=status, payload=b'{"error": "x"}'), model_name="demo")

    result = run_asgi(middleware, predict_scope(), http_request_messages(KSERVE_BODY))
    assert result.status == status

    document = status_document(middleware)
    assert document["requests"]["total"] == 1
    assert document["requests"]["errors"] == (1 if is_error else 0)
    [series] = duration_count_series(metrics_text(middleware))
    assert series["http_response_status_code"] == str(status)
    assert series["value"] == "1"
    assert ("error_type" in series) is is_error
    if is_error:
        assert series["error_type"] == str(status)


def test_exception_before_start_records_latency_with_status_500(make_middleware: MakeMiddleware) -> None:
    class ScoringError(Exception):
        pass

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.01)
        raise ScoringError("bad weights")

    middleware = make_middleware(app, model_name="demo")
    result = run_asgi(middleware, predict_scope(), http_request_messages(KSERVE_BODY))
    assert isinstance(result.exception, ScoringError)

    document = status_document(middleware)
    assert document["latency_s"]["count"] == 1
    assert document["latency_s"]["max"] >= 0.01
    [series] = duration_count_series(metrics_text(middleware))
    assert series["http_response_status_code"] == "500"
    assert series["error_type"] in ("ScoringError", ScoringError.__qualname__)


# --- C10: background tasks ------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_latency_excludes_background_task_and_task_still_runs(make_middleware: MakeMiddleware) -> None:
    finished: list[float] = []

    async def after_response() -> None:
        await asyncio.sleep(0.5)
        finished.append(time.perf_counter())

    async def predict(request: Request) -> Response:
        await request.body()
        return JSONResponse({"predictions": [1]}, background=BackgroundTask(after_response))

    app = Starlette(routes=[Route("/v1/models/{name}:predict", predict, methods=["POST"])])
    middleware = make_middleware(app, model_name="demo")

    result = run_asgi(middleware, predict_scope(), http_request_messages(KSERVE_BODY))

    assert result.exception is None
    assert len(finished) == 1, "the background task was cancelled or skipped"
    assert result.elapsed >= 0.5
    assert result.response_completed_at is not None
    assert result.response_completed_at < finished[0]
    document = status_document(middleware)
    assert document["latency_s"]["count"] == 1
    assert document["latency_s"]["max"] < 0.25


# --- C16: route templates, mounts, HEAD, 204 -------------------------------------------------------


def build_starlette_app() -> Starlette:
    async def predict(request: Request) -> Response:
        await request.body()
        return JSONResponse({"predictions": [0, 1], "model": request.path_params["name"]})

    async def item(request: Request) -> Response:
        return PlainTextResponse(f"item {request.path_params['item_id']}")

    async def empty(request: Request) -> Response:
        return Response(status_code=204)

    predict_route = Route("/v1/models/{name}:predict", predict, methods=["POST"])
    return Starlette(
        routes=[
            predict_route,
            Route("/items/{item_id:int}", item, methods=["GET"]),
            Route("/feedback", empty, methods=["POST"]),
            Mount("/api", routes=[Route("/v1/models/{name}:predict", predict, methods=["POST"])]),
        ]
    )


def find_tap_middleware(app: Starlette) -> ModelTapMiddleware:
    """The instance Starlette built from `add_middleware` (the stack is built on first call)."""
    node: Any = app.middleware_stack
    while node is not None:
        if isinstance(node, ModelTapMiddleware):
            return node
        node = getattr(node, "app", None)
    raise AssertionError("ModelTapMiddleware not found in the middleware stack")


@pytest.fixture
def starlette_with_tap(clean_otel_env: None) -> Iterator[Starlette]:
    """`add_middleware` reads the process environment, so it is emptied of MODELTAP_*/OTEL_* first."""
    app = build_starlette_app()
    app.add_middleware(ModelTapMiddleware, model_name="demo", monitor="inline")
    yield app
    if app.middleware_stack is not None:
        find_tap_middleware(app).tap.shutdown()


@pytest.mark.timeout(30)
def test_route_template_is_recorded_not_the_raw_path(starlette_with_tap: Starlette) -> None:
    app = starlette_with_tap
    for name in ("alpha", "beta", "gamma"):
        result = run_asgi(
            app, make_http_scope("POST", f"/v1/models/{name}:predict"), http_request_messages(KSERVE_BODY)
        )
        assert result.status == 200
    for name in ("alpha", "beta"):
        result = run_asgi(
            app, make_http_scope("POST", f"/api/v1/models/{name}:predict"), http_request_messages(KSERVE_BODY)
        )
        assert result.status == 200

    series = duration_count_series(metrics_text(find_tap_middleware(app)))

    by_route = {s["http_route"]: s["value"] for s in series}
    assert by_route == {"/v1/models/{name}:predict": "3", "/api/v1/models/{name}:predict": "2"}
    assert not any("alpha" in s["http_route"] or "beta" in s["http_route"] for s in series)


@pytest.mark.timeout(30)
def test_route_template_under_a_server_root_path(starlette_with_tap: Starlette) -> None:
    """uvicorn --root-path: the template is relative to the application, the mount prefix included."""
    app = starlette_with_tap
    result = run_asgi(
        app,
        make_http_scope("POST", "/api/v1/models/x:predict", root_path="/svc"),
        http_request_messages(KSERVE_BODY),
    )
    assert result.status == 200

    [series] = duration_count_series(metrics_text(find_tap_middleware(app)))
    assert series["http_route"] == "/api/v1/models/{name}:predict"


@pytest.mark.timeout(30)
def test_mounts_with_parameters_give_templates_never_the_clients_text(clean_otel_env: None) -> None:
    """`root_path` holds what the client sent for a mount's parameters: the route's front is
    the mounts' own paths, as written, found in the router (the same route objects mounted in
    several places too); a mount's own 404 and a mount around a plain ASGI app are the mount's
    template (not its path twice)."""

    async def predict(request: Request) -> Response:
        await request.body()
        return JSONResponse({"predictions": [1]})

    async def plain(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("plain")(scope, receive, send)

    inner = [Route("/models/{name}:predict", predict, methods=["POST"])]
    app = Starlette(
        routes=[
            Mount("/t/{tenant}", routes=[Mount("/api", routes=inner), *inner]),
            Mount("/v{version}", routes=inner),
            Mount("/u/{uid:uuid}", routes=inner),
            Mount("/p/{prefix:path}/api", routes=inner),
            Mount("/raw", app=plain),
        ]
    )
    app.add_middleware(ModelTapMiddleware, model_name="demo", monitor="inline")
    try:
        sent = [
            ("POST", "/t/acme/models/m1:predict", 200),
            ("POST", "/t/globex/models/m2:predict", 200),
            ("POST", "/t/acme/api/models/m1:predict", 200),
            ("POST", "/t/t/models/m1:predict", 200),  # a value that is also a literal segment
            ("GET", "/t/initech/nope", 404),  # the mount matched, nothing inside it
            ("POST", "/v7/models/m1:predict", 200),
            ("POST", "/u/ABCDEF12-1234-4234-8234-1234567890AB/models/m1:predict", 200),  # converted
            ("POST", "/p/a/b/api/models/m1:predict", 200),  # a value over several segments
            ("GET", "/raw/anything", 200),
        ]
        for method, path, status in sent:
            body = http_request_messages(KSERVE_BODY if method == "POST" else b"")
            assert run_asgi(app, make_http_scope(method, path), body).status == status

        series = duration_count_series(metrics_text(find_tap_middleware(app)))
    finally:
        find_tap_middleware(app).tap.shutdown()
    by_route = {(s.get("http_route"), s["http_response_status_code"]): s["value"] for s in series}
    assert by_route == {
        ("/t/{tenant}/models/{name}:predict", "200"): "3",
        ("/t/{tenant}/api/models/{name}:predict", "200"): "1",
        ("/t/{tenant}", "404"): "1",
        ("/v{version}/models/{name}:predict", "200"): "1",  # part of a segment
        ("/u/{uid:uuid}/models/{name}:predict", "200"): "1",  # converted
        ("/p/{prefix:path}/api/models/{name}:predict", "200"): "1",  # over two segments
        ("/raw", "200"): "1",
    }
    for client_text in ("acme", "globex", "initech", "v7", "ABCDEF12", "/a/b"):
        assert not any(client_text in (s.get("http_route") or "") for s in series)


@pytest.mark.timeout(30)
def test_a_mount_parameter_hidden_by_a_route_parameter_never_becomes_the_route(clean_otel_env: None) -> None:
    """`path_params` holds one value per name: the route's `{name}` hides the mount's. The mount's
    template comes from the router, through middleware that keeps the app it wraps (in `app`
    or a name of its own); where the router cannot be seen into, the exchange has no route
    rather than the client's text."""

    async def predict(request: Request) -> Response:
        await request.body()
        return JSONResponse({"predictions": [1]})

    class Wrapped:  # an ASGI middleware, as they are usually written
        def __init__(self, app: Starlette) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.app(scope, receive, send)

    class Renamed:  # keeps its app under a name of its own
        def __init__(self, app: Starlette) -> None:
            self._inner = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self._inner(scope, receive, send)

    def hidden(app: Starlette) -> Any:  # a closure: nothing to look into
        async def call(scope: Scope, receive: Receive, send: Send) -> None:
            await app(scope, receive, send)

        return call

    inner = [Route("/models/{name}:predict", predict, methods=["POST"])]
    app = Starlette(
        routes=[
            Mount("/t/{name}", routes=inner),
            Mount("/w/{name}", app=Wrapped(Starlette(routes=inner))),
            Mount("/r/{name}", app=Renamed(Starlette(routes=inner))),
            Mount("/h/{name}", app=hidden(Starlette(routes=inner))),
        ]
    )
    app.add_middleware(ModelTapMiddleware, model_name="demo", monitor="inline")
    sent = ("/t/acme/models/m1:predict", "/t/globex/models/m1:predict", "/w/initech/models/m2:predict")
    try:
        for path in (*sent, "/r/pied/models/m4:predict", "/h/hooli/models/m3:predict"):
            assert (
                run_asgi(app, make_http_scope("POST", path), http_request_messages(KSERVE_BODY)).status == 200
            )
        series = duration_count_series(metrics_text(find_tap_middleware(app)))
    finally:
        find_tap_middleware(app).tap.shutdown()
    by_route = {s.get("http_route"): s["value"] for s in series}
    assert by_route == {
        "/t/{name}/models/{name}:predict": "2",
        "/w/{name}/models/{name}:predict": "1",
        "/r/{name}/models/{name}:predict": "1",
        None: "1",
    }


@pytest.mark.timeout(30)
def test_parameters_that_are_not_the_mounts_leave_the_route_alone(clean_otel_env: None) -> None:
    """A `Host` pattern's parameters, and those of a mount above the middleware, are in
    `path_params` but not in the mounts' part of `root_path`: the route is as without them."""

    async def x(request: Request) -> Response:
        return PlainTextResponse("x")

    sub = Starlette(routes=[Mount("/api", routes=[Route("/x", x)])])
    sub.add_middleware(ModelTapMiddleware, model_name="demo", monitor="inline")
    by_host = Starlette(routes=[Host("{name}.example.com", app=sub)])
    mounted = Starlette(routes=[Mount("/t/{tenant}", app=sub)])
    try:
        host_scope = make_http_scope("GET", "/api/x", headers=[(b"host", b"acme.example.com")])
        assert run_asgi(by_host, host_scope).status == 200
        assert run_asgi(mounted, make_http_scope("GET", "/t/globex/api/x")).status == 200
        series = duration_count_series(metrics_text(find_tap_middleware(sub)))
    finally:
        find_tap_middleware(sub).tap.shutdown()
    assert {(s.get("http_route"), s["value"]) for s in series} == {("/api/x", "2")}


@pytest.mark.timeout(30)
def test_fastapi_routers_included_under_two_prefixes_are_two_routes(clean_otel_env: None) -> None:
    """Recent FastAPI leaves the router's route (no prefix) in `scope["route"]`: the route is the
    whole template FastAPI resolved, so `/v1/...` and `/v2/...` are not filed as one."""
    router = APIRouter()

    @router.get("/things/{tid}")
    def thing(tid: int) -> dict[str, int]:
        return {"tid": tid}

    app = FastAPI()
    app.include_router(router, prefix="/v1")
    app.include_router(router, prefix="/v2/{tenant}")
    app.add_middleware(ModelTapMiddleware, model_name="demo", monitor="inline")
    try:
        for path in ("/v1/things/5", "/v2/acme/things/6", "/v2/globex/things/7"):
            assert run_asgi(app, make_http_scope("GET", path, headers=[])).status == 200
        series = duration_count_series(metrics_text(find_tap_middleware(app)))
    finally:
        find_tap_middleware(app).tap.shutdown()
    assert {s.get("http_route"): s["value"] for s in series} == {
        "/v1/things/{tid}": "1",
        "/v2/{tenant}/things/{tid}": "2",
    }


def test_unmatched_path_has_no_route_label(starlette_with_tap: Starlette) -> None:
    app = starlette_with_tap
    result = run_asgi(app, make_http_scope("GET", "/nope/123", headers=[]))
    assert result.status == 404

    [series] = duration_count_series(metrics_text(find_tap_middleware(app)))
    assert "http_route" not in series
    assert series["http_response_status_code"] == "404"


def test_head_and_204_are_identical_and_recorded(make_middleware: MakeMiddleware) -> None:
    app = build_starlette_app()
    middleware = make_middleware(app, model_name="demo")
    head = make_http_scope("HEAD", "/items/7", headers=[])
    no_content = make_http_scope("POST", "/feedback")

    for scope, messages in ((head, http_request_messages()), (no_content, http_request_messages(b"{}"))):
        bare = run_asgi(app, scope, messages)
        tapped = run_asgi(middleware, scope, messages)
        assert_same_response(bare, tapped)
        assert tapped.response_complete

    assert run_asgi(middleware, no_content, http_request_messages(b"{}")).body == b""
    series = {
        (s["http_request_method"], s["http_route"]): s
        for s in duration_count_series(metrics_text(middleware))
    }
    assert series[("HEAD", "/items/{item_id:int}")]["http_response_status_code"] == "200"
    assert series[("POST", "/feedback")]["http_response_status_code"] == "204"
    assert series[("POST", "/feedback")]["value"] == "2"


# --- concurrency and overload ---------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_fifty_concurrent_requests_are_counted_exactly(make_middleware: MakeMiddleware) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        await asyncio.sleep(0.01)  # interleave the requests
        await send({"type": START, "status": 200, "headers": []})
        await send({"type": BODY, "body": body})

    middleware = make_middleware(app, model_name="demo")

    async def burst() -> list[DriverResult]:
        return await asyncio.gather(
            *(
                run_asgi_async(middleware, predict_scope(), http_request_messages(b"[%d]" % i, chunk_size=2))
                for i in range(50)
            )
        )

    results = asyncio.run(burst())

    assert sorted(r.body for r in results) == sorted(b"[%d]" % i for i in range(50))
    document = status_document(middleware)
    assert document["requests"]["total"] == 50
    assert document["latency_s"]["count"] == 50
    assert feature(document, "f0")["count"] == 50


@pytest.mark.timeout(30)
def test_queue_overflow_drops_and_counts_without_touching_responses(make_middleware: MakeMiddleware) -> None:
    """queue_max_records=5 and a worker asleep for 10 s: the sixth record on is dropped and counted.

    Deterministic without hooks: the warm-up request holds its response until the worker has
    published its first snapshot, after which the worker sleeps `worker_interval_s` (10 s) unless a
    flush wakes it. So the warm-up record plus the first four of the burst fill the queue.
    """
    capacity = 5
    burst_size = 200
    middleware: ModelTapMiddleware | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        if scope["path"] == "/warm-up":
            assert middleware is not None
            tap = middleware.tap
            deadline = time.monotonic() + 5.0
            # A published snapshot is the same object on every call; before that each call builds one.
            while tap.latest_snapshot() is not tap.latest_snapshot():
                assert time.monotonic() < deadline, "worker never published"
                await asyncio.sleep(0.005)
        await send({"type": START, "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": BODY, "body": b'{"predictions": [1]}'})

    middleware = make_middleware(
        app, model_name="demo", queue_max_records=capacity, worker_interval_s=10.0, snapshot_interval_s=10.0
    )
    assert run_asgi(middleware, make_http_scope("POST", "/warm-up")).status == 200

    async def burst() -> list[DriverResult]:
        assert middleware is not None
        return [
            await run_asgi_async(middleware, predict_scope(), http_request_messages(KSERVE_BODY))
            for _ in range(burst_size)
        ]

    bare = run_asgi(app, predict_scope(), http_request_messages(KSERVE_BODY))
    started = time.monotonic()
    results = asyncio.run(burst())
    assert time.monotonic() - started < 5.0, "the request path blocked on a full queue"

    for result in results:
        assert_same_response(bare, result)
    document = status_document(middleware)
    sent = burst_size + 1
    assert document["dropped"]["queue_full"] == sent - capacity
    assert document["monitoring"]["records_processed"] == capacity
    assert document["requests"]["total"] == capacity
    assert document["requests"]["total"] + document["dropped"]["queue_full"] == sent
    assert document["requests"]["dropped"] == sent - capacity


@pytest.mark.timeout(30)
def test_queue_byte_bound_drops_and_counts(make_middleware: MakeMiddleware) -> None:
    """The queue is bounded in bytes too: a record that does not fit is dropped as queue_bytes."""
    app = json_app()
    middleware = make_middleware(
        app, model_name="demo", queue_max_bytes=1, worker_interval_s=10.0, snapshot_interval_s=10.0
    )

    results = [run_asgi(middleware, predict_scope(), http_request_messages(KSERVE_BODY)) for _ in range(3)]

    assert [r.status for r in results] == [200, 200, 200]
    document = status_document(middleware)
    assert document["dropped"]["queue_bytes"] == 3
    assert document["requests"]["total"] == 0
