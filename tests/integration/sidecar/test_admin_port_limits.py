"""The admin port takes client input as the proxy port does: its peer is never rewritten from
forwarding headers (so `views_allow` cannot be bypassed with `X-Forwarded-For`), and the proxy
port's client limits hold there too (head size, header timeout, keep-alive idle timeout), and it
keeps at most `ADMIN_MAX_CONNECTIONS` connections open. Real
`modeltap sidecar` processes on 127.0.0.1: the admin port served by the monitor process (the
default) and by the sidecar itself (`MODELTAP_MONITOR=inline`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modeltap.guarded.protocol import ADMIN_MAX_CONNECTIONS
from tests.support.raw_client import RawClient, RawExchange, exchange
from tests.support.servers import serve
from tests.support.sidecar_process import SidecarProcess, sidecar_process

pytestmark = pytest.mark.timeout(120)

HEADER_TIMEOUT_S = 1.0
KEEPALIVE_TIMEOUT_S = 1.0
MARGIN_S = 1.5  # deadlines are swept every 100 ms here; the rest is a busy machine
ALLOWED = "10.0.0.0/8"


async def model(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve(model, name="admin-limits-upstream") as url:
        yield url


@pytest.fixture(scope="module", params=["process", "inline"])
def sidecar(
    request: pytest.FixtureRequest, upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """A sidecar whose views allow 10.0.0.0/8, with short header and keep-alive timeouts."""
    timeouts = (HEADER_TIMEOUT_S, KEEPALIVE_TIMEOUT_S)
    yield from _running(request.param, upstream, tmp_path_factory, timeouts, MODELTAP_VIEWS_ALLOW=ALLOWED)


def _running(
    mode: str,
    upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
    timeouts: tuple[float, float],
    **settings: str,
) -> Iterator[SidecarProcess]:
    """A sidecar in `mode` with these (header, keep-alive) timeouts and settings, its monitor
    serving the admin port in process mode."""
    env = {"MODELTAP_MONITOR": mode, **settings}
    run_dir = tempfile.mkdtemp(prefix="mt-")  # short: Unix socket paths are limited
    if mode == "process":
        env["MODELTAP_RUN_DIR"] = run_dir
    args = ("--header-timeout-s", str(timeouts[0]), "--keepalive-timeout-s", str(timeouts[1]))
    tmp_path: Path = tmp_path_factory.mktemp(f"admin-{mode}")
    with sidecar_process(upstream, tmp_path, *args, env=env) as running:
        if mode == "process":
            _wait_for_the_monitor(running)
        yield running
    shutil.rmtree(run_dir, ignore_errors=True)


def _admin_port(sidecar: SidecarProcess) -> int:
    return int(sidecar.admin_url.rsplit(":", 1)[1])


def _get(path: str, *fields: bytes) -> bytes:
    head = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%bConnection: close\r\n\r\n"
    return head % (path.encode(), b"".join(fields))


def _status(answer: RawExchange) -> int | None:
    """The first response's status, or None: no response."""
    return answer.responses[0].status if answer.responses else None


def _wait_for_the_monitor(sidecar: SidecarProcess) -> None:
    """The admin port answers once the monitor process took it over (until then it queues)."""
    answer = exchange(_admin_port(sidecar), _get("/healthz"), timeout_s=30.0)
    assert _status(answer) == 200, sidecar.stderr


# ---- the peer is never rewritten ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/status", "/metrics"])
def test_a_forwarded_request_from_loopback_is_refused_despite_an_allow_listed_address(
    sidecar: SidecarProcess, path: str
) -> None:
    port = _admin_port(sidecar)
    direct = exchange(port, _get(path))
    assert _status(direct) == 200, direct.raw[:300]
    forwarded = exchange(port, _get(path, b"X-Forwarded-For: 10.0.0.5\r\n"))
    assert forwarded.responses, forwarded.raw[:300]
    assert forwarded.responses[0].status == 403, forwarded.raw[:300]
    assert b"forwarding header" in forwarded.responses[0].body


def test_probes_answer_as_before(sidecar: SidecarProcess) -> None:
    port = _admin_port(sidecar)
    health = exchange(port, _get("/healthz"))
    assert _status(health) == 200, health.raw[:300]
    assert health.responses[0].body == b"ok\n"
    ready = exchange(port, _get("/readyz"))
    assert _status(ready) in (200, 503), ready.raw[:300]
    assert ready.responses[0].body in (b"ready\n", b"upstream not reachable\n")
    # Keep-alive clients get several answers on one connection.
    with RawClient(port) as client:
        for _ in range(3):
            client.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = client.read(responses=3)
    assert [r.status for r in answer.responses] == [200, 200, 200], answer.raw[:500]


# ---- the proxy port's client limits ---------------------------------------------------------


def test_an_oversized_head_is_refused_and_the_connection_closed(sidecar: SidecarProcess) -> None:
    """`GET /status` then one 4 MiB header value: refused (431) and closed, not buffered."""
    with RawClient(_admin_port(sidecar), timeout_s=10.0) as client:
        client.send(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        client.send(b"a" * (4 * 1024 * 1024))  # False once the server closed: as good
        answer = client.read(responses=1, timeout_s=5.0)
        closed = answer.closed or client.wait_closed(5.0)
    assert closed, f"the admin port kept the connection open: {answer.raw[:300]!r}"
    if answer.responses:
        assert answer.responses[0].status == 431, answer.raw[:300]


def test_a_stalled_partial_head_is_closed_at_the_header_timeout(sidecar: SidecarProcess) -> None:
    with RawClient(_admin_port(sidecar), timeout_s=10.0) as client:
        started = time.monotonic()
        client.send(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and then nothing
        closed = client.wait_closed(HEADER_TIMEOUT_S + MARGIN_S + 3.0)
        elapsed = time.monotonic() - started
        answer = client.exchange()
    assert closed, f"still open {elapsed:.1f} s after a partial head"
    assert HEADER_TIMEOUT_S - 0.05 <= elapsed <= HEADER_TIMEOUT_S + MARGIN_S, elapsed
    if answer.responses:
        assert answer.responses[0].status == 408, answer.raw[:300]


def test_an_idle_keep_alive_connection_is_closed_at_the_keep_alive_timeout(
    sidecar: SidecarProcess,
) -> None:
    """uvicorn's own keep-alive would be 5 s; the sidecar's setting (1 s here) holds."""
    with RawClient(_admin_port(sidecar), timeout_s=10.0) as client:
        client.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = client.read(responses=1)
        assert _status(answer) == 200, answer.raw[:300]
        answered = time.monotonic()
        closed = client.wait_closed(KEEPALIVE_TIMEOUT_S + MARGIN_S + 5.0)
        elapsed = time.monotonic() - answered
    assert closed, "the idle connection was never closed"
    assert elapsed <= KEEPALIVE_TIMEOUT_S + MARGIN_S, elapsed


# ---- a cap on open connections --------------------------------------------------------------


@pytest.fixture(scope="module", params=["process", "inline"])
def patient_sidecar(
    request: pytest.FixtureRequest, upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """A sidecar whose client deadlines outlast the test: only the cap closes a connection."""
    yield from _running(request.param, upstream, tmp_path_factory, (60.0, 60.0))


def _held_open(port: int) -> RawClient:
    """A keep-alive connection the admin port has served (so it counts as open there)."""
    client = RawClient(port, timeout_s=10.0)
    client.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = client.read(responses=1)
    assert _status(answer) == 200, answer.raw[:300]
    assert not answer.closed, answer.raw[:300]
    return client


def test_connections_over_the_cap_are_answered_503_and_closed(patient_sidecar: SidecarProcess) -> None:
    """`ADMIN_MAX_CONNECTIONS` open connections each within the client limits: the next one is
    answered 503 at once and closed; once one of them leaves, a new one is served again."""
    port = _admin_port(patient_sidecar)
    held = [_held_open(port) for _ in range(ADMIN_MAX_CONNECTIONS)]
    try:
        with RawClient(port, timeout_s=10.0) as over:
            over.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = over.read(timeout_s=10.0)
        assert answer.closed, answer.raw[:300]
        assert _status(answer) == 503, answer.raw[:300]
        assert answer.responses[0].error_code == "overloaded"
        # Those already open are served as before.
        held[0].send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert held[0].read(responses=2).statuses == [200, 200]
        held.pop().close()
        deadline = time.monotonic() + 10.0
        statuses: list[int | None] = []
        while time.monotonic() < deadline:
            statuses.append(_status(exchange(port, _get("/healthz"))))
            if statuses[-1] == 200:
                break
            time.sleep(0.05)
        assert statuses[-1] == 200, statuses  # the server saw the close: room for one again
        assert set(statuses[:-1]) <= {503}, statuses
    finally:
        for client in held:
            client.close()
