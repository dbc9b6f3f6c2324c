"""The sidecar's direct path (`sidecar/direct.py`) against the app's path, on real sockets: the
usual exchange is forwarded from the protocols' callbacks, everything else is handed to the app
where it stands, and either way the client gets the same bytes, the upstream the same request and
the monitor the same record as with the direct path turned off (`MODELTAP_SIDECAR_DIRECT=0`)."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from modeltap.capture import compiled
from modeltap.config import ExportConfig, ModelTapConfig, SamplerConfig
from modeltap.records import PROXY_ERROR_KEY, ExchangeRecord
from modeltap.sidecar import direct
from tests.support.otlp_receiver import OtlpHttpReceiver
from tests.support.polling import wait_until
from tests.support.raw_client import RawClient, RawResponse
from tests.support.raw_upstream import RawUpstream
from tests.support.sidecar import RunningSidecar, pool_state, running_sidecar

pytestmark = [
    pytest.mark.skipif(
        not compiled.wanted(), reason="the extension is not built here, or MODELTAP_PURE_PYTHON turns it off"
    ),
    pytest.mark.usefixtures("clean_otel_env"),
    pytest.mark.timeout(60),
]

BODY = b'{"instances": [[1.0, 2.0, 3.0]]}'


def post(path: str, body: bytes = BODY, *extra: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: model\r\nContent-Type: application/json\r\n" % path.encode()
    return head + b"".join(extra) + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


@dataclass
class Run:
    responses: list[RawResponse]
    records: list[ExchangeRecord]
    paths: list[str]  # of the exchanges the direct path took
    handed_paths: list[str]  # of those it handed to the app
    upstream: dict[str, int]


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The paths of the exchanges the direct path took, and of those it handed to the app."""
    counts: dict[str, list[str]] = {"paths": [], "handed_paths": []}
    forward, hand_over = direct.Exchange.forward, direct.Exchange.hand_over

    def counted_forward(self: direct.Exchange) -> None:
        counts["paths"].append(self._scope["path"])
        forward(self)

    def counted_hand_over(self: direct.Exchange) -> None:
        if not self._done:
            counts["handed_paths"].append(self._scope["path"])
        hand_over(self)

    monkeypatch.setattr(direct.Exchange, "forward", counted_forward)
    monkeypatch.setattr(direct.Exchange, "hand_over", counted_hand_over)
    return counts


def run(
    monkeypatch: pytest.MonkeyPatch,
    spied: dict[str, list[str]],
    requests: list[bytes],
    *,
    direct_path: bool,
    monitoring: ModelTapConfig | None = None,
) -> Run:
    """Send `requests` one after the other on one client connection (after one warm-up request,
    so that a pooled upstream connection exists) and collect what everyone saw."""
    monkeypatch.setenv("MODELTAP_SIDECAR_DIRECT", "1" if direct_path else "0")
    spied["paths"].clear()
    spied["handed_paths"].clear()
    records: list[ExchangeRecord] = []
    with RawUpstream() as upstream, running_sidecar(upstream.url, monitoring, records=records) as sidecar:
        responses = []
        with RawClient(sidecar.port) as client:
            for data in [post("/ok"), *requests]:
                client.send(data)
                answer = client.read(responses=1)
                assert len(answer.responses) == 1, (direct_path, data[:60], answer.summary())
                responses.append(answer.responses[0])
                client._buffer.clear()
        assert _settled(sidecar)
        counts = upstream.counts()
    return Run(responses[1:], records[1:], list(spied["paths"]), list(spied["handed_paths"]), counts)


def _in_flight(sidecar: RunningSidecar) -> int:
    path = sidecar.sidecar.direct
    return 0 if path is None else int(sidecar.call(lambda: len(path.in_flight)))


def _settled(sidecar: RunningSidecar) -> bool:
    """Nothing held or counted in flight any more: connections, exchanges, the app's bound."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if pool_state(sidecar)[0] == 0 and not _in_flight(sidecar) and not sidecar.sidecar.proxy.inflight:
            return True
        time.sleep(0.01)
    return False


def comparable(record: ExchangeRecord) -> dict[str, Any]:
    """A record's fields that do not depend on the moment or the client's port."""
    varying = ("client", "server", "state", "extensions")
    scope = {key: value for key, value in record.scope.items() if key not in varying}
    return {
        "scope": scope,
        "status": record.status,
        "response_headers": record.response_headers,
        "request_parts": b"".join(record.request_parts),
        "request_size": record.request_size,
        # How a body was cut into parts depends on the reads: the kept bytes may not.
        "response_parts": stable(b"".join(record.response_parts)),
        "response_size": record.response_size,
        "exception_type": record.exception_type,
        "disconnected": record.disconnected,
        "weight": record.weight,
        "payload_weight": record.payload_weight,
        "traced": record.trace is not None,
        "answered": (record.response_started is not None, record.ended is not None),
        "first_body": record.first_body is not None,
        "ordered": record.started
        <= (record.response_started or record.started)
        <= (record.ended or record.finished)
        <= record.finished,
    }


def stable(body: bytes) -> object:
    """A body less what differs by run: the upstream's view of the proxy's port (`/echo`), the
    times in `/stream`'s chunks."""
    if re.match(rb"\d+ \d+\.\d+\.", body):
        return re.sub(rb" \d+\.\d+", b" T", body)
    if not body.startswith(b'{"method"'):
        return body
    document = json.loads(body)
    document.pop("peer", None)
    return document


def answered(response: RawResponse) -> tuple[int, bytes, list[tuple[bytes, bytes]], object]:
    return response.status, response.reason, response.headers, stable(response.body)


def echoed_header(response: RawResponse, name: str) -> str:
    values = [value for key, value in json.loads(response.body)["headers"] if key == name]
    assert len(values) == 1, values
    return str(values[0])


def same_as_the_app(
    monkeypatch: pytest.MonkeyPatch, spied: dict[str, list[str]], requests: list[bytes], **options: Any
) -> tuple[Run, Run]:
    fast = run(monkeypatch, spied, requests, direct_path=True, **options)
    slow = run(monkeypatch, spied, requests, direct_path=False, **options)
    assert slow.paths == []
    assert [answered(r) for r in fast.responses] == [answered(r) for r in slow.responses]
    assert len(fast.records) == len(slow.records)
    for index, (one, other) in enumerate(zip(fast.records, slow.records, strict=True)):
        seen, expected = comparable(one), comparable(other)
        for key, value in expected.items():
            assert seen[key] == value, (index, key)
    assert fast.upstream == slow.upstream
    return fast, slow


def test_the_usual_exchange_takes_the_direct_path_with_the_same_bytes_and_records(
    monkeypatch: pytest.MonkeyPatch, spied: dict[str, list[str]]
) -> None:
    requests = [
        post("/echo?x=1", BODY, b"X-Request-Id: r-1\r\nConnection: keep-alive\r\n"),
        post("/ok"),
        post("/echo-body", b"z" * 70_000),
        b"GET /echo/path%20with%20space?q=a%2Fb HTTP/1.1\r\nHost: model\r\n\r\n",
        b"GET /v1/models/m?q=ab&r= HTTP/1.1\r\nHost: model\r\nAccept: */*\r\n\r\n",
        post("/split"),  # the head, then the whole body in a second segment
        post("/split?size=0"),
        post("/status?code=503"),
        post("/echo", b""),
    ]
    fast, _ = same_as_the_app(monkeypatch, spied, requests)
    assert len(fast.records) == len(requests)
    # Not taken: a body longer than one read and a percent-encoded path (llhttp's path), and the
    # request after the upstream's 5xx, which closed its connection (no idle one to take).
    assert fast.paths == ["/echo", "/ok", "/v1/models/m", "/split", "/split", "/status"]
    assert fast.handed_paths == []
    assert echoed_header(fast.responses[0], "x-request-id") == "r-1"


def test_what_is_not_whole_or_fails_is_handed_to_the_app_with_the_same_outcome(
    monkeypatch: pytest.MonkeyPatch, spied: dict[str, list[str]]
) -> None:
    drop_on_reuse = b"GET /drop-on-reuse HTTP/1.1\r\nHost: model\r\n\r\n"
    requests = [
        post("/stream?chunks=5&delay=0.01"),
        post("/ok"),
        post("/no-content"),
        post("/ok"),
        post("/until-close"),
        post("/ok"),
        post("/ok"),
        post("/invalid?kind=conflicting-cl"),
        post("/ok"),
        post("/ok"),
        post("/invalid?kind=status-999"),
        post("/ok"),
        post("/ok"),
        post("/reset-before-headers"),
        post("/ok"),
        post("/ok"),
        drop_on_reuse,
        drop_on_reuse,  # a GET: replayed on a new connection
        post("/ok"),
        post("/interim"),
        post("/ok"),
        post("/drip?size=5&interval=0.01"),  # the head, then the body a byte at a time: streamed
        post("/ok"),
        post("/drip?size=5&interval=0.01&part=head"),
        post("/ok"),
        post("/huge?size=1000000"),
    ]
    fast, _ = same_as_the_app(monkeypatch, spied, requests)
    # Each of these went out on a pooled connection and came back not whole (or not at all);
    # the usual exchanges between them were answered from the callbacks.
    handed = {"/stream", "/no-content", "/until-close", "/invalid", "/reset-before-headers"}
    assert handed | {"/drop-on-reuse", "/drip", "/huge"} >= set(fast.handed_paths) >= handed
    assert "/ok" in fast.paths
    codes = [r.scope.get(PROXY_ERROR_KEY) for r in fast.records]
    assert "upstream_protocol_error" in codes
    assert "upstream_reset_before_response_started" in codes


def test_traced_exchanges_carry_their_span_upstream(
    monkeypatch: pytest.MonkeyPatch, spied: dict[str, list[str]], http_receiver: OtlpHttpReceiver
) -> None:
    export = ExportConfig(
        endpoint=http_receiver.endpoint, timeout_s=1.0, shutdown_timeout_s=1.0, span_export_interval_s=60.0,
        sampler=SamplerConfig("always_on", 1.0),
    )  # fmt: skip
    monitoring = ModelTapConfig(monitor="inline", views_prefix=None, export=export)
    monkeypatch.setenv("MODELTAP_SIDECAR_DIRECT", "1")
    with RawUpstream() as upstream, running_sidecar(upstream.url, monitoring) as sidecar:
        with RawClient(sidecar.port) as client:
            sent = []
            for _ in range(3):
                client.send(post("/echo"))
                sent.append(echoed_header(client.read(responses=1).responses[0], "traceparent"))
                client._buffer.clear()
        assert sidecar.sidecar.tap.flush(5.0)
        http_receiver.wait_for(lambda r: len(r.spans()) >= 3, timeout=5.0, description="3 spans")
    assert len(spied["paths"]) == 2  # the first request opened the connection
    assert spied["handed_paths"] == []
    spans = {f"00-{span.trace_id}-{span.span_id}-01" for span in http_receiver.spans()}
    assert len(spans) == 3
    assert set(sent) == spans


def test_a_client_that_leaves_cancels_the_upstream_call_and_is_filed_as_gone(
    monkeypatch: pytest.MonkeyPatch, spied: dict[str, list[str]]
) -> None:
    outcomes = []
    for direct_path in (True, False):
        monkeypatch.setenv("MODELTAP_SIDECAR_DIRECT", "1" if direct_path else "0")
        spied["paths"].clear()
        records: list[ExchangeRecord] = []
        with RawUpstream() as upstream, running_sidecar(upstream.url, records=records) as sidecar:
            with RawClient(sidecar.port) as client:
                client.send(post("/ok"))
                assert client.read(responses=1).responses[0].status == 200
                client.send(post("/hang"))
                deadline = time.monotonic() + 5
                while upstream.count("/hang") == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
            assert _settled(sidecar)
            deadline = time.monotonic() + 5
            while len(records) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            # The upstream sees its connection closed: the call was cancelled, not left to hang.
            assert wait_until(lambda: upstream.peer_closed == 1)
            outcomes.append((comparable(records[1]), sidecar.proxy_errors(), len(spied["paths"])))
    (fast, fast_errors, forwarded), (slow, slow_errors, _) = outcomes
    assert forwarded == 1
    assert fast == slow
    assert fast["scope"][PROXY_ERROR_KEY] == "client_disconnected"
    assert fast_errors == slow_errors == {"client_disconnected": 1}


def test_requests_in_flight_when_the_drain_begins_are_answered_by_the_app(
    monkeypatch: pytest.MonkeyPatch, spied: dict[str, list[str]]
) -> None:
    monkeypatch.setenv("MODELTAP_SIDECAR_DIRECT", "1")
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, drain_timeout_s=0.3) as sidecar,
        RawClient(sidecar.port) as client,
    ):
        client.send(post("/ok"))
        assert client.read(responses=1).responses[0].status == 200
        client._buffer.clear()
        client.send(post("/sleep?s=3"))
        deadline = time.monotonic() + 5
        while upstream.count("/sleep") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _in_flight(sidecar) == 1
        stopping = threading.Thread(target=lambda: sidecar.call(sidecar.sidecar.stop))
        stopping.start()
        answer = client.read(responses=1, timeout_s=5)
        stopping.join()
    assert spied["paths"] == ["/sleep"]  # the first request opened the connection
    assert spied["handed_paths"] == ["/sleep"]
    assert answer.responses[0].status == 503
    assert answer.responses[0].error_code == "draining"


def test_a_defect_of_the_direct_path_closes_the_client_connection_and_is_counted(
    monkeypatch: pytest.MonkeyPatch, spied: dict[str, list[str]]
) -> None:
    monkeypatch.setenv("MODELTAP_SIDECAR_DIRECT", "1")

    def broken(*arguments: Any) -> Any:
        raise RuntimeError("a defect")

    with RawUpstream() as upstream, running_sidecar(upstream.url) as sidecar:
        with RawClient(sidecar.port) as client:
            client.send(post("/ok"))
            assert client.read(responses=1).responses[0].status == 200
            monkeypatch.setattr(direct, "_response_head", broken)
            client.send(post("/ok"))
            assert client.wait_closed(5)
            assert client.exchange().responses[1:] == []
        monkeypatch.undo()
        assert _settled(sidecar)
        assert sidecar.sidecar.tap._internal_errors == {"sidecar_direct_path": 1}
        assert pool_state(sidecar) == (0, 0)  # the connection of the broken exchange is closed
        with RawClient(sidecar.port) as client:
            client.send(post("/ok"))
            assert client.read(responses=1).responses[0].status == 200


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/stall-after-headers?sent=0", 504, "upstream_idle_timeout"),
        ("/close-mid-body?sent=0&pause=0.2", 502, "upstream_reset_after_response_started"),
    ],
)
def test_a_head_whose_body_never_follows_is_answered_as_an_error(
    monkeypatch: pytest.MonkeyPatch, spied: dict[str, list[str]], path: str, status: int, code: str
) -> None:
    # The direct path holds a head that came alone until its body's first bytes: when none come,
    # nothing of the response has reached the client, which gets a whole error response (through
    # the app, the head would have gone out and the connection been cut at the same moment).
    monkeypatch.setenv("MODELTAP_SIDECAR_DIRECT", "1")
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, idle_timeout_s=0.3, response_timeout_s=5.0) as sidecar,
        RawClient(sidecar.port) as client,
    ):
        client.send(post("/ok"))
        assert client.read(responses=1).responses[0].status == 200
        client._buffer.clear()
        client.send(post(path))
        answer = client.read(responses=1, timeout_s=5).responses[0]
        assert (answer.status, answer.error_code) == (status, code)
        assert sidecar.proxy_errors() == {code: 1}
        assert _settled(sidecar)
        client._buffer.clear()
        client.send(post("/ok"))  # the client's connection goes on
        assert client.read(responses=1).responses[0].status == 200
    assert spied["handed_paths"] == [path.split("?")[0]]


def test_a_request_read_while_a_direct_one_is_in_flight_is_answered_after_it(
    monkeypatch: pytest.MonkeyPatch, spied: dict[str, list[str]]
) -> None:
    monkeypatch.setenv("MODELTAP_SIDECAR_DIRECT", "1")
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url) as sidecar,
        RawClient(sidecar.port) as client,
    ):
        client.send(post("/ok"))
        assert client.read(responses=1).responses[0].status == 200
        client._buffer.clear()
        client.send(post("/sleep?s=0.3"))
        assert wait_until(lambda: upstream.count("/sleep") == 1)
        client.send(post("/echo-body", b"second"))  # pipelined behind the one in flight
        answers = client.read(responses=2, timeout_s=5).responses
        assert [(a.status, a.body) for a in answers] == [(200, b"slept"), (200, b"second")]
        assert _settled(sidecar)
    assert spied["paths"] == ["/sleep"]
    assert spied["handed_paths"] == []
