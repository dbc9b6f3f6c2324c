"""What the sidecar tells the operator, checked where the operator reads it: the OTLP a real receiver
decodes, and `/status` and `/metrics` on the admin port.

* `modeltap.proxy.errors{modeltap.error.code}` counts exactly the failures induced, per code, and
  the same counts appear in `/status` and the Prometheus text (CLARIFICATIONS.md, names).
* A traced exchange's span is the upstream's parent: the `traceparent` the upstream receives
  carries the exported span's trace id and span id; a client's sampled `traceparent` is continued;
  when the exchange is not traced, the client's `traceparent` reaches the upstream unchanged.
* The span of an exchange the sidecar failed has `error.type` = its `x-modeltap-error` code.
* A reference profile turns proxied KServe V1 traffic into drift features on the admin port.

The sidecar runs in process (`running_sidecar`) in front of a real uvicorn upstream; export
intervals are long, so telemetry leaves only on `tap.flush()`.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import numpy as np
import pytest

from modeltap import ExportConfig, ModelTapConfig, SamplerConfig
from modeltap.reference.builder import build_profile
from modeltap.reference.document import write_profile
from tests.support.asgi_driver import Receive, Scope, Send
from tests.support.otlp_receiver import OtlpHttpReceiver, SpanRecord
from tests.support.servers import serve
from tests.support.sidecar import RunningSidecar, running_sidecar

pytestmark = [pytest.mark.usefixtures("clean_otel_env"), pytest.mark.timeout(60)]

MODEL = "m"
PREDICT = f"/v1/models/{MODEL}:predict"
ALWAYS_ON = SamplerConfig("always_on", 1.0)
ALWAYS_OFF = SamplerConfig("always_off", 0.0)
CLIENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


# ---- the upstream ------------------------------------------------------------------------------------


@dataclass
class Upstream:
    """A KServe V1 model server that records each request's path and headers. `/sleep?s=N` answers
    after N s; the model's prediction for a row is `0.5 a + 0.1 b` (or the sum of a list row)."""

    seen: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def headers(self, path: str) -> list[tuple[str, str]]:
        with self.lock:
            matches = [headers for seen_path, headers in self.seen if seen_path == path]
        assert len(matches) == 1, (path, matches)
        return matches[0]

    def traceparents(self, path: str) -> list[str]:
        return [value for name, value in self.headers(path) if name == "traceparent"]

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        with self.lock:
            self.seen.append((scope["path"], headers))
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if scope["path"] == "/sleep":
            await asyncio.sleep(float(parse_qs(scope["query_string"].decode())["s"][0]))
        body = b'{"ok": true}'
        if scope["path"] == PREDICT:
            rows = json.loads(b"".join(chunks))["instances"]
            body = json.dumps({"predictions": [predict_row(row) for row in rows]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


def predict_row(row: Any) -> float:
    if isinstance(row, dict):
        return round(0.5 * float(row["a"]) + 0.1 * float(row["b"]), 6)
    return round(float(sum(row)), 6)


def monitoring(
    receiver: OtlpHttpReceiver | None, sampler: SamplerConfig = ALWAYS_ON, **options: Any
) -> ModelTapConfig:
    export = ExportConfig(
        endpoint=receiver.endpoint if receiver is not None else None,
        protocol="http/protobuf",
        timeout_s=1.0,
        shutdown_timeout_s=1.0,
        metric_export_interval_s=60.0,
        span_export_interval_s=60.0,
        service_name="sidecar-test",
        sampler=sampler,
    )
    # The proxy port is the model's: no views on it (the sidecar's settings do the same).
    return ModelTapConfig(monitor="inline", model_name=MODEL, views_prefix=None, export=export, **options)


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, str]]:
    app = Upstream()
    with serve(app, name="telemetry-upstream") as url:
        yield app, url


def flushed_spans(sidecar: RunningSidecar, receiver: OtlpHttpReceiver, expected: int) -> list[SpanRecord]:
    assert sidecar.sidecar.tap.flush(5.0)
    receiver.wait_for(lambda r: len(r.spans()) >= expected, timeout=5.0, description=f"{expected} spans")
    spans = receiver.spans()
    assert len(spans) == expected, receiver.summary()
    return spans


def span_for(spans: Sequence[SpanRecord], path: str) -> SpanRecord:
    matches = [span for span in spans if span.attributes.get("url.path") == path]
    assert len(matches) == 1, (path, [s.attributes.get("url.path") for s in spans])
    return matches[0]


def admin_get(sidecar: RunningSidecar, path: str) -> httpx.Response:
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        response = client.get(f"{sidecar.admin_url}{path}")
    assert response.status_code == 200, response.text
    return response


def prometheus_proxy_errors(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for match in re.finditer(
        r'^modeltap_proxy_errors_total\{[^}]*modeltap_error_code="([^"]+)"[^}]*\} (\S+)$', text, re.M
    ):
        counts[match.group(1)] = counts.get(match.group(1), 0.0) + float(match.group(2))
    return counts


# ---- modeltap.proxy.errors -------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    status: int
    code: str | None  # the x-modeltap-error expected, None for the upstream's own answer
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    captured: bool = True  # reaches the proxy app (and so has a span)


@dataclass(frozen=True)
class Scenario:
    id: str
    upstream_alive: bool
    settings: dict[str, Any]
    calls: tuple[Call, ...]


PAYLOAD = b'{"instances": [[1.0, 2.0, 3.0]]}'
BIG_HEADER = {"x-big": "b" * 4096}
SCENARIOS = [
    Scenario(
        "dead upstream",
        upstream_alive=False,
        settings={"max_header_bytes": 1024, "max_url_bytes": 256, "connect_timeout_s": 1.0},
        calls=(
            *(Call("POST", f"/refused/{i}", 502, "upstream_connect_failure", PAYLOAD) for i in range(3)),
            *(
                Call(
                    "POST", f"/big/{i}", 431, "request_headers_too_large", PAYLOAD, BIG_HEADER, captured=False
                )
                for i in range(2)
            ),
            Call("GET", "/" + "u" * 1024, 414, "uri_too_long", captured=False),
        ),
    ),
    Scenario(
        "slow upstream",
        upstream_alive=True,
        settings={"response_timeout_s": 0.2, "max_request_body_bytes": 1024},
        calls=(
            *(Call("GET", "/sleep", 504, "upstream_response_timeout") for _ in range(2)),
            Call("POST", "/too-large", 413, "request_body_too_large", b"x" * 4096),
            *(Call("POST", PREDICT, 200, None, PAYLOAD) for _ in range(2)),
        ),
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_proxy_errors_count_exactly_the_induced_failures(
    scenario: Scenario,
    upstream: tuple[Upstream, str],
    unused_tcp_port: int,
    http_receiver: OtlpHttpReceiver,
) -> None:
    app, url = upstream
    target = url if scenario.upstream_alive else f"http://127.0.0.1:{unused_tcp_port}"
    with running_sidecar(target, monitoring(http_receiver), **scenario.settings) as sidecar:
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            for call in scenario.calls:
                query = "?s=1" if call.path == "/sleep" else ""
                response = client.request(
                    call.method, f"{sidecar.url}{call.path}{query}", content=call.body, headers=call.headers
                )
                assert response.status_code == call.status, (call, response.text)
                assert response.headers.get("x-modeltap-error") == call.code
        captured = [call for call in scenario.calls if call.captured]
        spans = flushed_spans(sidecar, http_receiver, len(captured))
        expected: dict[str, int] = {}
        for call in scenario.calls:
            if call.code is not None:
                expected[call.code] = expected.get(call.code, 0) + 1

        exported = {
            str(point.attributes["modeltap.error.code"]): point.value
            for point in http_receiver.latest_points("modeltap.proxy.errors")
        }
        assert exported == expected, http_receiver.summary()
        assert sidecar.proxy_errors() == expected
        assert admin_get(sidecar, "/status").json()["proxy_errors"] == expected
        assert prometheus_proxy_errors(admin_get(sidecar, "/metrics").text) == expected

    # The span of every exchange the sidecar failed names the code the client saw.
    seen = sorted(
        (
            str(span.attributes["url.path"]),
            span.attributes["http.response.status_code"],
            span.attributes.get("error.type"),
        )
        for span in spans
    )
    assert seen == sorted((call.path, call.status, call.code) for call in captured)
    for span in spans:
        status = span.attributes["http.response.status_code"]
        assert isinstance(status, int)
        if status >= 500:
            assert span.status_code == "STATUS_CODE_ERROR"
        elif "error.type" not in span.attributes:
            assert span.status_code == "STATUS_CODE_UNSET"
    if not scenario.upstream_alive:
        assert app.count == 0


def test_a_502_span_carries_the_error_code(unused_tcp_port: int, http_receiver: OtlpHttpReceiver) -> None:
    with running_sidecar(f"http://127.0.0.1:{unused_tcp_port}", monitoring(http_receiver)) as sidecar:
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            response = client.post(f"{sidecar.url}{PREDICT}", content=PAYLOAD)
        assert response.status_code == 502
        (span,) = flushed_spans(sidecar, http_receiver, 1)
    assert span.attributes["error.type"] == response.headers["x-modeltap-error"] == "upstream_connect_failure"
    assert span.status_code == "STATUS_CODE_ERROR"
    assert span.kind == "SPAN_KIND_SERVER"


# ---- W3C trace context to the upstream -------------------------------------------------------------


def parse_traceparent(value: str) -> tuple[str, str, str]:
    match = TRACEPARENT.match(value)
    assert match, value
    trace_id, parent_id, flags = match.groups()
    return trace_id, parent_id, flags


def send(sidecar: RunningSidecar, path: str, headers: dict[str, str] | None = None) -> None:
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        response = client.post(f"{sidecar.url}{path}", content=PAYLOAD, headers=headers or {})
    assert response.status_code == 200, response.text


def test_the_upstream_sees_the_exported_span_as_its_parent(
    upstream: tuple[Upstream, str], http_receiver: OtlpHttpReceiver
) -> None:
    app, url = upstream
    paths = [f"/trace/{i}" for i in range(3)]
    with running_sidecar(url, monitoring(http_receiver)) as sidecar:
        for path in paths:
            send(sidecar, path)
        spans = flushed_spans(sidecar, http_receiver, len(paths))

    for path in paths:
        span = span_for(spans, path)
        (traceparent,) = app.traceparents(path)
        trace_id, parent_id, flags = parse_traceparent(traceparent)
        assert trace_id == span.trace_id
        assert parent_id == span.span_id
        assert flags == "01"
        assert span.parent_span_id == ""  # a new trace: the sidecar's span is its root
    assert len({span.trace_id for span in spans}) == len(paths)


def test_a_client_traceparent_is_continued(
    upstream: tuple[Upstream, str], http_receiver: OtlpHttpReceiver
) -> None:
    app, url = upstream
    client_traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-01"
    with running_sidecar(url, monitoring(http_receiver)) as sidecar:
        send(sidecar, "/continued", {"traceparent": client_traceparent, "tracestate": "vendor=1"})
        (span,) = flushed_spans(sidecar, http_receiver, 1)

    assert span.trace_id == CLIENT_TRACE_ID
    assert span.parent_span_id == CLIENT_PARENT_ID
    (traceparent,) = app.traceparents("/continued")
    assert parse_traceparent(traceparent) == (CLIENT_TRACE_ID, span.span_id, "01")
    # tracestate is the client's, end to end.
    assert [v for k, v in app.headers("/continued") if k == "tracestate"] == ["vendor=1"]


@pytest.mark.parametrize(
    ("sampler", "exporting"),
    [
        (ALWAYS_OFF, True),
        (SamplerConfig("parentbased_always_on", 1.0), True),  # an unsampled parent is followed
        (ALWAYS_ON, False),  # nothing exported: nothing traced
    ],
    ids=["always_off", "parentbased, unsampled parent", "no exporter"],
)
def test_an_untraced_exchange_passes_the_client_traceparent_unchanged(
    upstream: tuple[Upstream, str], http_receiver: OtlpHttpReceiver, sampler: SamplerConfig, exporting: bool
) -> None:
    app, url = upstream
    unsampled = f"00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-00"
    sampled = f"00-{CLIENT_TRACE_ID}-{CLIENT_PARENT_ID}-01"
    settings = monitoring(http_receiver if exporting else None, sampler)
    with running_sidecar(url, settings) as sidecar:
        send(sidecar, "/unsampled", {"traceparent": unsampled})
        send(sidecar, "/none")
        if sampler.name != "parentbased_always_on":
            send(sidecar, "/sampled", {"traceparent": sampled})
        assert sidecar.sidecar.tap.flush(5.0)
        if exporting:
            http_receiver.wait_for(lambda r: r.metric_requests(), timeout=5.0, description="the flush")

    assert app.traceparents("/unsampled") == [unsampled]
    if sampler.name == "parentbased_always_on":
        # A new trace is sampled under parentbased_always_on: the upstream gets the sidecar's span.
        (traceparent,) = app.traceparents("/none")
        assert parse_traceparent(traceparent)[2] == "01"
        assert [s.attributes["url.path"] for s in http_receiver.spans()] == ["/none"]
    else:
        assert app.traceparents("/none") == []
        assert app.traceparents("/sampled") == [sampled]
        assert http_receiver.spans() == []


# ---- drift on the admin port -----------------------------------------------------------------------


REFERENCE_ROWS = 5000
REQUESTS, ROWS_PER_REQUEST = 60, 10


@pytest.fixture
def reference(tmp_path: Path) -> tuple[Path, str]:
    rng = np.random.default_rng(20260101)
    a = rng.normal(0.0, 1.0, REFERENCE_ROWS)
    b = rng.normal(5.0, 2.0, REFERENCE_ROWS)
    prediction = np.round(0.5 * a + 0.1 * b, 6)
    document = build_profile(
        {"a": a, "b": b, "prediction": prediction}, prediction="prediction", model_name=MODEL
    )
    path = tmp_path / "reference.json"
    write_profile(document, path)
    profile_id = document["id"]
    assert isinstance(profile_id, str)
    return path, profile_id


def kserve_traffic(shift_a: float) -> Iterator[bytes]:
    rng = np.random.default_rng(7)
    for _ in range(REQUESTS):
        a = rng.normal(shift_a, 1.0, ROWS_PER_REQUEST)
        b = rng.normal(5.0, 2.0, ROWS_PER_REQUEST)
        rows = [{"a": float(x), "b": float(y)} for x, y in zip(a, b, strict=True)]
        yield json.dumps({"instances": rows}).encode()


def test_a_reference_profile_yields_drift_features_on_the_admin_port(
    upstream: tuple[Upstream, str], reference: tuple[Path, str]
) -> None:
    app, url = upstream
    path, profile_id = reference
    settings = monitoring(None, reference=str(path), min_samples=100)
    with running_sidecar(url, settings) as sidecar:
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            for body in kserve_traffic(shift_a=1.5):
                response = client.post(f"{sidecar.url}{PREDICT}", content=body)
                assert response.status_code == 200
                assert len(response.json()["predictions"]) == ROWS_PER_REQUEST
        assert sidecar.sidecar.tap.flush(5.0)
        status = admin_get(sidecar, "/status").json()
        page = admin_get(sidecar, "/").text

    assert app.count == REQUESTS
    assert status["reference"]["id"] == profile_id
    assert status["requests"]["total"] == REQUESTS
    features = {f["name"]: f for f in status["features"]}
    assert {"a", "b", "prediction"} <= set(features)
    for name in ("a", "b", "prediction"):
        feature = features[name]
        assert feature["monitored"] is True, feature
        assert feature["count"] == REQUESTS * ROWS_PER_REQUEST, feature
        assert feature["window_count"] == REQUESTS * ROWS_PER_REQUEST, feature
        assert feature["psi"] is not None, feature
    assert features["a"]["role"] == "input"
    assert features["prediction"]["role"] == "output"
    # `a` moved by 1.5 sigma; `b` did not.
    assert features["a"]["level"] in ("WARNING", "CRITICAL"), features["a"]
    assert features["a"]["psi"] > 0.2
    assert features["b"]["level"] == "OK", features["b"]
    assert features["b"]["psi"] < 0.1
    levels = ("OK", "INFO", "WARNING", "CRITICAL", "EMERGENCY")
    assert status["level"] == max((f["level"] for f in features.values()), key=levels.index)
    assert "<html" in page.lower()
