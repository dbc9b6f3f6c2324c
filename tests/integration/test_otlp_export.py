"""modeltap's OTLP metrics (and span accounting) against a real receiver, over http/protobuf and grpc.

Covers RELIABILITY.md group D (collector faults, recovery, overflow, shutdown) and C17 (fork).
Every test drives a small Starlette model server through `ModelTapMiddleware` and asserts what
arrived at the receiver or what `tap.latest_snapshot()` (the `/status` source) reports. Export
intervals are long unless a test is about periodic export, so data only leaves on `tap.flush()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modeltap import ExportConfig, ModelTapConfig, ModelTapMiddleware, SamplerConfig
from modeltap.snapshot import Snapshot
from tests.support.otlp_receiver import (
    HttpBehaviour,
    MetricPoint,
    OtlpGrpcReceiver,
    OtlpHttpReceiver,
    flatten_metrics,
)

pytestmark = pytest.mark.usefixtures("clean_otel_env")

Receiver: TypeAlias = OtlpHttpReceiver | OtlpGrpcReceiver

DURATION = "http.server.request.duration"
DROPPED = "modeltap.capture.dropped"
VIOLATIONS = "modeltap.data_quality.violations"
CUMULATIVE = "AGGREGATION_TEMPORALITY_CUMULATIVE"
# The explicit bucket boundaries the HTTP semantic conventions advise for http.server.request.duration.
SEMCONV_DURATION_BOUNDS_S = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
PREDICT_ROUTE = "/v1/models/{model}:predict"
PREDICT_PATH = "/v1/models/churn:predict"
MODEL_ATTRIBUTES: dict[str, object] = {"modeltap.model.name": "churn", "modeltap.model.version": "3"}
SERVICE_NAME = "churn-service"
TIMEOUT_S = 0.5
SHUTDOWN_TIMEOUT_S = 1.0
# "Within its bound plus a generous margin" (CLARIFICATIONS.md, timing in tests).
SHUTDOWN_MARGIN_S = 1.5
REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_APP = REPO_ROOT / "examples" / "fastapi_app.py"


# ---- the monitored application -----------------------------------------------------------------


async def predict(request: Request) -> Response:
    raw = await request.body()
    try:
        document = json.loads(raw)
    except ValueError:
        return JSONResponse({"error": "request body is not JSON"}, status_code=400)
    if document.get("explode"):
        raise RuntimeError("model crashed")
    rows = document["instances"]
    return JSONResponse({"predictions": [round(sum(row) / len(row), 6) for row in rows]})


def model_app() -> Starlette:
    return Starlette(routes=[Route(PREDICT_ROUTE, predict, methods=["POST"])])


@dataclass(frozen=True)
class Call:
    body: bytes = b""
    path: str = PREDICT_PATH
    method: str = "POST"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def ok_call(i: int) -> Call:
    return Call(json.dumps({"instances": [[i, 1.5, 2.0, 0.5]]}).encode())


EXPLODE = Call(b'{"explode": true, "instances": [[1, 2, 3, 4]]}')
INVALID_JSON = Call(b'{"instances": [[1, 2,')
# 7 answered, 2 raising inside the model (Starlette answers 500, then re-raises), 3 undecodable.
MIXED_TRAFFIC = [
    ok_call(0),
    INVALID_JSON,
    ok_call(1),
    EXPLODE,
    ok_call(2),
    ok_call(3),
    INVALID_JSON,
    ok_call(4),
    EXPLODE,
    ok_call(5),
    INVALID_JSON,
    ok_call(6),
]


def drive(app: Any, calls: Sequence[Call]) -> list[Reply]:
    """Send `calls` in order through an in-process ASGI transport; the app's exceptions become 500s."""

    async def run() -> list[Reply]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        replies: list[Reply] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            for call in calls:
                response = await client.request(
                    call.method, call.path, content=call.body, headers={"content-type": "application/json"}
                )
                replies.append(
                    Reply(response.status_code, tuple(response.headers.multi_items()), response.content)
                )
        return replies

    return asyncio.run(run())


# ---- configuration helpers -----------------------------------------------------------------------


def otlp(endpoint: str | None, protocol: str = "http/protobuf", **overrides: Any) -> ExportConfig:
    """Test-sized export settings: short timeouts, exports only on flush unless overridden."""
    settings: dict[str, Any] = {
        "timeout_s": TIMEOUT_S,
        "shutdown_timeout_s": SHUTDOWN_TIMEOUT_S,
        "metric_export_interval_s": 60.0,
        "span_export_interval_s": 60.0,
        "service_name": SERVICE_NAME,
    }
    settings.update(overrides)
    return ExportConfig(endpoint=endpoint, protocol=protocol, **settings)


def monitored(export: ExportConfig, **overrides: Any) -> ModelTapConfig:
    return ModelTapConfig(
        monitor="inline",
        model_name="churn",
        model_version="3",
        snapshot_interval_s=0.05,
        export=export,
        **overrides,
    )


ALWAYS_ON = SamplerConfig("always_on", 1.0)


@contextlib.contextmanager
def tapped(config: ModelTapConfig, app: Any = None, **kwargs: Any) -> Iterator[ModelTapMiddleware]:
    middleware = ModelTapMiddleware(app if app is not None else model_app(), config=config, **kwargs)
    try:
        yield middleware
    finally:
        middleware.tap.shutdown()


def wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout:.1f}s")
        time.sleep(0.01)


def drop_counts(snapshot: Snapshot) -> dict[str, float]:
    """`modeltap.capture.dropped` by reason, summed over models."""
    counts: dict[str, float] = {}
    for point in snapshot.dropped:
        reason = str(dict(point.attributes)["modeltap.drop.reason"])
        counts[reason] = counts.get(reason, 0.0) + point.value
    return counts


def export_failures(middleware: ModelTapMiddleware) -> dict[str, int]:
    return dict(middleware.tap.latest_snapshot().monitoring.export_failures)


def requests_recorded(middleware: ModelTapMiddleware) -> int:
    return sum(point.count for point in middleware.tap.latest_snapshot().duration)


def total_count(points: Sequence[MetricPoint], route: str | None = None) -> int:
    return sum(p.count or 0 for p in points if route is None or p.attributes.get("http.route") == route)


@pytest.fixture(params=["http/protobuf", "grpc"])
def collector(request: pytest.FixtureRequest) -> tuple[str, Receiver]:
    """(protocol, a receiver speaking it)."""
    protocol: str = request.param
    name = "grpc_receiver" if protocol == "grpc" else "http_receiver"
    receiver: Receiver = request.getfixturevalue(name)
    return protocol, receiver


# ---- metrics reach the collector ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_metrics_reach_the_collector_with_exact_counts(collector: tuple[str, Receiver]) -> None:
    protocol, receiver = collector
    export = otlp(receiver.endpoint, protocol, resource_attributes={"deployment.environment.name": "test"})
    with tapped(monitored(export)) as middleware:
        replies = drive(middleware, MIXED_TRAFFIC)
        assert [r.status for r in replies].count(200) == 7
        assert [r.status for r in replies].count(500) == 2
        assert [r.status for r in replies].count(400) == 3
        assert middleware.tap.flush(5.0)
        receiver.wait_for(
            lambda r: total_count(r.latest_points(DURATION)) == 12, timeout=5.0, description="12 exchanges"
        )

    duration = receiver.latest_points(DURATION)
    assert {p.attributes["http.response.status_code"]: p.count for p in duration} == {200: 7, 500: 2, 400: 3}
    for point in duration:
        assert point.kind == "histogram"
        assert point.unit == "s"
        assert point.temporality == CUMULATIVE
        assert point.explicit_bounds == SEMCONV_DURATION_BOUNDS_S
        assert len(point.bucket_counts) == len(SEMCONV_DURATION_BOUNDS_S) + 1
        assert sum(point.bucket_counts) == point.count
        assert point.sum is not None
        assert point.sum > 0
        assert point.min is not None
        assert point.max is not None
        assert 0 < point.min <= point.max
        assert point.start_time_unix_nano < point.time_unix_nano
        assert point.attributes["http.request.method"] == "POST"
        assert point.attributes["http.route"] == PREDICT_ROUTE  # the template, never the raw path
        assert {k: point.attributes[k] for k in MODEL_ATTRIBUTES} == MODEL_ATTRIBUTES
        assert point.scope_name == "modeltap"
    errors = {p.attributes["http.response.status_code"]: p.attributes.get("error.type") for p in duration}
    assert errors == {200: None, 400: None, 500: "RuntimeError"}

    dropped = {p.attributes["modeltap.drop.reason"]: p for p in receiver.latest_points(DROPPED)}
    assert "queue_full" in dropped
    assert dropped["queue_full"].value == 0
    for point in dropped.values():
        assert point.kind == "sum"
        assert point.is_monotonic is True
        assert point.temporality == CUMULATIVE
        assert {k: point.attributes[k] for k in MODEL_ATTRIBUTES} == MODEL_ATTRIBUTES
        assert point.value == 0

    violations = receiver.latest_points(VIOLATIONS)
    assert {p.attributes["modeltap.violation.reason"]: p.value for p in violations} == {"decode_error": 3}
    assert violations[0].kind == "sum"
    assert violations[0].is_monotonic is True
    assert {k: violations[0].attributes[k] for k in MODEL_ATTRIBUTES} == MODEL_ATTRIBUTES

    resource = duration[0].resource
    assert resource["service.name"] == SERVICE_NAME
    assert resource["deployment.environment.name"] == "test"
    instance_id = resource["service.instance.id"]
    assert isinstance(instance_id, str)
    assert instance_id
    assert resource["process.pid"] == os.getpid()
    # Every point of the export carries the same resource.
    assert all(p.resource == resource for p in receiver.metrics(accepted_only=True))
    assert receiver.errors() == []


@pytest.mark.timeout(60)
def test_exported_service_instance_id_is_the_one_status_reports(http_receiver: OtlpHttpReceiver) -> None:
    """CLARIFICATIONS.md: label series with `service.instance.id` and make /status say which process
    answered; the two must be the same value or a reader cannot match a replica's /status to its series."""
    with tapped(monitored(otlp(http_receiver.endpoint))) as middleware:
        drive(middleware, [ok_call(0)])
        assert middleware.tap.flush(5.0)
        http_receiver.wait_for(lambda r: r.latest_points(DURATION), timeout=5.0)
        status = json.loads(drive(middleware, [Call(path="/modeltap/status", method="GET")])[0].body)
        snapshot_id = middleware.tap.latest_snapshot().instance_id

    exported_id = http_receiver.latest_points(DURATION)[0].resource["service.instance.id"]
    assert status["process"]["instance_id"] == snapshot_id
    assert exported_id == snapshot_id, (
        f"exported service.instance.id {exported_id!r} differs from /status process.instance_id "
        f"{snapshot_id!r}"
    )


@pytest.mark.timeout(60)
def test_instance_id_is_stable_for_the_life_of_the_process(http_receiver: OtlpHttpReceiver) -> None:
    """/status must name the process the same way before and after its first request."""
    status_call = Call(path="/modeltap/status", method="GET")
    with tapped(monitored(otlp(http_receiver.endpoint))) as middleware:
        before = json.loads(drive(middleware, [status_call])[0].body)["process"]["instance_id"]
        drive(middleware, [ok_call(0)])
        assert middleware.tap.flush(5.0)
        wait_until(lambda: requests_recorded(middleware) == 1, what="the exchange in the snapshot")
        after = json.loads(drive(middleware, [status_call])[0].body)["process"]["instance_id"]
    assert before == after, f"/status instance_id changed from {before!r} to {after!r} at the first request"


# ---- configuration from the environment --------------------------------------------------------


@pytest.mark.timeout(60)
def test_environment_alone_configures_periodic_export(collector: tuple[str, Receiver]) -> None:
    protocol, receiver = collector
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=ml%20platform",
        "OTEL_SERVICE_NAME": "churn-from-env",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=staging,team=ml%20ops",
        "OTEL_TRACES_EXPORTER": "none",
    }
    config = ModelTapConfig.from_env(environ, monitor="inline", model_name="churn", model_version="3")
    with tapped(config) as middleware:
        drive(middleware, [ok_call(i) for i in range(5)])
        # No flush: the periodic export (every 200 ms) must deliver on its own, more than once.
        receiver.wait_for(
            lambda r: (
                total_count(r.latest_points(DURATION, accepted_only=True)) == 5
                and len(r.metric_requests()) >= 2
            ),
            timeout=5.0,
            description="two periodic exports, the latest with 5 exchanges",
        )

    point = receiver.latest_points(DURATION)[0]
    assert point.resource["service.name"] == "churn-from-env"
    assert point.resource["deployment.environment.name"] == "staging"
    assert point.resource["team"] == "ml ops"
    assert {k: point.attributes[k] for k in MODEL_ATTRIBUTES} == MODEL_ATTRIBUTES
    metric_requests = [r for r in receiver.requests() if r.signal == "metrics"]
    assert metric_requests
    assert all(r.headers.get("x-tenant") == "ml platform" for r in metric_requests)
    # OTEL_TRACES_EXPORTER=none: no trace export at all.
    assert [r for r in receiver.requests() if r.signal == "traces"] == []


def _listen_on_default_otlp_ports() -> list[socket.socket]:
    """Listen where OTLP exporters go by default (localhost:4317/4318), wherever that is free."""
    listeners: list[socket.socket] = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        for port in (4317, 4318):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.bind((host, port))
                sock.listen(8)
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            listeners.append(sock)
    return listeners


def _accepted_connections(listener: socket.socket) -> int:
    accepted = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return accepted
        conn.close()
        accepted += 1


@pytest.mark.timeout(60)
def test_no_endpoint_means_no_export_attempt() -> None:
    listeners = _listen_on_default_otlp_ports()
    try:
        config = ModelTapConfig.from_env({}, monitor="inline", model_name="churn", snapshot_interval_s=0.05)
        assert config.export.endpoint is None
        with tapped(config) as middleware:
            replies = drive(middleware, MIXED_TRAFFIC)
            assert len(replies) == 12
            assert middleware.tap.flush(5.0)
            wait_until(lambda: requests_recorded(middleware) == 12, what="12 exchanges in the snapshot")
            monitoring = middleware.tap.latest_snapshot().monitoring
            assert monitoring.export_failures == ()
            assert monitoring.last_export_unix_s == ()
            assert monitoring.spans_exported == 0
        assert [_accepted_connections(listener) for listener in listeners] == [0] * len(listeners)
    finally:
        for listener in listeners:
            listener.close()


@pytest.mark.timeout(60)
def test_otlp_timeout_from_the_environment_is_in_milliseconds() -> None:
    """The OTLP spec gives OTEL_EXPORTER_OTLP_TIMEOUT in milliseconds: 300 means 0.3 s, so an export
    to a collector that never answers must give up after about 0.3 s."""
    with OtlpHttpReceiver(default="hang") as receiver:
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "300",
            "OTEL_TRACES_EXPORTER": "none",
        }
        config = ModelTapConfig.from_env(
            environ, monitor="inline", model_name="churn", snapshot_interval_s=0.05
        )
        config = config.replace(
            export=dataclasses.replace(config.export, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
        )
        with tapped(config) as middleware:
            drive(middleware, [ok_call(0)])
            started = time.monotonic()
            finished = middleware.tap.flush(3.0)
            elapsed = time.monotonic() - started
            detail = (
                f"flush against a hanging collector took {elapsed:.2f}s (finished={finished}); "
                f"OTEL_EXPORTER_OTLP_TIMEOUT=300 was read as timeout_s={config.export.timeout_s}"
            )
            assert finished, detail
            assert elapsed < 0.3 + 1.0, detail
            wait_until(lambda: export_failures(middleware).get("metrics") == 1, what="one failed export")


# ---- collector faults ---------------------------------------------------------------------------

HTTP_FAULTS: dict[str, HttpBehaviour] = {
    "hang-http": "hang",
    "close-http": "close",
    "503-http": ("status", 503),
    "400-http": ("status", 400),
}


@pytest.fixture(params=["refused-http", "refused-grpc", *HTTP_FAULTS, "unavailable-grpc"])
def faulty_collector(request: pytest.FixtureRequest, unused_tcp_port: int) -> Iterator[tuple[str, str, str]]:
    """(protocol, endpoint, fault) of a collector that refuses, hangs, closes or answers with an error."""
    fault: str = request.param
    if fault.startswith("refused-"):
        protocol = "grpc" if fault.endswith("grpc") else "http/protobuf"
        yield protocol, f"http://127.0.0.1:{unused_tcp_port}", fault
    elif fault == "unavailable-grpc":
        with OtlpGrpcReceiver(default=("abort", grpc.StatusCode.UNAVAILABLE)) as grpc_receiver:
            yield "grpc", grpc_receiver.endpoint, fault
    else:
        with OtlpHttpReceiver(default=HTTP_FAULTS[fault]) as http_receiver:
            yield "http/protobuf", http_receiver.endpoint, fault


@pytest.mark.timeout(60)
def test_collector_faults_never_reach_the_client(faulty_collector: tuple[str, str, str]) -> None:
    protocol, endpoint, fault = faulty_collector
    baseline = drive(model_app(), MIXED_TRAFFIC)
    # Export continuously so the export thread is busy failing while requests are served.
    export = otlp(
        endpoint, protocol, metric_export_interval_s=0.05, span_export_interval_s=0.05, sampler=ALWAYS_ON
    )
    middleware = ModelTapMiddleware(model_app(), config=monitored(export))
    try:
        assert drive(middleware, MIXED_TRAFFIC) == baseline
        wait_until(
            lambda: (
                export_failures(middleware).get("metrics", 0) >= 1
                and export_failures(middleware).get("traces", 0) >= 1
            ),
            what="failed metric and span exports counted",
        )
        # The export thread is still failing (or stuck): the request path does not notice.
        assert drive(middleware, MIXED_TRAFFIC) == baseline
        wait_until(lambda: requests_recorded(middleware) == 24, what="24 exchanges in the snapshot")
        snapshot = middleware.tap.latest_snapshot()
        assert snapshot.monitoring.last_export_unix_s == ()
        assert snapshot.monitoring.spans_exported == 0
        assert snapshot.monitoring.internal_errors == ()
        drops = drop_counts(snapshot)
        # A 400 means the collector refused the data (never retried): counted as `rejected`.
        assert drops["rejected" if fault == "400-http" else "span_export_failed"] >= 1
        assert drops["queue_full"] == 0
    finally:
        started = time.monotonic()
        middleware.tap.shutdown()
        elapsed = time.monotonic() - started
    assert elapsed < SHUTDOWN_TIMEOUT_S + SHUTDOWN_MARGIN_S, f"shutdown took {elapsed:.2f}s"


@pytest.mark.timeout(60)
def test_span_batch_rejected_with_400_is_dropped_once_and_counted_as_rejected() -> None:
    """RELIABILITY.md D5: 400 Bad Request is not retried; the batch is dropped and counted as
    `modeltap.capture.dropped{modeltap.drop.reason=rejected}` +N."""
    with (
        OtlpHttpReceiver(default=("status", 400)) as receiver,
        tapped(monitored(otlp(receiver.endpoint, sampler=ALWAYS_ON, metrics_enabled=False))) as middleware,
    ):
        drive(middleware, [ok_call(i) for i in range(4)])
        assert middleware.tap.flush(5.0)
        assert len(receiver.requests("/v1/traces")) == 1
        assert len(receiver.spans()) == 4
        wait_until(lambda: export_failures(middleware) == {"traces": 1}, what="one failed span export")
        dropped = drop_counts(middleware.tap.latest_snapshot())
        assert dropped.get("rejected") == 4, f"drops by reason: {dropped}"


@pytest.mark.timeout(60)
def test_export_resumes_after_the_collector_recovers(http_receiver: OtlpHttpReceiver) -> None:
    """D16: two 503s (the first flush exports spans, then metrics), then the collector is healthy."""
    http_receiver.script(("status", 503), ("status", 503))
    with tapped(monitored(otlp(http_receiver.endpoint, sampler=ALWAYS_ON))) as middleware:
        drive(middleware, [ok_call(i) for i in range(3)])
        assert middleware.tap.flush(5.0)
        assert http_receiver.pending_behaviours() == 0
        wait_until(
            lambda: export_failures(middleware) == {"metrics": 1, "traces": 1}, what="both exports failed"
        )
        assert middleware.tap.latest_snapshot().monitoring.last_export_unix_s == ()

        recovered_after = time.time()
        drive(middleware, [ok_call(i) for i in range(3, 7)])
        assert middleware.tap.flush(5.0)
        wait_until(
            lambda: (
                {s for s, _ in middleware.tap.latest_snapshot().monitoring.last_export_unix_s}
                == {"metrics", "traces"}
            ),
            what="a successful export of both signals",
        )
        snapshot = middleware.tap.latest_snapshot()

    last_success = dict(snapshot.monitoring.last_export_unix_s)
    assert all(recovered_after <= when <= time.time() for when in last_success.values())
    assert dict(snapshot.monitoring.export_failures) == {"metrics": 1, "traces": 1}
    # Cumulative metrics lose nothing across the outage; the failed span batch is counted, not retried.
    assert total_count(http_receiver.latest_points(DURATION, accepted_only=True)) == 7
    assert len(http_receiver.spans(accepted_only=True)) == 4
    assert snapshot.monitoring.spans_exported == 4
    assert drop_counts(snapshot)["span_export_failed"] == 3


@pytest.mark.timeout(60)
def test_span_ring_overflow_is_counted_and_every_span_accounted_for() -> None:
    """D9: a hanging collector and a 10-span ring; 100 traced exchanges = exported + dropped."""
    sent = 100
    with OtlpHttpReceiver(default="hang") as receiver:
        export = otlp(
            receiver.endpoint,
            sampler=ALWAYS_ON,
            metrics_enabled=False,
            span_queue_max=10,
            span_batch_max=5,
            span_export_interval_s=0.05,
        )
        with tapped(monitored(export)) as middleware:
            replies = drive(middleware, [ok_call(i) for i in range(sent)])
            assert {r.status for r in replies} == {200}
            middleware.tap.flush(5.0)
            receiver.set_default("ok")

            def accounted() -> bool:
                middleware.tap.flush(5.0)
                snapshot = middleware.tap.latest_snapshot()
                drops = drop_counts(snapshot)
                return (
                    snapshot.monitoring.spans_exported
                    + drops["span_queue_full"]
                    + drops["span_export_failed"]
                    == sent
                )

            wait_until(accounted, timeout=10.0, what=f"all {sent} spans exported or counted as dropped")
            snapshot = middleware.tap.latest_snapshot()

    drops = drop_counts(snapshot)
    assert drops["span_queue_full"] > 0
    assert snapshot.monitoring.spans_exported == len(receiver.spans(accepted_only=True))
    # What reached the collector is what was exported plus what it never acknowledged.
    assert len(receiver.spans()) == snapshot.monitoring.spans_exported + drops["span_export_failed"]
    assert len({s.span_id for s in receiver.spans()}) == len(receiver.spans())


# ---- fork (C17) -----------------------------------------------------------------------------------


def _child_main(middleware: ModelTapMiddleware, parent_instance_id: str, report_fd: int) -> None:
    """Runs in the forked child; any assertion error is reported to the parent through the pipe."""
    fresh = middleware.tap.latest_snapshot()
    assert fresh.pid == os.getpid()
    assert fresh.instance_id != parent_instance_id
    assert fresh.duration == ()
    assert fresh.violations == ()
    assert fresh.monitoring.records_processed == 0
    assert all(point.value == 0 for point in fresh.dropped)
    replies = drive(middleware, [ok_call(10), ok_call(11)])
    assert [r.status for r in replies] == [200, 200]
    assert middleware.tap.flush(5.0)
    snapshot = middleware.tap.latest_snapshot()
    assert sum(p.count for p in snapshot.duration) == 2
    assert snapshot.instance_id != parent_instance_id
    assert snapshot.pid == os.getpid()
    middleware.tap.shutdown()
    os.write(report_fd, json.dumps({"instance_id": snapshot.instance_id}).encode())


@pytest.mark.timeout(60)
def test_forked_child_starts_from_zero_with_its_own_identity(http_receiver: OtlpHttpReceiver) -> None:
    config = monitored(otlp(http_receiver.endpoint, traces_enabled=False))
    with tapped(config) as middleware:
        drive(middleware, [ok_call(i) for i in range(4)])
        assert middleware.tap.flush(5.0)
        parent_snapshot = middleware.tap.latest_snapshot()
        assert sum(p.count for p in parent_snapshot.duration) == 4
        http_receiver.wait_for(lambda r: total_count(r.latest_points(DURATION)) == 4, timeout=5.0)
        parent_exported_id = http_receiver.latest_points(DURATION)[0].resource["service.instance.id"]

        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child process
            code = 0
            try:
                os.close(read_fd)
                _child_main(middleware, parent_snapshot.instance_id, write_fd)
            except BaseException:
                os.write(write_fd, ("\n" + traceback.format_exc()).encode())
                code = 1
            finally:
                os._exit(code)
        os.close(write_fd)
        deadline = time.monotonic() + 30.0
        while True:
            waited, status = os.waitpid(pid, os.WNOHANG)
            if waited:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("forked child did not finish within 30 s")
            time.sleep(0.01)
        with os.fdopen(read_fd, "rb") as pipe:
            report = pipe.read().decode()
        assert os.waitstatus_to_exitcode(status) == 0, f"child failed:{report}"
        child_instance_id = json.loads(report)["instance_id"]

        # The parent keeps its own state and keeps counting.
        drive(middleware, [ok_call(20)])
        assert middleware.tap.flush(5.0)
        assert sum(p.count for p in middleware.tap.latest_snapshot().duration) == 5
        assert middleware.tap.latest_snapshot().instance_id == parent_snapshot.instance_id

    child_points = [
        p
        for request in http_receiver.metric_requests(accepted_only=True)
        for p in flatten_metrics(request, DURATION)
        if p.resource["process.pid"] == pid
    ]
    assert child_points, "the child exported nothing"
    # The child exported only its own two exchanges, never the parent's four again.
    assert {p.count for p in child_points} == {2}
    assert {p.resource["service.instance.id"] for p in child_points} != {parent_exported_id}
    assert child_instance_id != parent_snapshot.instance_id


# ---- a real server process: SIGTERM (D12/D13) ------------------------------------------------------

SERVER_SCRIPT = '''\
"""Serve examples/fastapi_app.py (argv[1]) with uvicorn on a free loopback port, print the port."""
import importlib.util
import socket
import sys

import uvicorn

spec = importlib.util.spec_from_file_location("modeltap_example_app", sys.argv[1])
assert spec is not None and spec.loader is not None
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(128)
print(listener.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(module.app, log_level="warning", lifespan="on")).run(sockets=[listener])
'''
# ExportConfig.shutdown_timeout_s default (no OTEL_* variable sets it).
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0
EXIT_MARGIN_S = 3.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("collector_up", [True, False], ids=["collector-up", "collector-down"])
def test_sigterm_exits_in_time_and_flushes_every_request(
    tmp_path: Path, http_receiver: OtlpHttpReceiver, unused_tcp_port: int, collector_up: bool
) -> None:
    script = tmp_path / "serve_example.py"
    script.write_text(SERVER_SCRIPT)
    endpoint = http_receiver.endpoint if collector_up else f"http://127.0.0.1:{unused_tcp_port}"
    env = dict(os.environ)  # OTEL_*/MODELTAP_* already removed by clean_otel_env
    env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "churn-subprocess",
            # Only the shutdown flush may deliver: periodic exports are a minute away.
            "OTEL_METRIC_EXPORT_INTERVAL": "60000",
            "OTEL_BSP_SCHEDULE_DELAY": "60000",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2000",
        }
    )
    sent = 9
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(script), str(EXAMPLE_APP)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=tmp_path,
            text=True,
        )
    try:
        assert process.stdout is not None
        port_line = process.stdout.readline().strip()
        assert port_line.isdigit(), f"server did not start: {stderr_path.read_text()}"
        with httpx.Client(base_url=f"http://127.0.0.1:{port_line}", timeout=10.0) as client:
            assert client.get("/health").json() == {"status": "ok"}
            for _ in range(sent):
                response = client.post(PREDICT_PATH, json={"instances": [[0.1, 2, 3.5, 1]]})
                assert response.status_code == 200
                assert response.content == b'{"predictions":[0.72212]}'
        assert http_receiver.requests() == []  # nothing exported before shutdown
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=DEFAULT_SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S + 5.0)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    log = stderr_path.read_text()
    # uvicorn re-raises the signal it handled once shut down, so -SIGTERM is a clean exit too.
    assert returncode in (0, -signal.SIGTERM), log
    assert elapsed < DEFAULT_SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S, f"exit took {elapsed:.2f}s\n{log}"
    assert "Traceback" not in log
    if collector_up:
        http_receiver.wait_for(lambda r: r.latest_points(DURATION), timeout=2.0)
        duration = http_receiver.latest_points(DURATION, accepted_only=True)
        assert total_count(duration, PREDICT_ROUTE) == sent
        assert total_count(duration, "/health") == 1
        assert duration[0].resource["service.name"] == "churn-subprocess"
        predict_spans = [s for s in http_receiver.spans(accepted_only=True) if s.name.startswith("POST ")]
        assert len(predict_spans) == sent
    else:
        assert http_receiver.requests() == []
