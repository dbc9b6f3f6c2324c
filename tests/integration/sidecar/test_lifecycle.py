"""The sidecar's lifecycle as Kubernetes drives it: a real `modeltap sidecar` process in front of a
real uvicorn upstream, started, probed and stopped with SIGTERM (RELIABILITY.md G1-G4, A1's
readiness part, D12, D13).

* G1: SIGTERM with requests in flight: `/readyz` fails at once, new requests are still served for
  the drain delay with `Connection: close`, the in-flight ones complete 200, the process exits 0.
  A second SIGTERM skips the waiting (what is in flight gets 503 `draining`) but not the flush.
* G2: past the drain timeout what is left is ended visibly (503 `draining` before the response
  started, an aborted connection after), never a hang, and the process still exits 0 in time.
* G3: the admin port's paths are never proxied and never captured.
* G4 / A1: `/readyz` follows the upstream: 503 until it listens, 200 while it does, 503 again after
  `readiness_failures` failed probes once it is gone; the sidecar itself does not wait for it.
* D12 / D13: the final telemetry flush is bounded when the collector is down, and complete when it
  is up (metric values and span count equal what was sent).

Every run checks the exit code and that nothing on stderr is a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import uvicorn

from modeltap.config import ExportConfig
from tests.support.asgi_driver import Receive, Scope, Send
from tests.support.otlp_receiver import OtlpHttpReceiver
from tests.support.sidecar_process import (
    STARTUP_TIMEOUT_S,
    SidecarProcess,
    sidecar_process,
)

# Interpreter start-up and imports; generous, since the machine may be busy.
# The final telemetry flush is bounded by export.shutdown_timeout_s (no variable sets it).
FLUSH_S = ExportConfig().shutdown_timeout_s
# "Within its bound plus a generous margin" (CLARIFICATIONS.md, timing in tests).
MARGIN_S = 4.0
PREDICT = "/v1/models/m:predict"
PAYLOAD = b'{"instances": [[1.0, 2.0, 3.0]]}'


# ---- the upstream ----------------------------------------------------------------------------------


@dataclass
class Upstream:
    """A model server: `/sleep?s=N` answers after N s, `/stream?s=N` sends its headers and a first
    chunk, then the rest after N s; anything else answers at once. Sleeps end early on `release()`
    (so a stopped test never waits out a 60 s sleep). Counts every request that reaches it."""

    requests: int = 0
    inflight: int = 0
    paths: list[str] = field(default_factory=list)
    _released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self._released.set()

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        # The release comes from the test's thread, so a threading.Event polled on this loop.
        while time.monotonic() < deadline and not self._released.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        self.paths.append(scope["path"])
        self.inflight += 1
        try:
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)
            seconds = float(parse_qs(scope["query_string"].decode()).get("s", ["0"])[0])
            if scope["path"] == "/stream":
                headers = [(b"content-type", b"text/plain")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
                await self._sleep(seconds)
                await send({"type": "http.response.body", "body": b"last\n"})
                return
            await self._sleep(seconds)
            body = b"slept %g" % seconds if scope["path"] == "/sleep" else b'{"predictions": [6.0]}'
            headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.inflight -= 1


def reserved_socket() -> socket.socket:
    """A bound loopback socket that does not listen yet: connecting to its port is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class UpstreamServer:
    """`app` under a real uvicorn on `sock` (it starts listening on `start()`), in a thread."""

    def __init__(self, app: Upstream, sock: socket.socket) -> None:
        self.app = app
        self.sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="upstream", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: self._server.started, 10.0, "upstream started")

    def stop(self) -> None:
        self.app.release()
        self._server.should_exit = True
        self._thread.join(10.0)
        assert not self._thread.is_alive(), "upstream did not stop within 10 s"


@contextlib.contextmanager
def upstream_server(app: Upstream) -> Iterator[UpstreamServer]:
    with reserved_socket() as sock:
        server = UpstreamServer(app, sock)
        server.start()
        try:
            yield server
        finally:
            server.stop()


# ---- the sidecar process ---------------------------------------------------------------------------


# ---- helpers -----------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> float:
    """Poll every 10 ms; the seconds it took, or fail after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s:.1f} s")
        time.sleep(0.01)
    return time.monotonic() - started


def client(timeout_s: float = 30.0) -> httpx.Client:
    return httpx.Client(timeout=timeout_s, trust_env=False)


def readyz(sidecar: SidecarProcess) -> httpx.Response:
    with client(5.0) as c:
        return c.get(f"{sidecar.admin_url}/readyz")


def status(sidecar: SidecarProcess) -> dict[str, Any]:
    with client(5.0) as c:
        document = c.get(f"{sidecar.admin_url}/status").json()
    assert isinstance(document, dict)
    return document


@dataclass
class Outcome:
    response: httpx.Response | None = None
    error: BaseException | None = None
    first_chunk: bytes = b""
    elapsed_s: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


def in_background(request: Callable[[Outcome], None]) -> tuple[Outcome, threading.Thread]:
    outcome = Outcome()

    def run() -> None:
        started = time.monotonic()
        try:
            request(outcome)
        except BaseException as exc:  # reported to the test
            outcome.error = exc
        finally:
            outcome.elapsed_s = time.monotonic() - started
            outcome.done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return outcome, thread


def get(url: str) -> Callable[[Outcome], None]:
    def request(outcome: Outcome) -> None:
        with client() as c:
            outcome.response = c.get(url)

    return request


def stream(url: str) -> Callable[[Outcome], None]:
    def request(outcome: Outcome) -> None:
        with client() as c, c.stream("GET", url) as response:
            outcome.response = response
            chunks = response.iter_raw()
            outcome.first_chunk = next(chunks)
            for _ in chunks:
                pass

    return request


# ---- G1 ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_g1_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path) -> None:
    # The requests outlast the drain delay, so they finish while uvicorn waits for them.
    in_flight, sleep_s = 5, 2.5
    drain_delay_s, drain_timeout_s = 1.5, 5.0
    app = Upstream()
    with (
        upstream_server(app) as upstream,
        sidecar_process(
            upstream.url,
            tmp_path,
            "--drain-delay-s",
            str(drain_delay_s),
            "--drain-timeout-s",
            str(drain_timeout_s),
            "--probe-interval-s",
            "0.1",
        ) as sidecar,
    ):
        wait_until(lambda: readyz(sidecar).status_code == 200, 10.0, "ready")
        running = [in_background(get(f"{sidecar.url}/sleep?s={sleep_s}")) for _ in range(in_flight)]
        wait_until(lambda: app.inflight == in_flight, 10.0, "all requests at the upstream")

        sidecar.terminate()
        # Readiness fails at once, while every request is still in flight.
        wait_until(lambda: readyz(sidecar).status_code == 503, 1.0, "/readyz 503 after SIGTERM")
        assert readyz(sidecar).text == "draining\n"
        assert not [outcome for outcome, _ in running if outcome.done.is_set()]
        # During the drain delay new requests are served, and told to go elsewhere next time.
        with client() as c:
            late = c.post(f"{sidecar.url}{PREDICT}", content=PAYLOAD)
        assert late.status_code == 200
        assert late.headers["connection"] == "close"

        for outcome, thread in running:
            thread.join(drain_delay_s + drain_timeout_s + MARGIN_S)
            assert outcome.error is None, repr(outcome.error)
            assert outcome.response is not None
            assert outcome.response.status_code == 200
            assert outcome.response.content == b"slept 2.5"
            assert outcome.response.headers["connection"] == "close"
            assert "x-modeltap-error" not in outcome.response.headers
        sidecar.assert_clean_exit(drain_delay_s + drain_timeout_s + FLUSH_S + MARGIN_S)
    assert app.requests == in_flight + 1


@pytest.mark.timeout(90)
def test_g1_a_second_sigterm_skips_the_waiting_but_not_the_flush(
    tmp_path: Path, http_receiver: OtlpHttpReceiver
) -> None:
    in_flight = 3
    drain_delay_s, drain_timeout_s = 5.0, 10.0
    app = Upstream()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2000",
    }
    with (
        upstream_server(app) as upstream,
        sidecar_process(
            upstream.url,
            tmp_path,
            "--drain-delay-s",
            str(drain_delay_s),
            "--drain-timeout-s",
            str(drain_timeout_s),
            env=env,
        ) as sidecar,
    ):
        running = [in_background(get(f"{sidecar.url}/sleep?s=30")) for _ in range(in_flight)]
        wait_until(lambda: app.inflight == in_flight, 10.0, "all requests at the upstream")
        first = sidecar.terminate()
        wait_until(lambda: readyz(sidecar).status_code == 503, 1.0, "/readyz 503 after SIGTERM")
        sidecar.terminate()  # the operator insists: no more waiting

        for outcome, thread in running:
            thread.join(MARGIN_S)
            assert outcome.response is not None, repr(outcome.error)
            assert outcome.response.status_code == 503
            assert outcome.response.headers["x-modeltap-error"] == "draining"
        sidecar.assert_clean_exit(FLUSH_S + MARGIN_S)
        # Neither the drain delay nor the drain timeout was waited out.
        assert time.monotonic() - first < drain_delay_s

    # The final flush still ran, and counted the requests the forced exit ended.
    errors = {
        str(point.attributes["modeltap.error.code"]): point.value
        for point in http_receiver.latest_points("modeltap.proxy.errors")
    }
    assert errors == {"draining": in_flight}, http_receiver.summary()
    durations = http_receiver.latest_points("http.server.request.duration")
    assert sum(point.count or 0 for point in durations) == in_flight, http_receiver.summary()


# ---- G2 ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_g2_drain_timeout_ends_what_is_left_visibly_and_exits_in_time(tmp_path: Path) -> None:
    drain_delay_s, drain_timeout_s = 0.2, 1.0
    app = Upstream()
    with (
        upstream_server(app) as upstream,
        sidecar_process(
            upstream.url,
            tmp_path,
            "--drain-delay-s",
            str(drain_delay_s),
            "--drain-timeout-s",
            str(drain_timeout_s),
            "--probe-interval-s",
            "0.1",
        ) as sidecar,
    ):
        wait_until(lambda: readyz(sidecar).status_code == 200, 10.0, "ready")
        waiting, waiting_thread = in_background(get(f"{sidecar.url}/sleep?s=60"))
        streaming, streaming_thread = in_background(stream(f"{sidecar.url}/stream?s=60"))
        wait_until(lambda: app.inflight == 2 and streaming.first_chunk, 10.0, "both requests under way")

        sidecar.terminate()
        for thread in (waiting_thread, streaming_thread):
            thread.join(drain_delay_s + drain_timeout_s + MARGIN_S)
            assert not thread.is_alive(), "a request outlived the drain timeout"

        # Nothing answered yet: a 503 saying why (not uvicorn's 500, not a hang).
        assert waiting.error is None, repr(waiting.error)
        assert waiting.response is not None
        assert waiting.response.status_code == 503
        assert waiting.response.headers["x-modeltap-error"] == "draining"
        assert waiting.response.headers["retry-after"] == "1"
        assert waiting.response.headers["connection"] == "close"
        # Headers already sent: the connection is cut, so the client sees a failure, never a
        # shorter body that looks complete.
        assert streaming.response is not None
        assert streaming.response.status_code == 200
        assert streaming.first_chunk == b"first\n"
        assert isinstance(streaming.error, httpx.TransportError), repr(streaming.error)
        assert not isinstance(streaming.error, httpx.TimeoutException)
        for outcome in (waiting, streaming):
            assert outcome.elapsed_s <= drain_delay_s + drain_timeout_s + MARGIN_S

        sidecar.assert_clean_exit(drain_delay_s + drain_timeout_s + FLUSH_S + MARGIN_S)
    assert app.requests == 2


# ---- G3 ----------------------------------------------------------------------------------------------


ADMIN_PATHS = ("/healthz", "/readyz", "/status", "/metrics", "/")


@pytest.mark.timeout(60)
def test_g3_admin_paths_are_never_proxied_nor_captured(tmp_path: Path) -> None:
    app = Upstream()
    with (
        upstream_server(app) as upstream,
        sidecar_process(
            upstream.url, tmp_path, "--probe-interval-s", "0.1", "--drain-delay-s", "0"
        ) as sidecar,
    ):
        wait_until(lambda: readyz(sidecar).status_code == 200, 10.0, "ready")

        def probe_everything() -> None:
            with client(5.0) as c:
                for path in ADMIN_PATHS:
                    for agent in ("kube-probe/1.30", "curl/8.5.0"):
                        response = c.get(f"{sidecar.admin_url}{path}", headers={"user-agent": agent})
                        assert response.status_code == 200, (path, response.text)
                        assert "x-modeltap-error" not in response.headers

        probe_everything()
        assert app.requests == 0
        assert status(sidecar)["requests"]["total"] == 0

        # The proxy port is the model's: even a views path goes upstream (and is captured).
        with client() as c:
            assert c.post(f"{sidecar.url}{PREDICT}", content=PAYLOAD).status_code == 200
            assert c.get(f"{sidecar.url}/modeltap/status").status_code == 200
        assert app.paths == [PREDICT, "/modeltap/status"]

        probe_everything()
        after_probes = time.time()
        # A snapshot taken after the probes counts exactly the two proxied exchanges.
        wait_until(lambda: status(sidecar)["taken_unix_s"] > after_probes, 10.0, "a fresh snapshot")
        document = status(sidecar)
        assert document["requests"]["total"] == 2
        assert document["latency_s"]["count"] == 2
        assert document["proxy_errors"] == {}
        assert app.requests == 2

        sidecar.terminate()
        sidecar.assert_clean_exit(FLUSH_S + MARGIN_S)


# ---- G4 and A1 ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_g4_a1_readiness_follows_the_upstream(tmp_path: Path) -> None:
    probe_interval_s, failures = 0.1, 4
    app = Upstream()
    with reserved_socket() as sock:
        server = UpstreamServer(app, sock)
        with sidecar_process(
            server.url,
            tmp_path,
            "--probe-interval-s",
            str(probe_interval_s),
            "--readiness-failures",
            str(failures),
            "--drain-delay-s",
            "0",
        ) as sidecar:
            # G4: the sidecar starts without waiting for its upstream; it only is not ready.
            assert sidecar.startup_s < STARTUP_TIMEOUT_S
            with client(5.0) as c:
                assert c.get(f"{sidecar.admin_url}/healthz").status_code == 200
                not_ready = c.get(f"{sidecar.admin_url}/readyz")
                assert (not_ready.status_code, not_ready.text) == (503, "upstream not reachable\n")
                refused = c.post(f"{sidecar.url}{PREDICT}", content=PAYLOAD)
            assert refused.status_code == 502
            assert refused.headers["x-modeltap-error"] == "upstream_connect_failure"
            time.sleep(5 * probe_interval_s)
            assert readyz(sidecar).status_code == 503

            server.start()
            took_s = wait_until(lambda: readyz(sidecar).status_code == 200, 5.0, "/readyz 200 once listening")
            assert took_s <= 5 * probe_interval_s + MARGIN_S
            with client() as c:
                assert c.post(f"{sidecar.url}{PREDICT}", content=PAYLOAD).status_code == 200

            # A1: the upstream goes away; readiness fails after `failures` failed probes, not one.
            died = time.monotonic()
            server.stop()
            wait_until(lambda: readyz(sidecar).status_code == 503, 5.0, "/readyz 503 after the upstream died")
            took_s = time.monotonic() - died
            assert readyz(sidecar).text == "upstream not reachable\n"
            # Failed probes are `probe_interval_s` apart while the sidecar still is ready.
            assert took_s >= 0.75 * (failures - 1) * probe_interval_s
            assert took_s <= failures * probe_interval_s + MARGIN_S
            wait_until(
                lambda: status(sidecar)["proxy_errors"] == {"upstream_connect_failure": 1},
                5.0,
                "counted once",
            )

            sidecar.terminate()
            sidecar.assert_clean_exit(FLUSH_S + MARGIN_S)
    assert app.requests == 1


# ---- D12 and D13 ---------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("collector", "export_timeout_ms"),
    [
        ("refusing", "500"),
        # An export timeout longer than the flush budget: only the budget can end the final flush.
        ("hanging", "30000"),
    ],
)
def test_d12_sigterm_with_the_collector_down_exits_within_the_flush_bound(
    tmp_path: Path, unused_tcp_port: int, collector: str, export_timeout_ms: str
) -> None:
    drain_delay_s, drain_timeout_s = 0.2, 1.0
    app = Upstream()
    with contextlib.ExitStack() as stack:
        if collector == "hanging":
            endpoint = stack.enter_context(OtlpHttpReceiver(default="hang")).endpoint
        else:
            endpoint = f"http://127.0.0.1:{unused_tcp_port}"
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_EXPORTER_OTLP_TIMEOUT": export_timeout_ms,
        }
        upstream = stack.enter_context(upstream_server(app))
        sidecar = stack.enter_context(
            sidecar_process(
                upstream.url,
                tmp_path,
                "--drain-delay-s",
                str(drain_delay_s),
                "--drain-timeout-s",
                str(drain_timeout_s),
                env=env,
            )
        )
        with client() as c:
            for _ in range(5):
                assert c.post(f"{sidecar.url}{PREDICT}", content=PAYLOAD).status_code == 200
        sidecar.terminate()
        sidecar.assert_clean_exit(drain_delay_s + drain_timeout_s + FLUSH_S + MARGIN_S)


@pytest.mark.timeout(90)
def test_d13_sigterm_with_the_collector_up_flushes_the_final_telemetry(
    tmp_path: Path, http_receiver: OtlpHttpReceiver
) -> None:
    ok, too_large = 4, 2
    app = Upstream()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
        "OTEL_TRACES_SAMPLER": "always_on",
        # Nothing leaves on a schedule during the test: what arrives is the shutdown flush.
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2000",
    }
    with (
        upstream_server(app) as upstream,
        sidecar_process(
            upstream.url, tmp_path, "--drain-delay-s", "0.2", "--max-header-bytes", "1024", env=env
        ) as sidecar,
    ):
        with client() as c:
            for _ in range(ok):
                assert c.post(f"{sidecar.url}{PREDICT}", content=PAYLOAD).status_code == 200
            for _ in range(too_large):
                rejected = c.post(f"{sidecar.url}{PREDICT}", content=PAYLOAD, headers={"x-big": "b" * 4096})
                assert rejected.status_code == 431
                assert rejected.headers["x-modeltap-error"] == "request_headers_too_large"
        assert http_receiver.metric_requests() == []
        assert http_receiver.trace_requests() == []

        sidecar.terminate()
        sidecar.assert_clean_exit(0.2 + FLUSH_S + MARGIN_S)

    # The receiver answered before the process exited: everything is here already.
    errors = {
        str(point.attributes["modeltap.error.code"]): point.value
        for point in http_receiver.latest_points("modeltap.proxy.errors")
    }
    assert errors == {"request_headers_too_large": too_large}, http_receiver.summary()
    durations = http_receiver.latest_points("http.server.request.duration")
    assert sum(point.count or 0 for point in durations) == ok, http_receiver.summary()
    spans = http_receiver.spans()
    assert len(spans) == ok, http_receiver.summary()
    assert {span.attributes["http.response.status_code"] for span in spans} == {200}
    assert app.requests == ok
