"""What the sidecar's log tells an operator (issue 10, item 14): upstream failures as one line
per error code per interval with the count (never a line per request), a warning at start when
the upstream's host name does not resolve, and the drain at INFO in words that do not read as a
failure. (`--port` equal to `--admin-port` is a start-up error: see test_cli.)"""

from __future__ import annotations

import logging
import re
import socket
from typing import Any

import httpx
import pytest

from modeltap.sidecar import runner
from tests.support.polling import wait_until
from tests.support.raw_client import exchange
from tests.support.raw_upstream import RawUpstream, unused_port
from tests.support.sidecar import running_sidecar

pytestmark = pytest.mark.timeout(60)
SIDECAR_LOGGER = "modeltap.sidecar"
INTERVAL_S = 2.0  # well above the time a few refused requests take, even on a busy machine


def sidecar_lines(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SIDECAR_LOGGER and r.levelno >= level]


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """(count, code) of each upstream-failure line logged so far, at WARNING."""
    found = []
    for message in sidecar_lines(caplog, logging.WARNING):
        match = re.search(r": (\d+) requests? to \S+ failed with (\w+) within", message)
        if match:
            found.append((int(match.group(1)), match.group(2)))
    return found


def test_upstream_failures_are_one_line_per_code_per_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=SIDECAR_LOGGER)
    monkeypatch.setattr(runner, "FAILURE_LOG_INTERVAL_S", INTERVAL_S)
    upstream = f"http://127.0.0.1:{unused_port()}"
    with running_sidecar(upstream, max_header_bytes=1024) as sidecar, httpx.Client(timeout=10.0) as client:
        for _ in range(5):
            assert client.post(f"{sidecar.url}/predict", content=b"{}").status_code == 502
        # A client's own mistake is counted, not logged.
        big = exchange(sidecar.port, b"GET / HTTP/1.1\r\nHost: m\r\nX-Big: " + b"b" * 2048 + b"\r\n\r\n")
        assert big.response.status == 431
        assert failure_lines(caplog) == []  # nothing per request
        assert wait_until(lambda: bool(failure_lines(caplog)), timeout_s=10.0)
        assert failure_lines(caplog) == [(5, "upstream_connect_failure")]
        (line,) = [m for m in sidecar_lines(caplog, logging.WARNING) if "upstream_connect_failure" in m]
        assert line == (
            f"modeltap sidecar: 5 requests to {upstream} failed with upstream_connect_failure "
            f"within {INTERVAL_S:g} s: the model refused the connection or could not be reached"
        )
        for _ in range(3):
            assert client.get(f"{sidecar.url}/again").status_code == 502
        assert wait_until(lambda: len(failure_lines(caplog)) == 2, timeout_s=10.0)
        assert failure_lines(caplog) == [(5, "upstream_connect_failure"), (3, "upstream_connect_failure")]
        assert sidecar.proxy_errors() == {"upstream_connect_failure": 8, "request_headers_too_large": 1}


def test_failures_still_pending_are_logged_at_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=SIDECAR_LOGGER)
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, response_timeout_s=0.2) as sidecar,
        httpx.Client(timeout=10.0) as client,
    ):
        for _ in range(2):
            assert client.get(f"{sidecar.url}/hang").status_code == 504
        assert client.get(f"{sidecar.url}/reset-before-headers").status_code == 502
    # The 10 s interval had not ended: the lines come with the shutdown, one per code.
    assert sorted(failure_lines(caplog)) == [
        (1, "upstream_reset_before_response_started"),
        (2, "upstream_response_timeout"),
    ]


def test_the_drain_is_logged_at_info_in_words_that_do_not_read_as_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=SIDECAR_LOGGER)
    with RawUpstream() as upstream, running_sidecar(upstream.url, drain_timeout_s=1.5) as sidecar:
        assert httpx.get(f"{sidecar.url}/ok").status_code == 200
    lines = sidecar_lines(caplog)
    assert sidecar_lines(caplog, logging.WARNING) == []
    assert (
        "modeltap sidecar: shutting down gracefully: /readyz now answers 503 draining so load "
        "balancers move away; requests are still served for 0 s, then those in flight get up to "
        "1.5 s to finish"
    ) in lines
    assert lines[-1] == "modeltap sidecar: shutdown complete"
    for line in lines:
        assert not re.search(r"fail|error|abort", line, re.IGNORECASE), line


def test_an_upstream_host_that_does_not_resolve_is_a_warning_at_start(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resolver is told not to know `localhost` for the start-up check only (a real unknown
    name would send a DNS query off this machine); the proxy path still resolves it."""
    caplog.set_level(logging.INFO, logger=SIDECAR_LOGGER)
    real_getaddrinfo = socket.getaddrinfo

    def resolve_warnings() -> list[str]:
        return [m for m in sidecar_lines(caplog, logging.WARNING) if "does not resolve" in m]

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "localhost":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    with RawUpstream() as upstream:
        with running_sidecar(f"http://localhost:{upstream.port}") as sidecar:
            check = sidecar.sidecar.resolve_check
            assert check is not None
            check.join(10)
            assert resolve_warnings() == []  # it does resolve
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        with running_sidecar(f"http://localhost:{upstream.port}") as sidecar:
            check = sidecar.sidecar.resolve_check
            assert check is not None
            check.join(10)
            warnings = resolve_warnings()
        with running_sidecar(upstream.url) as sidecar:
            assert sidecar.sidecar.resolve_check is None  # an address: nothing to look up
    assert len(warnings) == 1, warnings
    assert "'localhost' does not resolve" in warnings[0]
    assert "502 upstream_connect_failure" in warnings[0]
