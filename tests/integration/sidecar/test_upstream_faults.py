"""Upstream faults through a real sidecar (RELIABILITY.md A1-A11, A13, A15, G6).

The upstream is `RawUpstream` (plain sockets, so it can misbehave in ways no framework would) or,
for the stale keep-alive race (A7), a real uvicorn. Each test checks what the client sees (status,
`x-modeltap-error`, or an unfinished response where the headers had already gone out: never a
shorter body that looks complete), the sidecar's error counters, how many requests reached the
upstream (nothing but a stale pooled connection is retried) and, for deadlines, that they fire at
their bound (asserted with a generous margin, never tighter).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import hashlib
import json
import os
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import h11
import httpx
import pytest
import uvicorn

from modeltap.records import ExchangeRecord
from tests.support.polling import wait_until
from tests.support.raw_upstream import RawUpstream, body_bytes, unused_port
from tests.support.sidecar import RunningSidecar, pool_state, running_sidecar

MARGIN_S = 1.0  # deadlines are asserted within their bound plus this
ERROR = "x-modeltap-error"
_TLS = ssl.create_default_context()  # built once: loading the CA bundle per client costs ~60 ms


def new_client() -> httpx.Client:
    return httpx.Client(timeout=10.0, verify=_TLS)


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[RawUpstream, RunningSidecar]]:
    """One upstream and sidecar for the tests that only need counter changes (see `Since`)."""
    with RawUpstream() as upstream, running_sidecar(upstream.url) as sidecar:
        yield upstream, sidecar


class Since:
    """What the shared upstream and sidecar counted since this object was made."""

    def __init__(self, upstream: RawUpstream, sidecar: RunningSidecar) -> None:
        self.upstream = upstream
        self.sidecar = sidecar
        self._errors = sidecar.proxy_errors()
        self._requests = upstream.counts()
        self._peer_closed = upstream.peer_closed

    def errors(self) -> dict[str, int]:
        now = self.sidecar.proxy_errors()
        return {
            code: n - self._errors.get(code, 0) for code, n in now.items() if n != self._errors.get(code, 0)
        }

    def requests(self, path: str) -> int:
        return self.upstream.count(path) - self._requests.get(path, 0)

    def peer_closed(self) -> int:
        return self.upstream.peer_closed - self._peer_closed


def timed_request(method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, float]:
    """One request on a new connection, and how long it took (the client is built untimed)."""
    with new_client() as client:
        started = time.monotonic()
        response = client.request(method, url, **kwargs)
        return response, time.monotonic() - started


def read_raw_into(response: httpx.Response, received: bytearray) -> None:
    for piece in response.iter_raw():
        received += piece


class H11Client:
    """One raw keep-alive connection driven by h11, which rejects any framing error (a body
    after a 204, bytes left over after a HEAD response) instead of papering over it."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5.0)
        self.conn = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.sock.close()

    def send(self, event: h11.Request | h11.Data | h11.EndOfMessage) -> None:
        data = self.conn.send(event)
        if data:
            self.sock.sendall(data)

    def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def read_response(self) -> tuple[list[h11.InformationalResponse], h11.Response, bytes]:
        interim: list[h11.InformationalResponse] = []
        response: h11.Response | None = None
        body = bytearray()
        while True:
            event = self.next_event()
            if isinstance(event, h11.InformationalResponse):
                interim.append(event)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        assert response is not None
        return interim, response, bytes(body)

    def exchange(
        self, method: str, target: str, body: bytes = b""
    ) -> tuple[list[h11.InformationalResponse], h11.Response, bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = [("host", "sidecar.test")]
        if body:
            headers.append(("content-length", str(len(body))))
        self.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            self.send(h11.Data(data=body))
        self.send(h11.EndOfMessage())
        return self.read_response()


# ---- A1, A2: connecting --------------------------------------------------------------------


def test_a1_refused_connection_answers_502_at_once_and_fails_readiness() -> None:
    # connect_timeout_s is large: a refused connection must not wait for it.
    with running_sidecar(f"http://127.0.0.1:{unused_port()}", connect_timeout_s=5.0) as sidecar:
        response, elapsed = timed_request("POST", f"{sidecar.url}/v1/models/m:predict", json={"x": [1]})
        assert response.status_code == 502
        assert response.headers[ERROR] == "upstream_connect_failure"
        assert elapsed < 0.05 + MARGIN_S
        response, _ = timed_request("GET", f"{sidecar.url}/v1/models/m")
        assert response.status_code == 502
        assert response.headers[ERROR] == "upstream_connect_failure"
        assert sidecar.proxy_errors() == {"upstream_connect_failure": 2}
        with new_client() as client:
            assert client.get(f"{sidecar.admin_url}/readyz").status_code == 503


def _fill_backlog(port: int) -> tuple[list[socket.socket], bool]:
    """Park connections on a listen(0) socket that never accepts until one handshake stays
    pending; returns the parked sockets and whether a handshake did stay pending."""
    parked: list[socket.socket] = []
    for _ in range(8):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        parked.append(sock)
        _, writable, _ = select.select([], [sock], [], 0.2)
        if not writable:
            return parked, True
    return parked, False


def test_a2_connect_that_hangs_answers_504_at_the_connect_timeout() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    parked, full = _fill_backlog(port)
    try:
        with running_sidecar(
            f"http://127.0.0.1:{port}", connect_timeout_s=0.2, response_timeout_s=0.3
        ) as sidecar:
            response, elapsed = timed_request("POST", f"{sidecar.url}/predict", content=b"{}")
            assert response.status_code == 504
            if full:
                # Linux drops the SYN while the accept queue is full: the connect itself hangs.
                assert response.headers[ERROR] == "upstream_connect_timeout"
                assert 0.2 * 0.9 <= elapsed < 0.2 + MARGIN_S
                assert sidecar.proxy_errors() == {"upstream_connect_timeout": 1}
            else:
                # A kernel that completes every handshake on loopback: the connect succeeds and
                # the response deadline answers instead; either way a 504 within the bounds.
                assert response.headers[ERROR] in ("upstream_connect_timeout", "upstream_response_timeout")
                assert elapsed < 0.3 + MARGIN_S
    finally:
        for sock in parked:
            sock.close()
        listener.close()


# ---- A3, A4, A10: deadlines ----------------------------------------------------------------


def test_a3_upstream_that_never_answers_gets_504_and_its_connection_closed() -> None:
    with RawUpstream() as upstream, running_sidecar(upstream.url, response_timeout_s=0.3) as sidecar:
        response, elapsed = timed_request("GET", f"{sidecar.url}/hang")
        assert response.status_code == 504
        assert response.headers[ERROR] == "upstream_response_timeout"
        assert 0.3 * 0.9 <= elapsed < 0.3 + MARGIN_S
        assert upstream.count("/hang") == 1  # a deadline is not retried, not even for GET
        assert wait_until(lambda: upstream.peer_closed == 1), "the sidecar kept the connection open"
        assert pool_state(sidecar) == (0, 0)  # closed, not pooled
        assert sidecar.proxy_errors() == {"upstream_response_timeout": 1}
        # The next request gets a fresh connection and an answer.
        response, _ = timed_request("GET", f"{sidecar.url}/ok")
        assert (response.status_code, response.content) == (200, b"ok")
        assert upstream.request_connections == 2


def test_a4_headers_then_silence_aborts_the_response_at_the_idle_timeout() -> None:
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, idle_timeout_s=0.3, response_timeout_s=5.0) as sidecar,
        new_client() as client,
    ):
        received = bytearray()
        started = time.monotonic()
        with client.stream("GET", f"{sidecar.url}/stall-after-headers?sent=100") as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == "1000"
            with pytest.raises(httpx.RemoteProtocolError):
                read_raw_into(response, received)
        elapsed = time.monotonic() - started
        assert bytes(received) == body_bytes(100)  # what the upstream sent, and nothing more
        assert 0.3 * 0.9 <= elapsed < 0.3 + MARGIN_S
        assert sidecar.proxy_errors() == {"upstream_idle_timeout": 1}
        assert upstream.count("/stall-after-headers") == 1
        assert wait_until(lambda: upstream.peer_closed == 1)
        assert pool_state(sidecar) == (0, 0)


def test_a4_chunked_stall_never_gets_a_last_chunk() -> None:
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, idle_timeout_s=0.3) as sidecar,
    ):
        client = H11Client(sidecar.url)
        try:
            client.send(
                h11.Request(
                    method="GET", target="/stall-after-headers?chunked=1&sent=50", headers=[("host", "t")]
                )
            )
            client.send(h11.EndOfMessage())
            response = client.next_event()
            assert isinstance(response, h11.Response)
            assert response.status_code == 200
            data = client.next_event()
            assert isinstance(data, h11.Data)
            assert bytes(data.data) == body_bytes(50)
            # The sidecar closes the connection without the terminating chunk: h11 sees a
            # message cut short, not a complete one.
            with pytest.raises(h11.RemoteProtocolError):
                client.next_event()
        finally:
            client.close()
        assert sidecar.proxy_errors() == {"upstream_idle_timeout": 1}


def test_a10_dripped_headers_still_hit_the_response_deadline() -> None:
    # One byte of the status line and headers every 50 ms: bytes keep arriving, but the
    # response deadline counts from the request, not from the last byte.
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, response_timeout_s=0.3, idle_timeout_s=5.0) as sidecar,
    ):
        response, elapsed = timed_request("GET", f"{sidecar.url}/drip?part=head&interval=0.05")
        assert response.status_code == 504
        assert response.headers[ERROR] == "upstream_response_timeout"
        assert 0.3 * 0.9 <= elapsed < 0.3 + MARGIN_S
        assert sidecar.proxy_errors() == {"upstream_response_timeout": 1}


def test_a10_dripped_body_within_the_idle_timeout_lives_past_the_response_deadline() -> None:
    # After the headers only the idle timeout applies (CLARIFICATIONS.md), so long streams live.
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, response_timeout_s=0.2, idle_timeout_s=0.4) as sidecar,
    ):
        response, elapsed = timed_request("GET", f"{sidecar.url}/drip?size=10&interval=0.05")
        assert response.status_code == 200
        assert response.content == body_bytes(10)
        assert elapsed >= 0.45  # longer than the response deadline
        assert sidecar.proxy_errors() == {}


def test_a10_dripped_body_slower_than_the_idle_timeout_is_aborted() -> None:
    with RawUpstream() as upstream, running_sidecar(upstream.url, idle_timeout_s=0.2) as sidecar:
        started = time.monotonic()
        with (
            new_client() as client,
            client.stream("GET", f"{sidecar.url}/drip?size=10&interval=0.6") as response,
        ):
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()
        elapsed = time.monotonic() - started
        assert 0.2 * 0.9 <= elapsed < 0.2 + MARGIN_S
        assert sidecar.proxy_errors() == {"upstream_idle_timeout": 1}


# ---- A5, A6: the upstream goes away --------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/close-mid-body", "/close-mid-body?chunked=1", "/reset-mid-body"],
    ids=["content-length-fin", "chunked-fin", "content-length-rst"],
)
def test_a5_upstream_gone_mid_body_leaves_the_response_unfinished(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    records: list[ExchangeRecord] = []
    with RawUpstream() as upstream, running_sidecar(upstream.url, records=records) as sidecar:
        received = bytearray()
        with (
            new_client() as client,
            client.stream("POST", f"{sidecar.url}{target}", content=b"{}") as response,
        ):
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                read_raw_into(response, received)
        assert bytes(received) == body_bytes(400)
        assert sidecar.proxy_errors() == {"upstream_reset_after_response_started": 1}
        assert upstream.count(target.split("?")[0]) == 1
        assert wait_until(lambda: len(records) == 1)
        record = records[0]
        assert record.status == 200
        assert record.outcome != "complete"
        assert record.error_type == "upstream_reset_after_response_started"
        assert pool_state(sidecar) == (0, 0)


def test_a5_raw_client_sees_fewer_bytes_than_content_length_then_eof() -> None:
    with RawUpstream() as upstream, running_sidecar(upstream.url) as sidecar:
        sock = socket.create_connection(("127.0.0.1", sidecar.port), timeout=5.0)
        with sock:
            sock.sendall(b"GET /close-mid-body HTTP/1.1\r\nHost: t\r\n\r\n")
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"content-length: 1000" in head.lower()
        assert body == body_bytes(400)  # then the connection ended: 600 bytes short


def test_a6_upstream_gone_before_headers_answers_502_without_retry() -> None:
    # Only failed exchanges here, so nothing is ever pooled: every request is on a fresh
    # connection, and a fresh connection that failed is never retried, whatever the method.
    with RawUpstream() as upstream, running_sidecar(upstream.url) as sidecar:
        for path in ("/reset-before-headers", "/close-before-headers"):
            for method in ("GET", "POST"):
                body = b"{}" if method == "POST" else None
                response, _ = timed_request(method, f"{sidecar.url}{path}", content=body)
                assert response.status_code == 502, (path, method)
                assert response.headers[ERROR] == "upstream_reset_before_response_started"
            assert upstream.count(path) == 2, path  # one per request
        assert sidecar.proxy_errors() == {"upstream_reset_before_response_started": 4}
        assert pool_state(sidecar) == (0, 0)


def test_a6_a7_stale_pooled_connection_retries_get_once_and_never_post() -> None:
    """The race A7 is about, made deterministic: the upstream closes a pooled connection just as
    the next request arrives on it (what happens when the pool's expiry is longer than the
    upstream's keep-alive). GET is retried once on a fresh connection; POST is not retried and
    gets the 502 (the misconfiguration A7 warns about, documented)."""
    with RawUpstream() as upstream, running_sidecar(upstream.url, pool_keepalive_s=30.0) as sidecar:
        with new_client() as client:
            first = client.get(f"{sidecar.url}/drop-on-reuse")
            assert (first.status_code, first.content) == (200, b"first")
            assert pool_state(sidecar) == (0, 1)
            retried = client.get(f"{sidecar.url}/drop-on-reuse")
            assert (retried.status_code, retried.content) == (200, b"first")
            assert upstream.count("/drop-on-reuse") == 3
            assert upstream.request_connections == 2
            assert sidecar.proxy_errors() == {}
            post = client.post(f"{sidecar.url}/drop-on-reuse", content=b"{}")
        assert post.status_code == 502
        assert post.headers[ERROR] == "upstream_reset_before_response_started"
        assert upstream.count("/drop-on-reuse") == 4  # exactly one upstream request for the POST
        assert sidecar.proxy_errors() == {"upstream_reset_before_response_started": 1}


# ---- A7: stale keep-alive ------------------------------------------------------------------


async def _small_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    size = 0
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"received %d" % size
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def serve_with_keepalive(timeout_keep_alive: int) -> Iterator[str]:
    """A real uvicorn (httptools) closing idle keep-alive connections after `timeout_keep_alive` s."""
    config = uvicorn.Config(
        _small_app,
        host="127.0.0.1",
        port=0,
        http="httptools",
        log_level="warning",
        lifespan="on",
        timeout_keep_alive=timeout_keep_alive,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-keepalive", daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 10.0), "uvicorn did not start within 10 s"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10.0)
        assert not thread.is_alive()


def test_a7_requests_at_the_upstream_keepalive_period_never_fail() -> None:
    # uvicorn closes idle connections after 1 s; requests come every 1.0 s +- jitter, right at
    # that edge. With the pool's expiry (0.5 s) below the upstream's keep-alive, a connection
    # the upstream may be closing is never picked: zero errors, POST included (never retried).
    rng = random.Random(7)
    with (
        serve_with_keepalive(1) as upstream,
        running_sidecar(upstream, pool_keepalive_s=0.5) as sidecar,
        new_client() as client,
    ):
        statuses = []
        for i in range(5):
            if i:
                time.sleep(1.0 + rng.uniform(-0.15, 0.15))
            response = client.post(f"{sidecar.url}/predict", content=b"x" * (i + 1))
            statuses.append((response.status_code, response.content))
        assert statuses == [(200, b"received %d" % (i + 1)) for i in range(5)]
        assert sidecar.proxy_errors() == {}


def test_a7_connection_the_upstream_closed_while_pooled_is_not_reused() -> None:
    # The upstream's idle close (0.2 s) arrives while the connection sits in the pool (expiry
    # 30 s, misconfigured on purpose): the sidecar sees the FIN and opens a new connection.
    with (
        RawUpstream(idle_close_s=0.2) as upstream,
        running_sidecar(upstream.url, pool_keepalive_s=30.0) as sidecar,
        new_client() as client,
    ):
        assert client.post(f"{sidecar.url}/ok", content=b"1").status_code == 200
        time.sleep(0.4)  # twice the upstream's idle close
        assert client.post(f"{sidecar.url}/ok", content=b"2").status_code == 200
        assert upstream.request_connections == 2
        assert sidecar.proxy_errors() == {}


# ---- A8, A9: what the upstream answers -----------------------------------------------------


@pytest.mark.parametrize("code", [500, 503, 429])
def test_a8_upstream_errors_pass_through_unchanged_and_unretried(
    code: int, shared: tuple[RawUpstream, RunningSidecar]
) -> None:
    upstream, sidecar = shared
    since = Since(upstream, sidecar)
    direct, _ = timed_request("POST", f"{upstream.url}/status?code={code}", content=b"{}")
    proxied, _ = timed_request("POST", f"{sidecar.url}/status?code={code}", content=b"{}")
    assert proxied.status_code == direct.status_code == code
    assert proxied.content == direct.content
    for name in ("content-type", "content-length", "retry-after", "x-upstream-trace"):
        assert proxied.headers[name] == direct.headers[name]
    assert ERROR not in proxied.headers
    assert since.requests("/status") == 2  # one direct, one through the sidecar: no retry
    assert since.errors() == {}  # the upstream's own errors are not the sidecar's


@pytest.mark.parametrize("kind", sorted(RawUpstream.INVALID))
def test_a9_invalid_upstream_response_answers_502_and_discards_the_connection(
    kind: str, shared: tuple[RawUpstream, RunningSidecar]
) -> None:
    upstream, sidecar = shared
    since = Since(upstream, sidecar)
    response, _ = timed_request("GET", f"{sidecar.url}/invalid?kind={kind}")
    assert response.status_code == 502
    assert response.headers[ERROR] == "upstream_protocol_error"
    assert b"evil" not in response.content
    assert "set-cookie" not in response.headers
    assert since.requests("/invalid") == 1
    # The upstream waits until the connection is closed: the sidecar discarded it.
    assert wait_until(lambda: since.peer_closed() == 1), "the connection was not discarded"
    assert pool_state(sidecar)[0] == 0
    assert since.errors() == {"upstream_protocol_error": 1}


# ---- A11: overload -------------------------------------------------------------------------


def test_a11_requests_over_max_inflight_get_503_at_once() -> None:
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, max_inflight=4, response_timeout_s=5.0) as sidecar,
        concurrent.futures.ThreadPoolExecutor(10) as pool,
    ):
        futures = [
            pool.submit(timed_request, "POST", f"{sidecar.url}/sleep?s=1", content=b"{}") for _ in range(10)
        ]
        results = [future.result(30) for future in futures]
        served = [(r, t) for r, t in results if r.status_code == 200]
        refused = [(r, t) for r, t in results if r.status_code == 503]
        assert len(served) == 4
        assert len(refused) == 6
        for response, elapsed in refused:
            assert response.headers[ERROR] == "overloaded"
            assert response.headers["retry-after"] == "1"
            assert elapsed < 0.5  # immediately, not after the in-flight ones
        for response, elapsed in served:
            assert response.content == b"slept"  # unaffected by the overflow
            assert elapsed >= 0.9
        assert upstream.count("/sleep") == 4
        assert sidecar.proxy_errors() == {"overloaded": 6}


# ---- A13: interim responses and bodiless responses -----------------------------------------


def test_a13_1xx_204_304_and_head_are_framed_right_on_one_connection(
    shared: tuple[RawUpstream, RunningSidecar],
) -> None:
    upstream, sidecar = shared
    since = Since(upstream, sidecar)
    client = H11Client(sidecar.url)
    try:
        # The upstream's 100 Continue (and 103) are not forwarded; its final answer is.
        for target in ("/interim", "/interim?hints=1"):
            interim, response, body = client.exchange("POST", target, b"payload")
            assert interim == []
            assert response.status_code == 200
            assert body == hashlib.sha256(b"payload").hexdigest().encode()
        for target in ("/no-content", "/no-content?length=5"):
            _, response, body = client.exchange("GET", target)
            assert (response.status_code, body) == (204, b"")
            assert (b"x-kind", b"no-content") in response.headers
        _, response, body = client.exchange("GET", "/not-modified")
        assert (response.status_code, body) == (304, b"")
        assert (b"etag", b'"v1"') in response.headers
        _, response, body = client.exchange("HEAD", "/head")
        assert (response.status_code, body) == (200, b"")
        assert (b"content-length", b"5000") in response.headers
        _, response, body = client.exchange("GET", "/head")
        assert (response.status_code, body) == (200, body_bytes(5000))
        _, response, body = client.exchange("GET", "/until-close?size=3000")
        assert (response.status_code, body) == (200, body_bytes(3000))
        # Still in step after all of them: no stray byte was left on the connection.
        _, response, body = client.exchange("GET", "/ok")
        assert (response.status_code, body) == (200, b"ok")
    finally:
        client.close()
    assert since.errors() == {}


def test_a13_client_expect_100_continue_is_answered_and_the_body_forwarded(
    shared: tuple[RawUpstream, RunningSidecar],
) -> None:
    upstream, sidecar = shared
    since = Since(upstream, sidecar)
    payload = body_bytes(100_000)
    client = H11Client(sidecar.url)
    try:
        headers = [("host", "t"), ("content-length", str(len(payload))), ("expect", "100-continue")]
        client.send(h11.Request(method="POST", target="/echo", headers=headers))
        event = client.next_event()  # the sidecar's own 100, before any body byte was sent
        assert isinstance(event, h11.InformationalResponse)
        assert event.status_code == 100
        client.send(h11.Data(data=payload))
        client.send(h11.EndOfMessage())
        _, response, body = client.read_response()
    finally:
        client.close()
    assert response.status_code == 200
    echoed = json.loads(body)
    assert echoed["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert "expect" not in dict(echoed["headers"])  # answered by the sidecar, not forwarded
    assert since.requests("/echo") == 1
    assert since.errors() == {}


# ---- A15: compressed bodies ----------------------------------------------------------------


def test_a15_gzip_response_passes_through_byte_for_byte(shared: tuple[RawUpstream, RunningSidecar]) -> None:
    upstream, sidecar = shared
    since = Since(upstream, sidecar)
    raw: dict[str, bytes] = {}
    with new_client() as client:
        for name, base in (("direct", upstream.url), ("proxied", sidecar.url)):
            with client.stream("GET", f"{base}/gzip", headers={"accept-encoding": "gzip"}) as response:
                assert response.status_code == 200
                assert response.headers["content-encoding"] == "gzip"
                assert response.headers["content-type"] == "application/json"
                raw[name] = b"".join(response.iter_raw())
    assert hashlib.sha256(raw["proxied"]).hexdigest() == hashlib.sha256(raw["direct"]).hexdigest()
    assert json.loads(gzip.decompress(raw["proxied"])) == RawUpstream.GZIP_DOCUMENT
    assert since.errors() == {}


# ---- G6: nothing leaks after many timeouts -------------------------------------------------


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settled_fd_count() -> int:
    previous = -1
    for _ in range(100):
        current = _fd_count()
        if current == previous:
            return current
        previous = current
        time.sleep(0.05)
    return previous


def test_g6_many_timeouts_leak_no_connection_or_fd() -> None:
    # The sidecar, the upstream and the clients all live in this process: every socket any of
    # them leaked would show in /proc/self/fd. Probes are slowed down so they do not blur it.
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, response_timeout_s=0.1, probe_interval_s=60.0) as sidecar,
    ):
        warm_up, _ = timed_request("GET", f"{sidecar.url}/hang")
        assert warm_up.status_code == 504
        assert wait_until(lambda: upstream.open_connections == 0)
        baseline = _settled_fd_count()
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda _: timed_request("GET", f"{sidecar.url}/hang")[0], range(40)))
        assert [r.status_code for r in results] == [504] * 40
        assert sidecar.proxy_errors() == {"upstream_response_timeout": 41}
        assert wait_until(lambda: upstream.open_connections == 0), "upstream connections left open"
        assert wait_until(lambda: _fd_count() <= baseline), f"fds: {_fd_count()} > baseline {baseline}"
        assert pool_state(sidecar) == (0, 0)
        assert sidecar.call(lambda: sidecar.sidecar.proxy.inflight) == 0
        assert upstream.peer_closed == 41
