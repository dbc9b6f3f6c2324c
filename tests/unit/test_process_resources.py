"""Resources (issue "operations and business", item 1, the process part): each figure against
what /proc (and `os.times`, `gc`) say when read independently here; the serving process's sample
survives the trip to its monitor; the OTLP metrics carry the semantic-convention names."""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.resources import Resource

from modeltap.config import ModelTapConfig
from modeltap.export.otlp_metrics import build_metrics_data
from modeltap.middleware.asgi import ModelTapMiddleware
from modeltap.operations.process_resources import ResourceSampler, as_counts, from_counts
from modeltap.snapshot import Snapshot
from modeltap.worker import tap as tap_module
from tests.support.asgi_driver import http_request_messages, make_http_scope, run_asgi
from tests.support.tapping import MakeMiddleware, status_document

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _vm_rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_each_figure_matches_proc_read_independently() -> None:
    sampler = ResourceSampler("serving")
    sample = sampler.sample()
    times = os.times()
    assert sample.pid == os.getpid()
    assert abs(sample.memory_rss_bytes - _vm_rss_bytes()) < 8 * 1024 * 1024
    assert sample.threads == len(os.listdir("/proc/self/task"))
    assert sample.open_fds is not None
    assert abs(sample.open_fds - len(os.listdir("/proc/self/fd"))) <= 2
    assert sample.cpu_user_s == pytest.approx(times.user, abs=0.05)
    assert sample.cpu_system_s == pytest.approx(times.system, abs=0.05)
    assert sample.gc_collections == tuple(s["collections"] for s in gc.get_stats()[:3])


def test_utilisation_and_gc_pause_follow_the_work_done() -> None:
    sampler = ResourceSampler("monitor")
    first = sampler.sample()
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:  # one CPU busy for the whole interval
        sum(range(1000))
    garbage = [[i] for i in range(200_000)]
    gc.collect()
    del garbage
    second = sampler.sample()
    assert second.cpu_utilization is not None
    assert second.cpu_utilization > 0.5
    assert second.gc_pause_s > first.gc_pause_s
    assert second.gc_collections[2] > first.gc_collections[2]
    assert sampler.sample() is second  # within the minimum interval: the same sample


def test_a_serving_processs_sample_survives_the_trip_to_its_monitor() -> None:
    sample = ResourceSampler("serving").sample()
    back = from_counts(sample.pid, as_counts(sample))
    assert back == dataclasses.replace(sample, role="serving")
    assert from_counts(1, {"queue_depth": 0}) is None
    compiled = dataclasses.replace(sample, capture="compiled")
    assert from_counts(sample.pid, as_counts(compiled)) == compiled


@pytest.mark.parametrize("claimed", ["<script>", "x" * 10_000, 3, ["compiled"]])
def test_a_capture_form_the_monitor_does_not_know_is_not_published(claimed: object) -> None:
    counts = {**as_counts(ResourceSampler("serving").sample()), "res_capture": claimed}
    back = from_counts(1, counts)
    assert back is not None
    assert back.capture is None


def test_the_status_lists_the_serving_process(
    make_middleware: MakeMiddleware, each_capture_form: str
) -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]

    middleware = make_middleware(app)
    run_asgi(middleware, make_http_scope("POST", "/predict"), http_request_messages(b"{}"))
    [process] = status_document(middleware)["resources"]
    assert (process["pid"], process["role"]) == (os.getpid(), "serving")
    assert process["memory_rss_bytes"] > 0
    assert set(process["cpu_time_s"]) == {"user", "system"}
    assert process["capture"] == ("compiled" if each_capture_form == "compiled" else "python")


def test_the_first_counts_a_serving_process_ships_say_how_it_captures(
    monkeypatch: pytest.MonkeyPatch, own_monitor: Path, each_capture_form: str
) -> None:
    """The shipper may send its first counts the moment it starts (a monitor already running
    takes the connection at once); they must not describe a serving process without its capture."""
    first_counts: list[dict[str, Any]] = []

    class CountsAtStart:
        """Stands in for the shipper: reads the counts as its first turn would, ships nothing."""

        lost = 0
        gave_up = None

        def __init__(self, *args: object, counts: Callable[[], dict[str, Any]], **options: object) -> None:
            self._counts = counts

        def start(self) -> None:
            first_counts.append(self._counts())

        def flush(self, timeout_s: float) -> bool:
            return True

        def stop(self, timeout_s: float) -> None:
            pass

    monkeypatch.setattr(tap_module, "Shipper", CountsAtStart)

    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]

    middleware = ModelTapMiddleware(app, config=ModelTapConfig.from_env({}, monitor="process"))
    try:
        middleware.start()
        assert middleware.tap.mode == "process"
        [counts] = first_counts
        assert counts["res_capture"] == ("compiled" if each_capture_form == "compiled" else "python")
    finally:
        middleware.tap.shutdown()


def test_otlp_carries_the_semantic_convention_names() -> None:
    sample = ResourceSampler("serving").sample()
    sample = dataclasses.replace(sample, cpu_utilization=0.25)
    snapshot = Snapshot(
        taken_unix_ns=2, start_unix_ns=1, instance_id="i", pid=sample.pid, resources=(sample,)
    )
    [scope] = build_metrics_data(snapshot, Resource.get_empty()).resource_metrics[0].scope_metrics
    metrics = {m.name: m for m in scope.metrics}

    def points(name: str) -> list[NumberDataPoint]:
        found = [p for p in metrics[name].data.data_points if isinstance(p, NumberDataPoint)]
        assert len(found) == len(metrics[name].data.data_points)
        return found

    assert {
        "process.cpu.time",
        "process.cpu.utilization",
        "process.memory.usage",
        "process.thread.count",
        "process.unix.file_descriptor.count",
        "cpython.gc.collections",
        "modeltap.gc.pause",
    } <= set(metrics)
    modes = {dict(p.attributes or {})["cpu.mode"]: p.value for p in points("process.cpu.time")}
    assert modes == {"user": sample.cpu_user_s, "system": sample.cpu_system_s}
    [memory] = points("process.memory.usage")
    assert dict(memory.attributes or {}) == {"process.pid": sample.pid, "modeltap.process.role": "serving"}
    assert memory.value == sample.memory_rss_bytes
    generations = {
        dict(p.attributes or {})["cpython.gc.generation"] for p in points("cpython.gc.collections")
    }
    assert generations == {0, 1, 2}
