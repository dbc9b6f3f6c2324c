"""Client deadlines after the sidecar answers before a request's body is all in (B14, A1, A11).

The proxy may answer a request while its body is still arriving: 502 `upstream_connect_failure`
with the model down, 503 `overloaded` over `max_inflight`. These answers keep the connection
alive (the rest of the body is read and dropped as it comes), so the client deadlines must still
hold there: a client that stops sending the body, or trickles it, is closed at `body_timeout_s`
from the answer (without a second answer), and one that finishes it is between requests, under
`keepalive_timeout_s`. Nothing a
client does may keep a connection open indefinitely.

Each test writes on a raw socket to a real sidecar on 127.0.0.1 with 300 ms client timeouts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.polling import wait_until
from tests.support.raw_client import RawClient, RawResponse, exchange
from tests.support.raw_upstream import RawUpstream, unused_port
from tests.support.sidecar import RunningSidecar, running_sidecar

BODY_TIMEOUT_S = 0.3
KEEPALIVE_TIMEOUT_S = 0.3
TIMEOUTS: dict[str, Any] = {
    "header_timeout_s": 0.3,
    "body_timeout_s": BODY_TIMEOUT_S,
    "keepalive_timeout_s": KEEPALIVE_TIMEOUT_S,
}
# A busy (shared, two-core) machine may be late by a sweep tick and a scheduling delay or two.
SLACK_S = 1.5
# How long a test waits for a close before it calls the connection left open.
OPEN_AFTER_S = 3.0

DECLARED = 1000
FIRST = b"0123456789"  # the part of the body sent before the answer
HEAD = b"POST /x HTTP/1.1\r\nHost: model\r\nContent-Length: %d\r\n\r\n" % DECLARED


@pytest.fixture(scope="module")
def down() -> Iterator[RunningSidecar]:
    """A sidecar in front of a port nobody listens on (every request: 502 at once)."""
    with running_sidecar(f"http://127.0.0.1:{unused_port()}", connect_timeout_s=5.0, **TIMEOUTS) as sidecar:
        yield sidecar


def _idle(sidecar: RunningSidecar) -> RunningSidecar:
    assert wait_until(lambda: sidecar.sidecar.proxy.inflight == 0, timeout_s=3.0), "a request is in flight"
    return sidecar


def _errors_since(sidecar: RunningSidecar, before: dict[str, int]) -> dict[str, int]:
    after = sidecar.proxy_errors()
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def _whole_request_answer(sidecar: RunningSidecar) -> RawResponse:
    """What the same request gets with its whole body sent at once: the early answer must match."""
    answer = exchange(sidecar.port, HEAD + b"x" * DECLARED, timeout_s=5.0)
    return answer.response


def _partial_then_silent(port: int, status: int, code: str) -> tuple[RawResponse, float, RawClient]:
    """Headers and 10 of 1000 body bytes, then nothing: the early answer (one complete response,
    on a connection still open when it arrives), when the last byte went out, and the client."""
    client = RawClient(port)
    sent = time.monotonic()  # before the sidecar can have seen the bytes
    client.send(HEAD + FIRST)
    answer = client.read(responses=1, timeout_s=5.0)
    response = answer.response
    assert (response.status, response.error_code, response.complete) == (status, code, True), answer.summary()
    return response, sent, client


def _assert_closed_within(client: RawClient, since: float, bound_s: float, what: str) -> None:
    closed = client.wait_closed(OPEN_AFTER_S)
    assert closed, f"{what}: the connection was still open {OPEN_AFTER_S} s after the client went silent"
    assert client.closed_at is not None
    waited = client.closed_at - since
    assert waited <= bound_s + SLACK_S, f"{what}: closed only after {waited:.2f} s (bound {bound_s} s)"


def _same_answer(early: RawResponse, whole: RawResponse) -> None:
    assert (early.status, early.error_code, early.body) == (whole.status, whole.error_code, whole.body)
    # Kept alive, as today: the connection is closed by the deadline, not by the answer.
    assert early.header("connection") is None


def test_an_early_502_with_the_body_unread_is_closed_at_the_body_timeout(down: RunningSidecar) -> None:
    """The model is down: the client gets its 502 while it still owes 990 body bytes, then goes
    silent. The connection is closed about `body_timeout_s` after its last byte, with nothing
    more written (no 408 after the 502) and nothing more counted."""
    sidecar = _idle(down)
    whole = _whole_request_answer(sidecar)
    before = sidecar.proxy_errors()
    early, sent, client = _partial_then_silent(sidecar.port, 502, "upstream_connect_failure")
    with client:
        _same_answer(early, whole)
        _assert_closed_within(client, sent, BODY_TIMEOUT_S, "502 with the body unread")
        after = client.exchange()
    assert after.statuses == [502], after.summary()  # one answer, never a second one
    assert after.unparsed == b""
    assert _errors_since(sidecar, before) == {"upstream_connect_failure": 1}


def test_a_body_trickled_after_an_early_answer_is_closed_at_the_body_timeout(down: RunningSidecar) -> None:
    """After the 502 the client keeps sending its body a byte at a time, each within the body
    deadline of the last, never finishing it: the answered request's rest of body has one
    deadline, `body_timeout_s` from the answer, which its bytes do not extend."""
    sidecar = _idle(down)
    before = sidecar.proxy_errors()
    _early, sent, client = _partial_then_silent(sidecar.port, 502, "upstream_connect_failure")
    with client:
        trickled = 0
        stop = time.monotonic() + OPEN_AFTER_S
        while time.monotonic() < stop and client.send(b"y"):
            trickled += 1
            if client.wait_closed(BODY_TIMEOUT_S / 3):
                break
        # Never the whole body: it would end the body phase and leave a keep-alive connection.
        assert len(FIRST) + trickled < DECLARED
        _assert_closed_within(client, sent, BODY_TIMEOUT_S, "a body trickled after the 502")
        after = client.exchange()
    assert trickled >= 2  # it did trickle: more than one byte within the body deadline
    assert after.statuses == [502], after.summary()
    assert after.unparsed == b""
    assert _errors_since(sidecar, before) == {"upstream_connect_failure": 1}


def test_a_body_finished_after_an_early_answer_leaves_a_keepalive_connection(down: RunningSidecar) -> None:
    """The client sends the rest of its body after the 502 and then nothing: the body is dropped
    (never taken for a request), and the idle connection is closed at `keepalive_timeout_s`."""
    sidecar = _idle(down)
    before = sidecar.proxy_errors()
    _early, _sent, client = _partial_then_silent(sidecar.port, 502, "upstream_connect_failure")
    with client:
        assert client.send(b"y" * (DECLARED - len(FIRST)))
        finished = time.monotonic()
        _assert_closed_within(client, finished, KEEPALIVE_TIMEOUT_S, "idle after the body ended")
        after = client.exchange()
    assert after.statuses == [502], after.summary()
    assert _errors_since(sidecar, before) == {"upstream_connect_failure": 1}


def test_a_connection_answered_early_is_reused_once_its_body_is_in(down: RunningSidecar) -> None:
    """The rest of the body, then a second request on the same connection: it is answered as a
    request of its own (the dropped body never taken for one), and then idles out."""
    sidecar = _idle(down)
    before = sidecar.proxy_errors()
    _early, _sent, client = _partial_then_silent(sidecar.port, 502, "upstream_connect_failure")
    with client:
        assert client.send(b"y" * (DECLARED - len(FIRST)) + b"GET /again HTTP/1.1\r\nHost: model\r\n\r\n")
        answer = client.read(responses=2, timeout_s=5.0)
        assert answer.statuses == [502, 502], answer.summary()
        answered = time.monotonic()
        _assert_closed_within(client, answered, KEEPALIVE_TIMEOUT_S, "idle after the second request")
    assert _errors_since(sidecar, before) == {"upstream_connect_failure": 2}


def test_an_early_503_overloaded_with_the_body_unread_is_closed_at_the_body_timeout() -> None:
    """`max_inflight` 1, taken by a request the model never answers: the next request gets 503
    `overloaded` while it still owes body bytes, goes silent, and is closed at `body_timeout_s`."""
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, max_inflight=1, response_timeout_s=30.0, **TIMEOUTS) as sidecar,
        RawClient(sidecar.port) as holder,
    ):
        holder.send(b"GET /hang HTTP/1.1\r\nHost: model\r\n\r\n")
        assert wait_until(lambda: sidecar.sidecar.proxy.inflight == 1, timeout_s=3.0)
        whole = _whole_request_answer(sidecar)
        before = sidecar.proxy_errors()
        early, sent, client = _partial_then_silent(sidecar.port, 503, "overloaded")
        with client:
            _same_answer(early, whole)
            assert early.header("retry-after") == b"1"
            _assert_closed_within(client, sent, BODY_TIMEOUT_S, "503 with the body unread")
            after = client.exchange()
        assert after.statuses == [503], after.summary()
        assert _errors_since(sidecar, before) == {"overloaded": 1}
        assert sidecar.sidecar.proxy.inflight == 1  # the held request is not disturbed


def test_a_bad_chunk_after_an_early_answer_closes_without_a_second_answer(down: RunningSidecar) -> None:
    """The body of a request already answered turns out malformed (a chunk size that is not
    one): that request has its 502; the connection is closed with nothing more written (a 400
    now would be read as the answer to the client's next request)."""
    sidecar = _idle(down)
    before = sidecar.proxy_errors()
    client = RawClient(sidecar.port)
    with client:
        client.send(b"POST /x HTTP/1.1\r\nHost: model\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        answer = client.read(responses=1, timeout_s=5.0)
        assert (answer.response.status, answer.response.error_code) == (502, "upstream_connect_failure")
        assert client.send(b"zz\r\nbad\r\n")
        assert client.wait_closed(OPEN_AFTER_S), "the connection was left open"
        after = client.exchange()
    assert after.statuses == [502], after.summary()
    assert after.unparsed == b""
    assert _errors_since(sidecar, before) == {"upstream_connect_failure": 1}  # the 502 alone
