"""Random and mutated bytes against a real sidecar (RELIABILITY.md B18).

Each example is written on a fresh raw socket to one sidecar (shared by the module) in front of
a recording echo upstream. Whatever the bytes, the sidecar may only answer with its own client
errors (400/405/408/413/414/431/501 with an `x-modeltap-error` code), pass on the upstream's
normal answer, or close the connection. Never a 500/502/503/504 of its own (a 5xx carrying
`x-modeltap-error` fails, and so does uvicorn's bare 500 for an exception in the proxy), never a
response that is not valid HTTP/1.1 framing, never a crash: a valid request is answered after
every example. A request the sidecar refused is never forwarded: the upstream receives only
requests whose answers the client got, plus at most the one in flight when the connection
ended.

The seed corpus is the B1-B5 payloads of `test_client_input` and valid requests; Hypothesis
mixes them with arbitrary bytes and mutates them (flipped bytes, cut or repeated pieces, CR LF
turned into LF, nasty header lines spliced in). The default run is about a hundred examples; the
`slow` variant runs thousands.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.integration.sidecar.test_client_input import MALFORMED, VALID
from tests.support.echo_upstream import EchoUpstream
from tests.support.raw_client import RawClient, RawExchange, ResponseParseError
from tests.support.sidecar import RunningSidecar, running_sidecar

SIDECAR_CLIENT_ERRORS = frozenset({400, 405, 408, 413, 414, 431, 501})
# After the bytes are written, how long to wait for an answer before half-closing: a complete
# request is forwarded and answered well within it; an incomplete one then ends with the EOF.
ANSWER_WINDOW_S = 0.05

SEEDS: list[bytes] = [
    *(case.data for case in MALFORMED.values()),
    *VALID.values(),
    # Near the module sidecar's limits, so small mutations cross them (413, 414, 431, 405).
    b"POST /v1/models/m:predict HTTP/1.1\r\nHost: model\r\nContent-Length: 2049\r\n"
    b"Expect: 100-continue\r\n\r\n",
    b"GET /" + b"p" * 500 + b" HTTP/1.1\r\nHost: model\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: model\r\n"
    + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(19))
    + b"\r\n",
    b"CONNECT model:443 HTTP/1.1\r\nHost: model:443\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: model\r\n\r\n",
]

NASTY_LINES = [
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b" folded\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    b"Connection: X-Forwarded-For, close\r\n",
    b"Expect: 100-continue\r\n",
    b"Host: 169.254.169.254\r\n",
    b"X-A: \xff\xfe\r\n",
    b"X-\x00: v\r\n",
    b"\r\n",
    b"0\r\n\r\n",
    b"GET / HTTP/1.1\r\n",
]


@dataclass
class Target:
    echo: EchoUpstream
    sidecar: RunningSidecar
    error_records: list[logging.LogRecord]


class _Collect(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self._sink.append(record)


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """One sidecar for the whole module, with small limits so every refusal is reachable within
    4 KiB: 414 above 512 URL bytes, 431 above 1 KiB of fields or 20 fields, 413 above 2 KiB."""
    echo = EchoUpstream()
    records: list[logging.LogRecord] = []
    handler = _Collect(records)
    loggers = [logging.getLogger(name) for name in ("modeltap", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with (
            echo.serving() as upstream,
            running_sidecar(
                upstream,
                header_timeout_s=2.0,
                body_timeout_s=2.0,
                max_url_bytes=512,
                max_header_bytes=1024,
                max_headers=20,
                max_request_body_bytes=2048,
            ) as sidecar,
        ):
            yield Target(echo, sidecar, records)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


# ---- strategies -----------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed with a few mutations applied."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "lf", "line", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "repeat":
            piece = bytes(data[at : at + draw(st.integers(1, 64))])
            data[at:at] = piece * draw(st.integers(1, 40))
        elif kind == "lf":
            data = bytearray(bytes(data).replace(b"\r\n", b"\n", draw(st.integers(1, 3))))
        elif kind == "line":
            line_start = data.find(b"\r\n", at)
            position = line_start + 2 if line_start >= 0 else len(data)
            data[position:position] = draw(st.sampled_from(NASTY_LINES))
        elif kind == "truncate":
            del data[at:]
    return bytes(data[:4096])


# Mutated seeds twice as often as either plain random bytes or the seeds themselves: random
# bytes almost always fail on the first byte, mutations get further into the parser.
FUZZ_INPUT = st.one_of(st.binary(max_size=4096), st.sampled_from(SEEDS), mutated(), mutated())


# ---- one example ----------------------------------------------------------------------------


def _send(target: Target, data: bytes) -> RawExchange:
    with RawClient(target.sidecar.port, timeout_s=5.0) as client:
        client.send(data)
        answer = client.read(timeout_s=ANSWER_WINDOW_S)
        if not answer.closed:
            client.shutdown_write()
            assert client.wait_closed(5.0), "the sidecar kept a half-closed connection open"
        return client.exchange()


def _valid_request_still_served(target: Target) -> None:
    with RawClient(target.sidecar.port) as client:
        client.send(b"GET /alive HTTP/1.1\r\nHost: model\r\n\r\n")
        answer = client.read(responses=1, timeout_s=5.0)
    assert answer.statuses == [200], f"the sidecar stopped serving: {answer.summary()}"
    assert json.loads(answer.responses[0].body)["path"] == "/alive"


def check_input(target: Target, data: bytes) -> None:
    echo = target.echo
    assert target.sidecar.sidecar.proxy.inflight == 0 or _settled(target)
    echo.reset()
    try:
        answer = _send(target, data)
    except ResponseParseError as exc:
        if b"HEAD" in data:
            return  # a HEAD response has no body, which a parser without the request cannot know
        raise AssertionError(f"the sidecar's answer is not valid HTTP/1.1: {exc}") from None
    assert answer.closed
    # `--hypothesis-show-statistics` shows how the inputs ended.
    event(
        "answers: "
        + (", ".join(f"{r.status} {r.error_code or 'upstream'}" for r in answer.responses) or "close")
    )
    upstream_answers = 0
    refused = False
    for response in answer.responses:
        code = response.error_code
        if code is not None:
            assert response.status in SIDECAR_CLIENT_ERRORS, f"sidecar answered {response.status} {code}"
            refused = True
        else:
            # Not the sidecar's: it must be the upstream's echo, never uvicorn's bare 500 (an
            # exception in the proxy) or the upstream server's own 400 (a request forwarded
            # that it could not parse).
            assert response.header("x-echo") == b"1", f"unexpected answer {answer.summary()}"
            upstream_answers += 1
    # Wait for anything still travelling to the upstream, then count what reached it.
    assert _settled(target)
    received = echo.count
    if refused:
        assert received == upstream_answers, f"refused input reached the upstream: {answer.summary()}"
    else:
        assert received <= upstream_answers + 1, f"more upstream requests than answers: {answer.summary()}"
    assert target.error_records == [], [r.getMessage() for r in target.error_records]
    _valid_request_still_served(target)


def _settled(target: Target, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if target.sidecar.sidecar.proxy.inflight == 0:
            return True
        time.sleep(0.005)
    return False


def _with_seed_examples(test: Callable[..., None]) -> Callable[..., None]:
    for seed in SEEDS:
        test = example(data=seed)(test)
    return test


@_with_seed_examples
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=FUZZ_INPUT)
def test_random_bytes_never_make_the_sidecar_fail(target: Target, data: bytes) -> None:
    """B18: about a hundred random or mutated inputs plus every seed, with the invariants of the
    module docstring."""
    check_input(target, data)


@pytest.mark.slow
@pytest.mark.timeout(900)
@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=FUZZ_INPUT)
def test_random_bytes_never_make_the_sidecar_fail_long_run(target: Target, data: bytes) -> None:
    """B18, the long run: thousands of inputs, same invariants."""
    check_input(target, data)
