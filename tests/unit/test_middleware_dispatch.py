"""The middleware's compiled call (`_speedups.Dispatch`): the normal case goes straight to the
compiled capture, every other case to `_dispatch`, and either way the exchange is handled as the
Python middleware handles it.

Which way a call went is read from an instance attribute standing in for `_dispatch` (the
compiled call looks the method up on the instance, as Python would); what the exchange did is
read from the client's side and from `/modeltap/status`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

import pytest
import uvicorn

from modeltap import ModelTapConfig, ModelTapMiddleware
from modeltap.capture import compiled
from modeltap.capture.exchange import TraceStarter, exchange_capture
from modeltap.capture.trace_context import TraceSampler
from modeltap.config import SamplerConfig
from modeltap.worker.sampling import Sampling
from tests.support.asgi_driver import (
    Receive,
    Scope,
    Send,
    http_request_messages,
    make_http_scope,
    run_asgi,
    run_lifespan,
)
from tests.support.tapping import MakeMiddleware, status_document

pytestmark = pytest.mark.usefixtures("each_capture_form")

BODY = b'{"instances": [[1.0, 2.0]]}'


async def model(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"predictions": [3.0]}'})


def counting_model(paths: list[str]) -> Any:
    """`model`, noting the path of every exchange that reaches it."""

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        paths.append(scope["path"])
        await model(scope, receive, send)

    return counting


class DispatchSpy:
    """Stands in for `ModelTapMiddleware._dispatch` on one instance and counts the calls."""

    def __init__(self, middleware: ModelTapMiddleware) -> None:
        self.calls = 0
        self._dispatch = middleware._dispatch
        middleware._dispatch = self  # type: ignore[method-assign]

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        self.calls += 1
        return self._dispatch(scope, receive, send)


@pytest.fixture
def middleware(make_middleware: MakeMiddleware) -> ModelTapMiddleware:
    tapped = make_middleware(model)
    answered = run_asgi(tapped, make_http_scope("POST", "/predict"), http_request_messages(BODY))
    assert answered.status == 200  # started: the tap has its capture
    return tapped


def predict(middleware: ModelTapMiddleware, path: str = "/predict", **scope: Any) -> int:
    result = run_asgi(middleware, {**make_http_scope("POST", path), **scope}, http_request_messages(BODY))
    assert result.exception is None
    assert result.body == b'{"predictions": [3.0]}'
    assert result.status is not None
    return result.status


def test_the_normal_exchange_skips_the_python_call(middleware: ModelTapMiddleware) -> None:
    spy = DispatchSpy(middleware)
    for _ in range(5):
        assert predict(middleware) == 200
    assert spy.calls == (0 if compiled.wanted() else 5)
    call = middleware(make_http_scope("POST", "/predict"), None, None)  # type: ignore[arg-type]
    # The compiled call hands back the capture's awaitable itself; the Python call a coroutine.
    assert inspect.iscoroutine(call) is not compiled.wanted()
    if inspect.iscoroutine(call):
        call.close()
    assert status_document(middleware)["requests"]["total"] == 6  # the fixture's, and these five


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/modeltap/status", {}),
        ("/modeltap", {}),
        ("/api/modeltap/status", {"root_path": "/api"}),
    ],
)
def test_the_local_views_go_through_the_python_call(
    middleware: ModelTapMiddleware, path: str, scope: dict[str, Any]
) -> None:
    spy = DispatchSpy(middleware)
    result = run_asgi(middleware, {**make_http_scope("GET", path, headers=[]), **scope})
    assert spy.calls == 1
    assert result.status == 200
    assert result.body != b'{"predictions": [3.0]}'  # a view answered, not the model
    assert status_document(middleware)["requests"]["total"] == 1  # a view is not an exchange


@pytest.mark.parametrize("path", ["/modeltapx", "/api/modeltapx"])
def test_a_path_that_only_starts_like_the_views_is_captured(
    middleware: ModelTapMiddleware, path: str
) -> None:
    spy = DispatchSpy(middleware)
    assert predict(middleware, path, root_path="/api") == 200
    assert spy.calls == 1  # the Python call decides: not a view
    assert status_document(middleware)["requests"]["total"] == 2


def test_the_views_prefix_a_user_configured_is_the_one_looked_at(make_middleware: MakeMiddleware) -> None:
    tapped = make_middleware(model, views_prefix="/ops/monitor")
    predict(tapped)
    spy = DispatchSpy(tapped)
    assert run_asgi(tapped, make_http_scope("GET", "/ops/monitor/status", headers=[])).status == 200
    assert spy.calls == 1
    predict(tapped, "/modeltap/status")  # no view there: the model answers, and it is captured
    assert tapped.tap.flush(5.0)
    document = json.loads(run_asgi(tapped, make_http_scope("GET", "/ops/monitor/status", headers=[])).body)
    assert document["requests"]["total"] == 2


class HeldSampling(Sampling):
    """Strides the worker's load-following cannot move while the test runs; counts `admit()`."""

    def __init__(self, stride: int, payload_stride: int) -> None:
        super().__init__(watermark=0.5)
        self.admission.stride, self.admission.payload_stride = stride, payload_stride  # what admit uses
        self.held = (stride, payload_stride)
        self.admitted: list[tuple[int, int]] = []

    @property
    def stride(self) -> int:
        return self.held[0]

    @stride.setter
    def stride(self, value: int) -> None:
        pass

    @property
    def payload_stride(self) -> int:
        return self.held[1]

    @payload_stride.setter
    def payload_stride(self, value: int) -> None:
        pass

    def admit(self) -> tuple[int, int]:
        weights = super().admit()
        self.admitted.append(weights)
        return weights


@pytest.mark.parametrize(
    ("stride", "payload_stride", "weights"),
    [
        (2, 1, [(0, 0), (2, 2)] * 3),
        (1, 3, [(1, 0), (1, 0), (1, 3)] * 2),
        (2, 2, [(0, 0), (2, 0), (0, 0), (2, 4), (0, 0), (2, 0)]),
    ],
)
def test_under_load_each_exchange_is_admitted_once(
    middleware: ModelTapMiddleware, stride: int, payload_stride: int, weights: list[tuple[int, int]]
) -> None:
    spy = DispatchSpy(middleware)
    sampling = middleware.tap.sampling = HeldSampling(stride, payload_stride)
    for _ in range(6):
        predict(middleware)  # the model answers every one, admitted or not
    assert sampling.admitted == weights
    assert spy.calls == (0 if compiled.wanted() else 6)
    document = status_document(middleware)
    # Every exchange is counted at its weight: six, besides the fixture's.
    assert document["requests"]["total"] == 1 + 6
    sampling.held = (1, 1)
    predict(middleware)
    assert len(sampling.admitted) == 6  # everything captured: no admit asked


def test_the_tap_s_own_sampling_admits_in_the_compiled_call(
    make_middleware: MakeMiddleware, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tap's `Sampling` itself (not a subclass) is admitted by its compiled admission with no
    Python call: the same counts, captures and kept payloads as the Python call gives."""
    answered: list[str] = []
    tapped = make_middleware(counting_model(answered))
    predict(tapped, "/predict/start")
    sampling = tapped.tap.sampling
    assert type(sampling) is Sampling
    # Strides the worker cannot move while the test runs (no load to follow, a frozen budget).
    monkeypatch.setattr(Sampling, "follow_load", lambda self, load: None)
    monkeypatch.setattr(Sampling, "follow_budget", lambda self, budget: None)
    assert tapped.tap.flush(5.0)
    sampling.stride, sampling.payload_stride = 2, 3
    spy = DispatchSpy(tapped)
    for index in range(12):
        predict(tapped, f"/predict/{index}")
    assert spy.calls == (0 if compiled.wanted() else 12)
    assert answered == ["/predict/start", *(f"/predict/{index}" for index in range(12))]  # each once
    sampling.stride = sampling.payload_stride = 1
    document = status_document(tapped)
    assert document["requests"]["total"] == 1 + 12  # six captured, each standing for two
    (model_document,) = document["models"]
    counts = {feature["name"]: feature["count"] for feature in model_document["features"]}
    assert counts == {"f0": 13, "f1": 13, "prediction": 13}  # two payloads kept, each for six


def test_an_exchange_admit_leaves_out_reaches_the_app_once(make_middleware: MakeMiddleware) -> None:
    calls: list[str] = []
    tapped = make_middleware(counting_model(calls))
    predict(tapped, "/predict/start")
    sampling = tapped.tap.sampling = HeldSampling(4, 1)
    for index in range(8):
        predict(tapped, f"/predict/{index}")
    assert calls == ["/predict/start", *(f"/predict/{index}" for index in range(8))]
    assert [weight for weight, _ in sampling.admitted] == [0, 0, 0, 4] * 2


def test_the_first_request_starts_the_tap_through_the_python_call(make_middleware: MakeMiddleware) -> None:
    tapped = make_middleware(model)
    spy = DispatchSpy(tapped)
    assert tapped.tap.capture is None
    predict(tapped)
    assert spy.calls == 1
    assert tapped.tap.capture is not None


def test_the_capture_in_place_is_the_one_used(middleware: ModelTapMiddleware) -> None:
    """Nothing is cached: after a fork the tap starts again with a new capture and queue."""
    offered: list[object] = []

    def offer(record: object, size: int) -> bool:
        offered.append(record)
        return True

    starter = TraceStarter(TraceSampler(SamplerConfig("always_off", 0.0)), {})
    middleware.tap.capture = exchange_capture(model, middleware.tap, offer, 1 << 20, starter)
    predict(middleware)
    predict(middleware)
    assert len(offered) == 2


def test_a_disabled_middleware_passes_everything_through(middleware: ModelTapMiddleware) -> None:
    middleware.enabled = False
    spy = DispatchSpy(middleware)
    predict(middleware)
    assert spy.calls == 1
    assert (
        run_asgi(middleware, make_http_scope("GET", "/modeltap/status", headers=[])).body
        == b'{"predictions": [3.0]}'
    )
    middleware.enabled = True
    predict(middleware)
    assert spy.calls == (2 if compiled.wanted() else 3)
    assert status_document(middleware)["requests"]["total"] == 2


def test_lifespan_and_other_scopes_go_through_the_python_call(middleware: ModelTapMiddleware) -> None:
    spy = DispatchSpy(middleware)
    messages = run_lifespan(middleware)
    assert messages.types == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert spy.calls == 1


def test_a_scope_that_is_not_a_dict_goes_through_the_python_call(middleware: ModelTapMiddleware) -> None:
    class Scope(dict[str, Any]):
        pass

    spy = DispatchSpy(middleware)
    call = middleware(Scope(make_http_scope("POST", "/predict")), None, None)  # type: ignore[arg-type]
    assert spy.calls == 1
    assert inspect.iscoroutine(call)
    call.close()


def test_servers_see_an_asgi3_app(middleware: ModelTapMiddleware) -> None:
    """uvicorn tells ASGI 3 from ASGI 2 by a coroutine function `__call__` (its "auto" interface)."""
    assert asyncio.iscoroutinefunction(middleware.__call__)
    config = uvicorn.Config(app=middleware, log_level="error")
    config.load()
    assert config.interface == "asgi3"


def test_a_subclass_is_called_through_python(each_capture_form: str) -> None:
    class Custom(ModelTapMiddleware):
        pass

    tapped = Custom(model, config=ModelTapConfig.from_env({}, monitor="inline"), model_name="demo")
    try:
        spy = DispatchSpy(tapped)
        predict(tapped)
        predict(tapped)
        assert spy.calls == 0  # Python's own call: `__call__` itself, not the compiled one
        assert status_document(tapped)["requests"]["total"] == 2
    finally:
        tapped.tap.shutdown()


class FailingSampling(Sampling):
    """Samples 1 in 2 (whatever the load: the tap's threads adjust the strides), and fails
    whenever it is asked."""

    def __init__(self) -> None:
        super().__init__(watermark=0.5)
        self.stride = 2
        self.asked = 0

    def follow_load(self, load: float) -> None:
        pass

    def follow_budget(self, budget: Any) -> None:
        pass

    def admit(self) -> tuple[int, int]:
        self.asked += 1
        raise RuntimeError("admit failed")


def test_an_admit_that_fails_is_asked_once(middleware: ModelTapMiddleware) -> None:
    """The compiled call asked `admit()`, so it has decided: the error is the caller's, and the
    Python call does not ask a second time (each exchange is counted once by the sampling)."""
    sampling = FailingSampling()
    middleware.tap.sampling = sampling
    result = run_asgi(middleware, make_http_scope("POST", "/predict"), http_request_messages(BODY))
    assert isinstance(result.exception, RuntimeError)
    assert sampling.asked == 1


class LettingGoTap:
    """A tap whose `capture`, when read, makes the middleware let go of it (as `enabled = False`
    from another thread would): only the compiled call's own reference keeps it alive."""

    def __init__(self, real: Any, middleware: ModelTapMiddleware) -> None:
        self._real = real
        self._middleware = middleware

    @property
    def capture(self) -> Any:
        self._middleware._set_shortcut(None, None)
        return self._real.capture

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_tap_let_go_while_the_call_reads_it_stays_alive_until_it_has_decided(
    middleware: ModelTapMiddleware,
) -> None:
    # The stand-in's only reference is the compiled call's (the pure-Python form ignores it).
    middleware._set_shortcut(LettingGoTap(middleware.tap, middleware), None)  # type: ignore[arg-type]
    assert predict(middleware) == 200
    middleware.enabled = True  # the middleware's own tap again
    assert predict(middleware) == 200
    assert status_document(middleware)["requests"]["total"] == 3


def test_monitoring_that_cannot_start_never_reaches_the_app(
    make_middleware: MakeMiddleware, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the tap's start raises (a broken environment), the request is the app's, with
    its answer, and so is every later one, unmonitored; the failure is logged once."""
    paths: list[str] = []
    tapped = make_middleware(counting_model(paths))
    starts: list[int] = []

    def broken() -> None:
        starts.append(1)
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tapped.tap, "start", broken)
    for _ in range(3):
        assert predict(tapped) == 200
    assert paths == ["/predict"] * 3
    assert len(starts) == 1  # tried once, not on every request
    assert sum("monitoring could not start" in r.getMessage() for r in caplog.records) == 1
