"""Notifications out: JSON to webhooks, each receiver URL from a thread of its own.

The monitor's loop only enqueues: each URL has a bounded queue (when its receiver is slow or
down, its oldest notifications are dropped and counted) and a thread that posts them, three
attempts with backoff (1 s, then 2 s), and counts what was sent and what failed. A thread per URL
because one for all made a receiver that hangs hold every other one 18 s per notification.
Whatever a receiver answers (garbage, a redirect, nothing) is a failed attempt, never the end of
its thread, and a redirect is not followed: urllib would re-send the POST as a GET without its
body and count the notification as delivered. Nothing here ever touches the data path.

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
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from email.message import Message
from typing import IO, Any
from urllib.parse import urljoin

from modeltap.alerts.runbooks import DEFAULT_RUNBOOKS, Runbooks
from modeltap.alerts.state import Alert, Notification
from modeltap.config import receiver_shown, receiver_url_problem
from modeltap.redaction import redact_url

_log = logging.getLogger("modeltap.alerts")
LEVEL_NAMES = ("OK", "INFO", "WARNING", "CRITICAL", "EMERGENCY")
QUEUE_MAX = 256  # per receiver URL
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


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is refused, so that it fails as the HTTPError it is (see the module's doc)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def _described(exc: BaseException) -> str:
    """A failed attempt as the log says it, never the exception's message verbatim: http.client's
    InvalidURL quotes the URL's path, which for Slack is the credential."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, OSError):
        exc = exc.reason
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


def _redirect_target(url: str, exc: urllib.error.HTTPError) -> str:
    location = exc.headers.get("location") if exc.headers is not None else None
    if not location:
        return "nowhere"
    try:
        return redact_url(urljoin(url, location))
    except ValueError:  # a Location urllib cannot read
        return "an unreadable URL"


class _Channel:
    """One receiver URL: its queue, its thread, its counts."""

    def __init__(self, url: str, sender: WebhookSender) -> None:
        self.url = url
        self.shown = redact_url(url)
        self._sender = sender  # its timeout, backoff and `on_result`, read when used
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: collections.deque[tuple[bytes, str | None]] = collections.deque()
        self._wake = threading.Condition()
        self._deadline: float | None = None  # set by `finish_by`: post until then, then stop
        self._thread: threading.Thread | None = None
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    def offer(self, body: bytes, tag: str | None) -> None:
        with self._wake:
            if self._left() <= 0:  # closed: no thread will post it
                self.dropped += 1
                return
            if len(self._queue) >= QUEUE_MAX:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((body, tag))
            self._wake.notify()
            if self._thread is None or not self._thread.is_alive():
                # The first notification starts the thread (and one that ended is replaced).
                self._thread = threading.Thread(target=self._run, name="modeltap-alerts", daemon=True)
                self._thread.start()

    def _left(self) -> float:
        """Seconds left before the close's deadline (inf while not closing)."""
        return math.inf if self._deadline is None else self._deadline - time.monotonic()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            body, tag = item
            try:
                ok = self._post(body)
            except Exception as exc:  # not expected; a thread that ended would queue forever
                _log.warning("modeltap: alert receiver %s: %s", self.shown, _described(exc))
                ok = False
            self.result(tag, ok)

    def _next(self) -> tuple[bytes, str | None] | None:
        with self._wake:
            while not self._queue and self._deadline is None:
                self._wake.wait()
            if not self._queue or self._left() <= 0:
                return None  # what is left is counted by `join`
            return self._queue.popleft()

    def result(self, tag: str | None, ok: bool) -> None:
        """Count one notification's outcome and tell `on_result` (a drill's callback: what it
        raises is logged, and the thread goes on)."""
        with self._wake:  # the monitor's thread counts a document it could not encode
            if ok:
                self.sent += 1
            else:
                self.failed += 1
        callback = self._sender.on_result
        if callback is None:
            return
        try:
            callback(self.url, tag, ok)
        except Exception:
            _log.debug("modeltap: the alert result callback raised", exc_info=True)

    def _post(self, body: bytes) -> bool:
        delay = self._sender.backoff_s
        attempts = 0
        while attempts < ATTEMPTS:
            timeout = min(self._sender.timeout_s, self._left())
            if timeout <= 0:
                break
            attempts += 1
            done = self._attempt(body, timeout, attempts)
            if done is not None:
                return done
            if attempts == ATTEMPTS or not self._pause(delay):
                break
            delay *= 2
        _log.warning(
            "modeltap: alert receiver %s failed %d time(s); notification dropped", self.shown, attempts
        )
        return False

    def _attempt(self, body: bytes, timeout: float, attempt: int) -> bool | None:
        """One POST: True delivered, False refused for good (a redirect), None worth a retry."""
        request = urllib.request.Request(  # noqa: S310 - http(s) only: checked in WebhookSender
            self.url, data=body, headers={"content-type": "application/json"}, method="POST"
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                if 200 <= response.status < 300:
                    return True
                detail = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            exc.close()
            if 300 <= exc.code < 400:
                _log.warning(
                    "modeltap: alert receiver %s answered %d, a redirect to %s: not followed (the "
                    "notification would arrive as a GET without it); configure the URL it redirects to",
                    self.shown,
                    exc.code,
                    _redirect_target(self.url, exc),
                )
                return False
            detail = f"HTTP {exc.code}"
        except Exception as exc:  # garbage for a status line, a reset: a failed attempt
            detail = _described(exc)
        _log.debug("modeltap: alert receiver %s failed (attempt %d): %s", self.shown, attempt, detail)
        return None

    def _pause(self, delay: float) -> bool:
        """Wait `delay` before a retry; False where the retry would come after the close's
        deadline."""
        end = time.monotonic() + delay
        with self._wake:
            while (left := end - time.monotonic()) > 0:
                if self._deadline is not None and self._deadline < end:
                    return False
                self._wake.wait(left)
        return True

    def finish_by(self, deadline: float) -> None:
        with self._wake:
            self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
            self._wake.notify_all()

    def join(self, deadline: float) -> None:
        """Wait for the thread until `deadline`; what is still queued then is dropped, counted."""
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._wake:
            left = len(self._queue)
            self._queue.clear()
            self.dropped += left
        if left:
            _log.warning(
                "modeltap: %d notification(s) to alert receiver %s not sent before shutdown", left, self.shown
            )


class WebhookSender:
    """Posts notification documents to each of `urls` from a daemon thread per URL. Counters, over
    all URLs: `sent`, `failed` (a URL that refused all attempts), `dropped` (queue overflow, or
    still queued at shutdown)."""

    def __init__(self, urls: tuple[str, ...], timeout_s: float = TIMEOUT_S, backoff_s: float = 1.0) -> None:
        for url in urls:
            problem = receiver_url_problem(url)
            if problem is not None:
                raise ValueError(
                    f"an alert receiver must be an http(s) URL; {receiver_shown(url)} has {problem}"
                )
        self.urls = urls
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        # Told of each post's outcome: (url, the tag given to `offer`, acknowledged); a drill
        # checks with it that every receiver acknowledged its notifications.
        self.on_result: Callable[[str, str | None, bool], None] | None = None
        self._channels = tuple(_Channel(url, self) for url in urls)

    @property
    def sent(self) -> int:
        return sum(channel.sent for channel in self._channels)

    @property
    def failed(self) -> int:
        return sum(channel.failed for channel in self._channels)

    @property
    def dropped(self) -> int:
        return sum(channel.dropped for channel in self._channels)

    def offer(self, document: Any, tag: str | None = None) -> None:
        """Queue one notification for every URL (never blocks, never raises; the oldest is
        dropped when a URL's queue is full)."""
        if not self._channels:
            return
        try:
            body = json.dumps(document).encode()
        except Exception as exc:  # a document that cannot be written: failed everywhere, counted
            _log.warning("modeltap: an alert notification could not be encoded: %s", type(exc).__name__)
            for channel in self._channels:
                channel.result(tag, False)
            return
        for channel in self._channels:
            channel.offer(body, tag)

    def finish_by(self, deadline: float) -> None:
        """Post what is queued until `deadline` (monotonic), then stop; returns at once."""
        for channel in self._channels:
            channel.finish_by(deadline)

    def join(self, deadline: float) -> None:
        """Wait for `finish_by` until `deadline`; what is left then is dropped, counted."""
        for channel in self._channels:
            channel.join(deadline)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued within `timeout_s`, then stop."""
        close_all((self,), time.monotonic() + timeout_s)


def close_all(senders: Iterable[WebhookSender], deadline: float) -> None:
    """Close `senders` together against one deadline: closed in turn, each could take all of it."""
    senders = tuple(senders)
    for sender in senders:
        sender.finish_by(deadline)
    for sender in senders:
        sender.join(deadline)
