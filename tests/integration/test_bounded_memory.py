"""RELIABILITY.md D1/E7 in small: with the collector hanging, memory stays bounded by the
configured queues while requests keep flowing, and every lost span is counted."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import socket
import time
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modeltap import ExportConfig, ModelTapConfig, ModelTapMiddleware, SamplerConfig


async def _predict(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"predictions": [sum(row) for row in body["instances"]]})


def _send(middleware: ModelTapMiddleware, count: int) -> None:
    async def run() -> None:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for i in range(count):
                response = await client.post("/predict", json={"instances": [[float(i), 1.0, 2.0]]})
                assert response.status_code == 200

    asyncio.run(run())


@contextlib.contextmanager
def _hanging_collector() -> Iterator[str]:
    """A collector that takes connections and never answers: a listening socket nobody accepts
    from (the kernel completes the handshakes and buffers the requests). Nothing of it lives in
    this process's heap, so the growth measured below is modeltap's alone."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def _processed(middleware: ModelTapMiddleware, total: int) -> None:
    """Wait for the analysis to have counted `total` requests. (A flush would also wait for the
    export, which the hanging collector never lets finish: it would only ever time out.)"""
    deadline = time.monotonic() + 30.0
    while sum(m.requests for m in middleware.tap.latest_snapshot().models) < total:
        assert time.monotonic() < deadline, "the analysis never caught up"
        time.sleep(0.05)


def _measure() -> tuple[int, dict[str, int], int, int]:
    """(heap growth over 3000 requests, drops by reason, spans exported, requests counted), in a
    process of its own: threads other tests leave running in this one (servers, senders) would
    allocate during the measurement and be counted as modeltap's."""
    with _hanging_collector() as endpoint:
        export = ExportConfig(
            endpoint=endpoint,
            timeout_s=0.5,
            shutdown_timeout_s=1.0,
            span_queue_max=200,
            span_batch_max=50,
            span_export_interval_s=0.05,
            metric_export_interval_s=0.2,
            sampler=SamplerConfig("always_on", 1.0),
        )
        config = ModelTapConfig(monitor="inline", model_name="m", export=export, worker_cpu_budget=0)
        middleware = ModelTapMiddleware(
            Starlette(routes=[Route("/predict", _predict, methods=["POST"])]), config=config
        )
        try:
            _send(middleware, 500)  # warm up: caches, series, the span ring fills
            _processed(middleware, 500)
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            _send(middleware, 3000)
            _processed(middleware, 3500)
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            snapshot = middleware.tap.latest_snapshot()
            drops = {str(dict(p.attributes)["modeltap.drop.reason"]): int(p.value) for p in snapshot.dropped}
            requests = sum(m.requests for m in snapshot.models)
            return growth, drops, snapshot.monitoring.spans_exported, requests
        finally:
            middleware.tap.shutdown()


@pytest.mark.timeout(120)
def test_memory_is_bounded_while_the_collector_hangs() -> None:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        growth, drops, exported, requests = pool.apply(_measure)
    # 3500 spans were made; at most the ring (200) and one in-flight batch (50) are held.
    assert drops["span_queue_full"] + drops["span_export_failed"] >= 3500 - 200 - 50
    assert exported == 0
    assert requests == 3500
    # The ring holds 200 encoded spans of about 1 KiB; everything else is per-series state.
    assert growth < 2 * 1024 * 1024, f"grew by {growth} bytes over 3000 requests"
