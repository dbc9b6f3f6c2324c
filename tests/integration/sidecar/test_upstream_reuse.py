"""Pooled upstream connections: an upstream's close is never seen by another request (issue 10,
item 1).

A real uvicorn app that raises answers 500 and then closes the connection; the sidecar must not
hand that connection to anyone else. The other tests use the scriptable `RawUpstream` to close,
reset or mis-frame at exactly the moment that matters, and check which requests are replayed (Go's
net/http rules: a reused connection, nothing answered, and nothing written or a replayable
request) and that each replay is counted once in `modeltap.proxy.retries`.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, MutableMapping
from typing import Any

import httpx
import pytest
import uvloop
from fastapi import FastAPI

from modeltap import ExportConfig, ModelTapConfig, SamplerConfig
from modeltap.sidecar.headers import TrustedPeers
from modeltap.sidecar.proxy import ProxyApp, ProxyLimits
from modeltap.sidecar.upstream import UpstreamConnection, UpstreamPool
from tests.support.otlp_receiver import OtlpHttpReceiver
from tests.support.polling import wait_until
from tests.support.raw_upstream import RawUpstream
from tests.support.servers import serve
from tests.support.sidecar import pool_state, running_sidecar

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("clean_otel_env")]
ERROR = "x-modeltap-error"


def raising_app() -> FastAPI:
    app = FastAPI()

    @app.post("/predict")
    async def predict(payload: dict[str, list[float]]) -> dict[str, float]:
        return {"prediction": sum(payload["x"])}

    @app.post("/explode")
    async def explode(payload: dict[str, list[float]]) -> dict[str, float]:
        raise RuntimeError("the model failed")

    return app


def test_a_model_error_never_costs_another_client_a_502() -> None:
    """Two clients at once, 1000 requests each: one makes the app raise (Starlette's 500, then
    uvicorn closes the connection), the other is valid. Every valid request gets its 200 and
    every raising one the app's own 500: no connection the app closed is handed to anyone."""
    per_client = 1000
    outcomes: dict[str, Counter[tuple[int, str | None]]] = {}

    def client(path: str) -> None:
        seen: Counter[tuple[int, str | None]] = Counter()
        with httpx.Client(base_url=sidecar.url, timeout=10.0, trust_env=False) as http:
            for i in range(per_client):
                response = http.post(path, json={"x": [float(i), 1.0]})
                seen[(response.status_code, response.headers.get("x-modeltap-error"))] += 1
        outcomes[path] = seen

    # uvicorn's own error log (a traceback per raising request) is kept on: it is part of the
    # timing that lets the close arrive after the sidecar has pooled the connection.
    with (
        serve(raising_app(), name="uvicorn-raising", log_level="error") as upstream,
        running_sidecar(upstream) as sidecar,
    ):
        threads = [threading.Thread(target=client, args=(p,)) for p in ("/explode", "/predict")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(100)
        errors = sidecar.proxy_errors()
        retries = sidecar.call(lambda: sidecar.sidecar.tap._proxy_retries)
    assert outcomes["/predict"] == {(200, None): per_client}, (outcomes, errors)
    assert outcomes["/explode"] == {(500, None): per_client}, (outcomes, errors)
    assert errors == {}
    assert retries == 0  # POSTs without a key: nothing could have been replayed


# ---- what is pooled ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "pooled"),
    [
        ("/ok", True),
        ("/ok-with?connection=close", False),
        ("/ok-with?version=1.0", False),
        ("/ok-with?version=1.0&connection=keep-alive", True),
        ("/status?code=500", False),
        ("/status?code=503", False),
        ("/status?code=429", True),
        ("/until-close?size=10", False),  # framed by the close
    ],
)
def test_a_connection_is_pooled_only_when_its_response_let_it_live(target: str, pooled: bool) -> None:
    # The raw upstream keeps every connection open (except /until-close): only the sidecar's own
    # decision keeps it out of the pool.
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url) as sidecar,
        httpx.Client(timeout=10.0, trust_env=False) as client,
    ):
        first = client.get(f"{sidecar.url}{target}")
        assert ERROR not in first.headers
        assert pool_state(sidecar) == (0, 1 if pooled else 0)
        assert client.get(f"{sidecar.url}/ok").status_code == 200
        assert upstream.request_connections == (1 if pooled else 2)
        assert sidecar.proxy_errors() == {}


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_an_idle_connection_the_upstream_closes_leaves_the_pool_at_once(reset: bool) -> None:
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, pool_keepalive_s=30.0) as sidecar,
        httpx.Client(timeout=10.0, trust_env=False) as client,
    ):
        answer = client.get(f"{sidecar.url}/close-after-answer?after=0.1&reset={int(reset)}")
        assert answer.status_code == 200
        assert wait_until(lambda: upstream.closed_after_answer == 1)
        # No request comes: the pool lets go of it on the close itself, not at the next checkout.
        assert wait_until(lambda: pool_state(sidecar) == (0, 0), 3.0), pool_state(sidecar)
        assert client.post(f"{sidecar.url}/ok", content=b"{}").status_code == 200
        assert upstream.request_connections == 2
        assert sidecar.proxy_errors() == {}


# ---- the close the event loop has not seen yet ----------------------------------------------
#
# These drive the proxy app on a loop the test owns, so the upstream's close can land while the
# loop is not running: the kernel has the FIN or reset, the loop has not read it.


class Direct:
    """A `ProxyApp` and its pool on a uvloop loop run by the test; requests are ASGI calls."""

    def __init__(self, upstream: RawUpstream) -> None:
        self.upstream = upstream
        self.errors: list[str] = []
        self.retries = 0
        self.pool = UpstreamPool(
            "127.0.0.1",
            upstream.port,
            connect_timeout_s=2.0,
            keepalive_expiry_s=30.0,
            max_idle=8,
            max_header_bytes=64 * 1024,
        )
        self.app = ProxyApp(self.pool, ProxyLimits(), TrustedPeers([]), self.errors.append, self._retry)

    def _retry(self) -> None:
        self.retries += 1

    async def post(self, path: str, query: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()) -> Any:
        """One POST with a 2-byte body; (status, error code, body). Nothing here yields to the
        loop before the proxy app writes to a pooled connection."""
        scope: dict[str, Any] = {
            "type": "http",
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "headers": [(b"host", b"model.test"), (b"content-length", b"2"), *headers],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        await self.app(scope, receive, send)
        start_headers = dict(sent[0]["headers"])
        code = start_headers.get(ERROR.encode())
        body = b"".join(m.get("body", b"") for m in sent[1:])
        return sent[0]["status"], code.decode() if code else None, body

    async def pool_a_connection_then_close_it(self, reset: bool) -> None:
        """One exchange whose connection is pooled, then the upstream's close of it, waited for
        with the loop blocked (so only the kernel knows)."""
        answer = await self.post("/close-after-answer", b"after=0.05&reset=%d" % reset)
        assert answer == (200, None, b"ok")
        assert self.pool.idle_count == 1
        block_until_closed(self.upstream)


def block_until_closed(upstream: RawUpstream) -> None:
    """Wait for `/close-after-answer` to close, blocking: the loop must not run meanwhile."""
    assert wait_until(lambda: upstream.closed_after_answer >= 1)
    time.sleep(0.05)  # the FIN or reset crosses the loopback


def run_direct(upstream: RawUpstream, scenario: Callable[[Direct], Any]) -> Direct:
    direct = Direct(upstream)
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenario(direct))
    finally:
        direct.pool.close()
        loop.close()
    return direct


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_a_close_pending_in_the_kernel_is_seen_at_checkout(reset: bool) -> None:
    # A POST without a key is never replayed once written; it gets a 200 here only because the
    # checkout asks the kernel and never writes it on the closed connection.
    async def scenario(direct: Direct) -> None:
        await direct.pool_a_connection_then_close_it(reset)
        assert await direct.post("/ok") == (200, None, b"ok")

    with RawUpstream() as upstream:
        direct = run_direct(upstream, scenario)
        assert upstream.request_connections == 2
    assert (direct.errors, direct.retries) == ([], 0)


@pytest.mark.parametrize(
    ("reset", "headers", "replayed"),
    [
        # The reset is already on the socket: the write fails, nothing of the request left.
        (True, (), True),
        # After a FIN the kernel accepts the request: it was written, so only a replayable
        # request goes again.
        (False, (), False),
        (False, ((b"idempotency-key", b"k-1"),), True),
        (False, ((b"x-idempotency-key", b"k-2"),), True),
    ],
    ids=["reset-unwritten", "fin-written", "fin-idempotency-key", "fin-x-idempotency-key"],
)
def test_a_close_that_lands_after_the_checkout(
    reset: bool, headers: tuple[tuple[bytes, bytes], ...], replayed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream's close landing between the checkout's check and the write (a window of
    microseconds, made certain here by skipping the check): a POST is replayed, once and on a
    new connection, only if nothing of it was written or it carries an idempotency key."""

    def always_quiet(pool: UpstreamPool, conn: UpstreamConnection) -> bool:
        return True

    monkeypatch.setattr(UpstreamPool, "_quiet", always_quiet)

    async def scenario(direct: Direct) -> None:
        await direct.pool_a_connection_then_close_it(reset)
        answer = await direct.post("/ok", headers=headers)
        if replayed:
            assert answer == (200, None, b"ok")
        else:
            assert answer[:2] == (502, "upstream_reset_before_response_started")

    with RawUpstream() as upstream:
        direct = run_direct(upstream, scenario)
        assert upstream.request_connections == (2 if replayed else 1)
        # A written request reached the upstream's socket but was never read (it had closed).
        assert upstream.count("/ok") == (1 if replayed else 0)
    assert direct.retries == (1 if replayed else 0)
    assert direct.errors == ([] if replayed else ["upstream_reset_before_response_started"])


# ---- which requests are replayed, and the count ---------------------------------------------


def monitoring(receiver: OtlpHttpReceiver) -> ModelTapConfig:
    export = ExportConfig(
        endpoint=receiver.endpoint,
        protocol="http/protobuf",
        timeout_s=1.0,
        shutdown_timeout_s=1.0,
        metric_export_interval_s=60.0,
        span_export_interval_s=60.0,
        service_name="sidecar-test",
        sampler=SamplerConfig("always_off", 0.0),
    )
    return ModelTapConfig(monitor="inline", model_name="m", views_prefix=None, export=export)


# (method, headers, replayed): Go's isReplayable. PUT and DELETE are idempotent by RFC 9110 but
# Go does not replay them without a key, and neither does the sidecar.
REPLAY_CASES: list[tuple[str, dict[str, str], bool]] = [
    ("GET", {}, True),
    ("OPTIONS", {}, True),
    ("POST", {"Idempotency-Key": "a1"}, True),
    ("POST", {"X-Idempotency-Key": "a2"}, True),
    ("POST", {}, False),
    ("PUT", {}, False),
    ("DELETE", {}, False),
    ("PATCH", {}, False),
]


def test_replays_follow_go_and_are_counted_in_otlp_status_and_metrics(
    http_receiver: OtlpHttpReceiver,
) -> None:
    """`/drop-on-reuse` answers a connection's first request and closes on the next one without
    answering, after reading it: the request was written, so only a replayable one goes again."""
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, monitoring(http_receiver), pool_keepalive_s=30.0) as sidecar,
        httpx.Client(timeout=10.0, trust_env=False) as client,
    ):
        url = f"{sidecar.url}/drop-on-reuse"
        for method, headers, replayed in REPLAY_CASES:
            if pool_state(sidecar) == (0, 0):
                assert client.get(url).content == b"first"  # a connection that answered once
            assert pool_state(sidecar) == (0, 1)
            before = upstream.count("/drop-on-reuse")
            body = b"{}" if method in ("POST", "PUT", "PATCH") else None
            answer = client.request(method, url, headers=headers, content=body)
            case = (method, headers)
            if replayed:
                assert (answer.status_code, answer.content) == (200, b"first"), case
                assert upstream.count("/drop-on-reuse") - before == 2, case
            else:
                assert answer.status_code == 502, case
                assert answer.headers[ERROR] == "upstream_reset_before_response_started", case
                assert upstream.count("/drop-on-reuse") - before == 1, case
        expected_retries = sum(replayed for _, _, replayed in REPLAY_CASES)
        expected_errors = {"upstream_reset_before_response_started": len(REPLAY_CASES) - expected_retries}
        assert sidecar.proxy_errors() == expected_errors
        assert sidecar.sidecar.tap.flush(5.0)
        http_receiver.wait_for(
            lambda r: bool(r.latest_points("modeltap.proxy.retries")), timeout=5.0, description="retries"
        )
        points = http_receiver.latest_points("modeltap.proxy.retries")
        assert [(dict(p.attributes), p.value) for p in points] == [({}, expected_retries)]
        with httpx.Client(base_url=sidecar.admin_url, timeout=5.0, trust_env=False) as admin:
            status = admin.get("/status").json()
            metrics = admin.get("/metrics").text
        assert status["proxy_retries"] == expected_retries
        assert status["proxy_errors"] == expected_errors
        assert re.findall(r"^modeltap_proxy_retries_total (\S+)$", metrics, re.M) == [str(expected_retries)]
