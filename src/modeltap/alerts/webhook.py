"""Notifications out: JSON to webhooks, from a thread of their own.

The monitor's loop only enqueues (a bounded queue: when receivers are slow or down, the oldest
notifications are dropped and counted); a sender thread posts each notification to every
configured URL, retrying with backoff (1, 2, 4 s; three attempts), and counts what was sent and
what failed. Nothing here ever touches the data path.

The document (also in the README, "Alerts")::

    {"source": "modeltap", "kind": "firing" | "resolved" | "repeat", "severity": "critical",
     "model": "churn", "version": "1", "drill": false, "status_url": "http://…/",
     "window_s": 300.0,
     "alerts": [{"subject": "monthly_charges", "state": "firing", "severity": "critical",
                 "level": "CRITICAL", "score": 0.93, "threshold": 0.2,
                 "since_unix_s": 1796500000.0, "runbook_url": "https://…#modeltapfeaturedrift"}]}
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from modeltap.alerts.runbooks import DEFAULT_RUNBOOKS, Runbooks
from modeltap.alerts.state import Alert, Notification
from modeltap.redaction import redact_url

_log = logging.getLogger("modeltap.alerts")
LEVEL_NAMES = ("OK", "INFO", "WARNING", "CRITICAL", "EMERGENCY")
QUEUE_MAX = 256
ATTEMPTS = 3
TIMEOUT_S = 5.0


def _alert_document(alert: Alert, to_unix: Callable[[float], float], runbooks: Runbooks) -> dict[str, Any]:
    return {
        "subject": alert.key.subject,
        "state": alert.state,
        "severity": alert.severity,
        "level": LEVEL_NAMES[alert.level],
        "score": alert.score,
        "threshold": alert.threshold,
        "since_unix_s": to_unix(alert.since_s),
        "runbook_url": runbooks.url(alert.key.subject),
    }


def notification_document(
    notification: Notification,
    to_unix: Callable[[float], float],
    status_url: str | None = None,
    runbooks: Runbooks = DEFAULT_RUNBOOKS,
    drill: bool = False,
    window_s: float | None = None,
) -> dict[str, Any]:
    return {
        "source": "modeltap",
        "kind": notification.kind,
        "severity": notification.severity,
        "model": notification.model,
        "version": notification.version,
        "drill": drill,
        "status_url": status_url,
        "window_s": window_s,
        "alerts": [_alert_document(a, to_unix, runbooks) for a in notification.alerts],
    }


class WebhookSender:
    """Posts notification documents to `urls` from a daemon thread. Counters: `sent`, `failed`
    (a URL that refused all attempts), `dropped` (queue overflow)."""

    def __init__(self, urls: tuple[str, ...], timeout_s: float = TIMEOUT_S, backoff_s: float = 1.0) -> None:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"an alert webhook must be an http(s) URL, got {redact_url(url)!r}")
        self.urls = urls
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        # Told of each post's outcome: (url, the tag given to `offer`, acknowledged); a drill
        # checks with it that every receiver acknowledged its notifications.
        self.on_result: Callable[[str, str | None, bool], None] | None = None
        self._queue: collections.deque[tuple[Any, str | None]] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def offer(self, document: Any, tag: str | None = None) -> None:
        """Queue one notification (never blocks; the oldest is dropped when full)."""
        if not self.urls:
            return
        with self._wake:
            if len(self._queue) >= QUEUE_MAX:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((document, tag))
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="modeltap-alerts", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if not self._queue:
                    return
                document, tag = self._queue.popleft()
            body = json.dumps(document).encode()
            for url in self.urls:
                ok = self._post(url, body)
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1
                if self.on_result is not None:
                    self.on_result(url, tag, ok)

    def _post(self, url: str, body: bytes) -> bool:
        delay = self.backoff_s
        for attempt in range(ATTEMPTS):
            request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
                url, data=body, headers={"content-type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                    if 200 <= response.status < 300:
                        return True
            except (OSError, urllib.error.HTTPError) as exc:
                _log.debug("alert webhook %s failed (attempt %d): %s", redact_url(url), attempt + 1, exc)
            if attempt + 1 < ATTEMPTS:
                with self._wake:
                    if self._stopping:
                        return False
                    self._wake.wait(delay)
                delay *= 2
        _log.warning(
            "modeltap: alert webhook %s failed %d times; notification dropped", redact_url(url), ATTEMPTS
        )
        return False

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued within `timeout_s`, then stop."""
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline and self._thread is not None:
            time.sleep(0.05)
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
