"""Upstream failures in the operator's log: one line per error code per interval, with the count.

Every failure is counted in `modeltap.proxy.errors` already; the log is where an operator first
looks when the model misbehaves, so it says so without flooding: a thousand refused connections
a second are one line every `interval_s`, never one per request. Client-side refusals (limits,
malformed requests, clients that leave) are the clients' doing and are only counted.
"""

from __future__ import annotations

import asyncio
import logging

_log = logging.getLogger("modeltap.sidecar")

# The codes that mean the model (or the way to it) failed, and what each says to an operator.
UPSTREAM_FAILURES: dict[str, str] = {
    "upstream_connect_failure": "the model refused the connection or could not be reached",
    "upstream_connect_timeout": "no connection to the model within connect_timeout_s",
    "upstream_response_timeout": "the model's response headers did not come within response_timeout_s",
    "upstream_idle_timeout": "the model sent nothing for idle_timeout_s in the middle of a response",
    "upstream_reset_before_response_started": "the model closed or reset the connection without answering",
    "upstream_reset_after_response_started": "the model closed the connection in the middle of a response",
    "upstream_protocol_error": "the model's response was not valid HTTP/1.1",
}


class FailureLog:
    """Counts upstream failures on the event loop and logs them once per `interval_s`.

    The first failure of a quiet period opens an interval; when it ends, each code seen in it is
    one WARNING line with its count, and the next failure opens a new interval. `flush()` logs
    what is pending at once (at shutdown).
    """

    def __init__(self, upstream: str, interval_s: float = 10.0) -> None:
        self._upstream = upstream
        self._interval_s = interval_s
        self._counts: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def note(self, code: str) -> None:
        """Count one failure (event-loop thread); codes that are not upstream failures are ignored."""
        if code not in UPSTREAM_FAILURES:
            return
        self._counts[code] = self._counts.get(code, 0) + 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self.flush)

    def flush(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        counts, self._counts = self._counts, {}
        for code, count in sorted(counts.items()):
            _log.warning(
                "modeltap sidecar: %d %s to %s failed with %s within %g s: %s",
                count,
                "request" if count == 1 else "requests",
                self._upstream,
                code,
                self._interval_s,
                UPSTREAM_FAILURES[code],
            )
