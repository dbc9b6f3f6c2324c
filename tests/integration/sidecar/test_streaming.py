"""Bodies through a real sidecar: streamed promptly (A12), in bounded memory (A14), byte for byte.

A12: an upstream stream of 100 chunks 20 ms apart reaches the client chunk by chunk as it is
produced (each chunk carries the upstream's send time; the sidecar, the upstream and the client
share this process's monotonic clock), and capture stops at its cap while the stream goes on.
A14: a 256 MiB body (1 GiB under `slow`) goes through while this process's RSS stays within
baseline + 64 MiB. Byte identity: the sha256 of response bodies (Content-Length and chunked) and
of echoed request bodies (Content-Length and chunked uploads) is the same direct and through the
sidecar, for sizes around the 64 KiB read size and up to 40 MiB.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from modeltap.config import ModelTapConfig
from modeltap.records import ExchangeRecord
from tests.support.polling import wait_until
from tests.support.raw_upstream import RawUpstream, body_blocks, body_bytes, body_sha256
from tests.support.sidecar import RunningSidecar, running_sidecar

KIB = 1024
MIB = 1024 * 1024
SIZES = [0, 1, 64 * KIB - 1, 64 * KIB, 64 * KIB + 1, 1 * MIB, 16 * MIB, 40 * MIB]
SIZE_IDS = ["0B", "1B", "64KiB-1", "64KiB", "64KiB+1", "1MiB", "16MiB", "40MiB"]
RSS_ALLOWANCE = 64 * MIB
_TLS = ssl.create_default_context()  # built once: loading the CA bundle per client costs ~60 ms


def new_client() -> httpx.Client:
    return httpx.Client(timeout=60.0, verify=_TLS)


@functools.cache
def expected_sha256(size: int) -> str:
    return body_sha256(size)


# ---- A12: streaming ------------------------------------------------------------------------


def test_a12_stream_chunks_are_forwarded_as_the_upstream_sends_them(monkeypatch: pytest.MonkeyPatch) -> None:
    chunks, delay_s, size, cap = 100, 0.02, 32, 1024
    monitoring = ModelTapConfig(monitor="inline", views_prefix=None, max_body_bytes=cap)
    records: list[ExchangeRecord] = []
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, monitoring=monitoring, idle_timeout_s=2.0, records=records) as sidecar,
        new_client() as client,
    ):
        arrivals: list[tuple[int, float, float]] = []  # (index, sent, arrived)
        pending = b""
        target = f"{sidecar.url}/stream?chunks={chunks}&delay={delay_s}&size={size}"
        with client.stream("GET", target) as response:
            assert response.status_code == 200
            assert response.headers["transfer-encoding"] == "chunked"
            for piece in response.iter_raw():
                arrived = time.monotonic()
                pending += piece
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    index, sent = line.rstrip(b".").split()
                    arrivals.append((int(index), float(sent), arrived))
        assert pending == b""
        assert [index for index, _, _ in arrivals] == list(range(chunks))
        # Each chunk arrives soon after it was sent (a generous bound), so the arrivals are
        # spread out like the sends, not bunched at the end.
        lags = [arrived - sent for _, sent, arrived in arrivals]
        assert max(lags) < 0.5, f"slowest chunk took {max(lags):.3f} s"
        sent_spread = arrivals[-1][1] - arrivals[0][1]
        arrival_spread = arrivals[-1][2] - arrivals[0][2]
        assert sent_spread >= (chunks - 1) * delay_s * 0.9
        assert arrival_spread >= 0.5 * sent_spread
        assert sidecar.proxy_errors() == {}

        assert wait_until(lambda: len(records) == 1)
        record = records[0]
        assert record.outcome == "complete"
        assert record.response_size == chunks * size  # the stream went on past the cap...
        assert sum(len(part) for part in record.response_parts) == cap  # ...capture stopped at it
        assert record.first_body is not None
        assert record.ended is not None
        # Time to the first byte is the first chunk's, not the whole stream's.
        assert record.first_body - record.started < 0.5 * (record.ended - record.started)


# ---- A14: a huge body in bounded memory ----------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples this process's resident set every 5 ms while in its `with` block."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            if self._stop.wait(0.005):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.peak = max(self.peak, rss_bytes())


def stream_digest(client: httpx.Client, url: str) -> tuple[int, str, httpx.Headers]:
    """(status, sha256 of the raw body, headers), hashing as it arrives (nothing kept)."""
    digest = hashlib.sha256()
    with client.stream("GET", url) as response:
        for piece in response.iter_raw(256 * KIB):
            digest.update(piece)
        return response.status_code, digest.hexdigest(), response.headers


def check_bounded_stream(size: int, chunked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = expected_sha256(size)
    records: list[ExchangeRecord] = []
    with (
        RawUpstream() as upstream,
        running_sidecar(upstream.url, records=records) as sidecar,
        new_client() as client,
    ):
        cap = sidecar.sidecar.tap.config.max_body_bytes
        # Warm up the same path (threads, buffers, the tap's worker), then take the baseline.
        status, digest, _ = stream_digest(
            client, f"{sidecar.url}/huge?size={16 * MIB}&chunked={int(chunked)}"
        )
        assert (status, digest) == (200, expected_sha256(16 * MIB))
        gc.collect()
        baseline = rss_bytes()
        with PeakRss() as rss:
            status, digest, headers = stream_digest(
                client, f"{sidecar.url}/huge?size={size}&chunked={int(chunked)}"
            )
        assert status == 200
        assert digest == expected
        if not chunked:
            assert headers["content-length"] == str(size)
        growth_mib = (rss.peak - baseline) / MIB
        assert rss.peak <= baseline + RSS_ALLOWANCE, f"RSS grew by {growth_mib:.1f} MiB"
        assert sidecar.proxy_errors() == {}
        assert wait_until(lambda: len(records) == 2)
        record = records[1]
        assert record.outcome == "complete"
        assert record.response_size == size
        assert sum(len(part) for part in record.response_parts) == cap  # truncated at the cap


def test_a14_256_mib_body_streams_through_in_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    check_bounded_stream(256 * MIB, chunked=False, monkeypatch=monkeypatch)


@pytest.mark.slow
def test_a14_1_gib_chunked_body_streams_through_in_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    check_bounded_stream(1024 * MIB, chunked=True, monkeypatch=monkeypatch)


# ---- byte identity -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[RawUpstream, RunningSidecar]]:
    with RawUpstream() as upstream, running_sidecar(upstream.url) as sidecar:
        yield upstream, sidecar


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_response_body_is_byte_identical(
    size: int, chunked: bool, pair: tuple[RawUpstream, RunningSidecar]
) -> None:
    upstream, sidecar = pair
    errors_before = sidecar.proxy_errors()
    with new_client() as client:
        results = {
            base: stream_digest(client, f"{base}/huge?size={size}&chunked={int(chunked)}")
            for base in (upstream.url, sidecar.url)
        }
    direct_status, direct_digest, _ = results[upstream.url]
    status, digest, headers = results[sidecar.url]
    assert status == direct_status == 200
    assert digest == direct_digest == expected_sha256(size)
    # The framing is kept: a length stays a length, chunks stay chunks.
    if chunked:
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
    else:
        assert headers["content-length"] == str(size)
        assert "transfer-encoding" not in headers
    assert sidecar.proxy_errors() == errors_before


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_request_body_is_byte_identical(
    size: int, chunked: bool, pair: tuple[RawUpstream, RunningSidecar]
) -> None:
    upstream, sidecar = pair
    errors_before = sidecar.proxy_errors()
    body = body_bytes(size)
    expected = expected_sha256(size)
    with new_client() as client:
        for base in (upstream.url, sidecar.url):
            # An iterator makes httpx send the body chunked, in 64 KiB pieces.
            content = iter(list(body_blocks(size))) if chunked else body
            response = client.post(f"{base}/echo-body", content=content)
            assert response.status_code == 200
            assert hashlib.sha256(response.content).hexdigest() == expected, base
    assert sidecar.proxy_errors() == errors_before
