"""Throughput and cold starts (issue "operations and business", item 2): each serving process's
first `cold_start_requests` exchanges are counted and exported like any, but their latency is
reported apart and kept out of the steady-state percentiles; the time from process start to the
first answer; requests per second per model version."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any

import numpy as np
import pytest

from modeltap._types import Receive, Scope, Send
from modeltap.stats import StatsAggregator
from modeltap.stats.drift_state import WindowConfig
from modeltap.stats.latency_window import RateWindow
from modeltap.worker.tap import PROCESS_START_UNIX_S
from tests.support.asgi_driver import http_request_messages, make_http_scope, run_asgi
from tests.support.tapping import MakeMiddleware, status_document

# Every test here runs with the compiled capture and with the pure-Python one.
pytestmark = pytest.mark.usefixtures("each_capture_form")

SLOW_S, FAST_S = 0.06, 0.001


def warming_up(first: int) -> Any:
    """A model that answers its first `first` requests slowly, then fast."""
    served = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal served
        while (await receive()).get("more_body"):
            pass
        served += 1
        await asyncio.sleep(SLOW_S if served <= first else FAST_S)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"predictions": [1]}'})

    return app


def test_the_first_exchanges_are_the_cold_start_kept_out_of_the_steady_latency(
    make_middleware: MakeMiddleware,
) -> None:
    middleware = make_middleware(warming_up(3), model_name="churn", cold_start_requests=3)
    before = time.time()
    for _ in range(12):
        run_asgi(middleware, make_http_scope("POST", "/predict"), http_request_messages(b'{"x": 1}'))
    document = status_document(middleware)
    [model] = document["models"]
    assert model["requests"] == 12
    assert model["cold_start"]["requests"] == 3
    assert model["cold_start"]["latency_p50_s"] >= SLOW_S
    assert model["latency_s"]["p99"] < SLOW_S  # the steady state: the 9 fast ones only
    assert document["latency_s"]["count"] == 12  # every exchange still counts and is exported
    [process] = document["cold_starts"]
    assert process["pid"] == os.getpid()
    assert process["process_start_unix_s"] == PROCESS_START_UNIX_S
    # The first answer came after the test began, the process started before it.
    assert process["first_answer_after_s"] >= before - PROCESS_START_UNIX_S
    assert model["requests_per_s"] > 0


def test_without_a_cold_start_every_exchange_is_steady(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(warming_up(0), model_name="churn", cold_start_requests=0)
    run_asgi(middleware, make_http_scope("POST", "/predict"), http_request_messages(b'{"x": 1}'))
    [model] = status_document(middleware)["models"]
    assert model["cold_start"] == {"requests": 0, "latency_p50_s": None}
    assert model["latency_s"]["p50"] is not None


def test_the_process_start_is_the_kernels() -> None:
    """Against `ps` (elapsed seconds since the process started), read independently."""
    elapsed = int(subprocess.run(["ps", "-o", "etimes=", "-p", str(os.getpid())], capture_output=True,
                                 text=True, check=True).stdout)  # fmt: skip
    assert pytest.approx(time.time() - elapsed, abs=2.0) == PROCESS_START_UNIX_S


def test_requests_per_second_over_the_window() -> None:
    rate = RateWindow(slots=5, slot_s=10.0)
    assert rate.rate(0.0) is None
    rate.add(100, now=1000.0)
    rate.add(100, now=1010.0)
    assert rate.rate(1020.0) == pytest.approx(200 / 20.0)  # younger than the window
    rate.add(50, now=1060.0)
    # The window (slots 102..106, from 1020 s) holds only the last 50.
    assert rate.rate(1069.0) == pytest.approx(50 / (1069.0 - 1020.0))


def test_cold_start_errors_still_count_in_the_error_rate() -> None:
    """A crash-looping deployment answers mostly 5xx within its cold start: the error-rate level
    must see them (only the latency is set apart)."""
    clock = [0.0]
    stats = StatsAggregator(8, (0.01, 0.1, 1.0), None, window=WindowConfig(5, 1.0), clock=lambda: clock[0])
    model = stats.identity("churn", "1", accepted=True)
    http = (("http.request.method", "POST"),)
    rng = np.random.default_rng(3)
    for _ in range(40):  # history: 60 requests a slot, about 1 % errors
        stats.observe_latency(model, http, np.full(60, 0.01), 1, int(rng.binomial(60, 0.01)))
        clock[0] += 1.0
    stats.observe_latency(model, http, np.full(60, 0.01), 1, 60, cold=True)  # all failed, all cold
    [view] = stats.model_views()
    assert view.error_rate_level == 3  # CRITICAL
    assert view.cold_requests == 60
