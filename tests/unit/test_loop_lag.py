"""The serving event loop's lag (issue "operations and business", item 1): real asyncio loops,
blocked on purpose with `time.sleep` inside a coroutine, as a model called without an executor
would block them. The probe runs every `interval` seconds, so a block of B seconds that starts
just before a probe is due shows as at least B - interval: the tests probe every 20 ms.

The figure travels as the other resource figures do: `/status.resources` and the OTLP export,
decoded from a real OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import httpx
import pytest

from modeltap import ModelTapMiddleware
from modeltap.operations.loop_lag import LoopLagProbe
from modeltap.operations.process_resources import ResourceSampler, as_counts, from_counts
from tests.support.inline_tap import empty_json_app, inline_config
from tests.support.otlp_receiver import OtlpHttpReceiver
from tests.support.tapping import status_document

INTERVAL_S = 0.02
BLOCK_S = 0.3


async def _block(seconds: float) -> None:
    time.sleep(seconds)  # noqa: ASYNC251 (blocking the loop is the point: what the probe must see)


def test_a_blocked_loop_shows_the_time_it_was_blocked() -> None:
    probe = LoopLagProbe(interval_s=INTERVAL_S)

    async def main() -> None:
        probe.watch(asyncio.get_running_loop())
        await asyncio.sleep(0.1)
        await _block(BLOCK_S)
        await asyncio.sleep(0.1)  # the late probe runs, and a few on time after it

    asyncio.run(main())
    lag = probe.lag()
    assert lag is not None
    assert BLOCK_S - INTERVAL_S <= lag.max_s < BLOCK_S + 0.2
    assert lag.probes >= 5


def test_an_idle_loop_shows_little_lag() -> None:
    probe = LoopLagProbe(interval_s=INTERVAL_S)

    async def main() -> None:
        probe.watch(asyncio.get_running_loop())
        probe.watch(asyncio.get_running_loop())  # a second call on the same loop adds nothing
        await asyncio.sleep(0.5)

    asyncio.run(main())
    lag = probe.lag()
    assert lag is not None
    assert 0.5 / INTERVAL_S * 0.5 <= lag.probes <= 0.5 / INTERVAL_S + 1  # one chain of probes
    assert lag.p99_s < 0.05
    assert lag.max_s < 0.1


def test_a_loop_stuck_right_now_shows_it_to_another_thread() -> None:
    """The figures are read on the shipper or worker thread: a loop stalled for longer than a
    sample interval must show while it is stalled, not only once it runs the late probe."""
    probe = LoopLagProbe(interval_s=INTERVAL_S)
    stuck = threading.Event()

    async def main() -> None:
        probe.watch(asyncio.get_running_loop())
        await asyncio.sleep(0.05)
        stuck.set()
        await _block(0.8)

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    try:
        assert stuck.wait(5.0)
        time.sleep(0.5)
        lag = probe.lag()
        assert lag is not None
        assert lag.max_s >= 0.4
    finally:
        thread.join(5.0)


def test_no_loop_no_figure_and_the_window_forgets() -> None:
    assert LoopLagProbe().lag() is None
    monitor = ResourceSampler("monitor").sample()
    assert (monitor.loop_lag_max_s, monitor.loop_lag_p99_s) == (None, None)
    probe = LoopLagProbe(interval_s=INTERVAL_S, window_s=0.2)

    async def main() -> None:
        probe.watch(asyncio.get_running_loop())
        await _block(0.1)
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert probe.lag() is not None
    time.sleep(0.3)
    assert probe.lag() is None  # older than the window, and the loop is gone


def test_the_lag_survives_the_trip_to_the_monitor() -> None:
    probe = LoopLagProbe(interval_s=INTERVAL_S)

    async def main() -> None:
        probe.watch(asyncio.get_running_loop())
        await _block(0.1)
        await asyncio.sleep(0.05)

    asyncio.run(main())
    sample = ResourceSampler("serving", probe).sample()
    assert sample.loop_lag_max_s is not None
    assert sample.loop_lag_p99_s is not None
    assert from_counts(sample.pid, as_counts(sample)) == sample


@pytest.mark.timeout(60)
def test_the_middleware_probes_its_serving_loop_into_status_and_otlp(
    http_receiver: OtlpHttpReceiver,
) -> None:
    config = inline_config(http_receiver.endpoint)
    middleware = ModelTapMiddleware(empty_json_app, config=config)
    middleware.tap.loop_lag.interval_s = INTERVAL_S

    async def serve() -> None:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.post("/predict", content=b"{}")).status_code == 200
            await asyncio.sleep(0.1)
            await _block(BLOCK_S)
            # Past the resource sampler's once-a-second reuse: the next sample has the block.
            await asyncio.sleep(1.2)

    try:
        asyncio.run(serve())
        [process] = status_document(middleware)["resources"]
        assert process["pid"] == os.getpid()
        assert process["event_loop_lag_max_s"] >= BLOCK_S - INTERVAL_S
        assert 0 <= process["event_loop_lag_p99_s"] <= process["event_loop_lag_max_s"]
        http_receiver.wait_for(lambda r: r.latest_points("modeltap.event_loop.lag"), timeout=5.0)
        points = http_receiver.latest_points("modeltap.event_loop.lag")
        by_quantile = {p.attributes["modeltap.quantile"]: p for p in points}
        assert set(by_quantile) == {"0.99", "1"}
        largest = by_quantile["1"]
        assert (largest.kind, largest.unit) == ("gauge", "s")
        assert largest.attributes["process.pid"] == os.getpid()
        assert largest.attributes["modeltap.process.role"] == "serving"
        assert largest.value == pytest.approx(process["event_loop_lag_max_s"])
    finally:
        middleware.tap.shutdown()
