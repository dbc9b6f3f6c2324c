"""Fixtures shared across test packages: real OTLP receivers, an environment free of OTEL_* settings
and middleware built from an empty environment."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modeltap import ModelTapConfig, ModelTapMiddleware
from modeltap.capture import compiled
from tests.support.asgi_driver import ASGIApp
from tests.support.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver
from tests.support.tapping import MakeMiddleware


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every OTEL_* and MODELTAP_* variable so the runner's environment cannot leak into a
    test (the SDK's exporters and `Resource.create()` read `os.environ` on their own)."""
    for name in list(os.environ):
        if name.startswith(("OTEL_", "MODELTAP_")):
            monkeypatch.delenv(name)


@pytest.fixture(params=["compiled", "pure-python"])
def each_capture_form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test runs twice: with the compiled capture (`modeltap._speedups`) and with the
    pure-Python one, which must behave the same. Where the extension was not built the compiled
    run is skipped, except under CI (`MODELTAP_REQUIRE_SPEEDUPS`), where that is a failure."""
    form: str = request.param
    if form == "compiled" and not compiled.AVAILABLE:
        if os.environ.get("MODELTAP_REQUIRE_SPEEDUPS"):
            pytest.fail("modeltap._speedups was not built, and MODELTAP_REQUIRE_SPEEDUPS is set")
        pytest.skip("modeltap._speedups is not built here")
    monkeypatch.setattr(compiled, "wanted", lambda: form == "compiled")
    return form


@pytest.fixture
def http_receiver() -> Iterator[OtlpHttpReceiver]:
    """A started OTLP/HTTP receiver answering "ok" unless the test scripts otherwise."""
    with OtlpHttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def grpc_receiver() -> Iterator[OtlpGrpcReceiver]:
    """A started OTLP/gRPC receiver answering "ok" unless the test scripts otherwise."""
    with OtlpGrpcReceiver() as receiver:
        yield receiver


@pytest.fixture
def unused_tcp_port() -> int:
    """A loopback port nobody listens on (bound, then released): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def make_middleware() -> Iterator[MakeMiddleware]:
    """Middleware built from an empty environment (the test process's own env must not leak in),
    named "demo" unless a test passes `model_name` (None: not configured); its tap is shut down after
    the test."""
    created: list[ModelTapMiddleware] = []

    def make(app: ASGIApp, **options: Any) -> ModelTapMiddleware:
        options.setdefault("model_name", "demo")
        middleware = ModelTapMiddleware(app, config=ModelTapConfig.from_env({}, monitor="inline"), **options)
        created.append(middleware)
        return middleware

    yield make
    for middleware in created:
        middleware.tap.shutdown()


@pytest.fixture
def own_monitor(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private run directory and monitor id for this test: apps it starts in process mode get a
    monitor of their own (several apps in one test process would otherwise share one, as the
    workers of one server do). Yields the run directory."""
    directory = Path(tempfile.mkdtemp(prefix="mt-"))  # short: Unix socket paths are limited
    monkeypatch.setenv("MODELTAP_RUN_DIR", str(directory))
    monkeypatch.setenv("MODELTAP_MONITOR_ID", f"t{uuid.uuid4().hex[:12]}")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
