"""The sidecar's admin port: health, readiness, and the views. Never proxied, never captured.

Served by the sidecar's monitor process (or, inline, by the sidecar itself). `/healthz` answers
while the process runs. `/readyz` answers 200 only while the upstream accepts connections
(probed in the background, so a probe is never slower than a dictionary lookup) and the sidecar
is not draining. `/`, `/status` and `/metrics` are the page, the JSON and the Prometheus text of
the latest snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from modeltap._types import Receive, Scope, Send
from modeltap.config import ModelTapConfig
from modeltap.export.local_views import FeedbackEndpoint, LocalViews, ReadEndpoint, WriteEndpoint
from modeltap.snapshot import Snapshot

_log = logging.getLogger("modeltap.sidecar")
# Connect failures the proxy reports between probes count as failed probes, up to this many.
MAX_NOTED_FAILURES = 16


class Readiness:
    """Upstream reachability from periodic TCP connects, plus the draining flag. After a rollback
    (`use_fallback`) the fallback upstream is the one probed: it is where requests go."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        interval_s: float,
        failures_to_fail: int,
        timeout_s: float,
        fallback: tuple[str, int] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._fallback = fallback
        self.use_fallback = False
        self._interval_s = interval_s
        self._failures_to_fail = failures_to_fail
        self._timeout_s = timeout_s
        self.upstream_ok = False
        self.consecutive_failures = 0
        self.draining = False
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._probed: asyncio.Event | None = None

    @property
    def ready(self) -> bool:
        return self.upstream_ok and not self.draining

    def note_connect_failure(self) -> None:
        """The proxy could not connect: counts like a failed probe."""
        self._record(False)

    def _record(self, ok: bool) -> None:
        if ok:
            self.consecutive_failures = 0
            self.upstream_ok = True
        else:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self._failures_to_fail or not self.upstream_ok:
                self.upstream_ok = False

    async def probe_once(self) -> bool:
        host, port = self._host, self._port
        if self.use_fallback and self._fallback is not None:
            host, port = self._fallback
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self._timeout_s)
        except (OSError, asyncio.TimeoutError):
            self._record(False)
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self._record(True)
        return True

    def start(self) -> None:
        self._probed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def first_probe(self) -> None:
        """Until the first probe has an answer (at most its timeout): a monitor restarted while
        the model is up must not answer the probes queued meanwhile 503 before it has looked."""
        if self._probed is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._probed.wait(), self._timeout_s + 0.5)

    async def _run(self) -> None:
        # Until stopped, not only until cancelled: before Python 3.12, `asyncio.wait_for` could
        # swallow a cancellation that arrived as its connect completed, and the loop then probed
        # on, holding up the sidecar's exit.
        while not self._stopped:
            try:
                await self.probe_once()
            except Exception:
                _log.exception("modeltap sidecar: readiness probe failed")
            if self._probed is not None:
                self._probed.set()
            if not self._stopped:  # stopped meanwhile: no sleep before the loop ends
                # Probe faster while not ready, so a starting upstream is noticed within ~100 ms.
                await asyncio.sleep(self._interval_s if self.upstream_ok else min(self._interval_s, 0.1))

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            self._task = None


def admin_views(
    snapshot: Callable[[], Snapshot],
    config: ModelTapConfig,
    feedback: FeedbackEndpoint | None = None,
    writes: dict[str, WriteEndpoint] | None = None,
    reads: dict[str, ReadEndpoint] | None = None,
) -> LocalViews:
    """The views of the admin port: with neither a token nor an allow-list, whoever can reach
    where it is bound (the operator chose that); with either, loopback clients, the allow-listed
    networks and requests carrying the token. The write endpoints (`POST /feedback`, `/outcome`,
    `/drill`, `/rollback`, `/rollback/cancel`) answer loopback clients, or any client with the
    token."""
    open_to_all = config.views_token is None and not config.views_allow
    return LocalViews(
        "",
        snapshot,
        model_name=config.model_name,
        token=config.views_token,
        allow=config.views_allow,
        open_to_all=open_to_all,
        feedback=feedback,
        writes=writes,
        reads=reads,
    )


class AdminApp:
    """ASGI app for the admin port."""

    def __init__(self, views: LocalViews, readiness: Readiness) -> None:
        self._views = views
        self._readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # its server runs without lifespan
            return
        path = scope["path"]
        if path == "/healthz":
            await _text(send, 200, b"ok\n")
        elif path == "/readyz":
            readiness = self._readiness
            if readiness.ready:
                await _text(send, 200, b"ready\n")
            elif readiness.draining:
                await _text(send, 503, b"draining\n")
            else:
                await _text(send, 503, b"upstream not reachable\n")
        else:
            await self._views(scope, receive, send)


async def _text(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
