"""Delivery to receivers that misbehave, over real sockets on 127.0.0.1: garbage for an answer is
a failed attempt and the sender goes on; a redirect is a failure, never a delivery; a receiver
that hangs delays only its own notifications; closing stops at its deadline and counts what was
left; a URL that can never be posted to is refused at start, without its path."""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from modeltap.alerts.webhook import WebhookSender
from tests.support.backends import wait_for
from tests.support.webhook import webhook

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Scripted:
    """A raw HTTP receiver: answers the n-th connection with `answers[n]` (the last one for every
    later connection) and keeps each request's first bytes."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/services/T0/B0/XXSECRETXX"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                self.requests.append(conn.recv(65536))
                conn.sendall(self.answers[min(len(self.requests), len(self.answers)) - 1])


class _Hanging:
    """A receiver that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._hold, daemon=True).start()

    def _hold(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return


@contextlib.contextmanager
def _hanging() -> Iterator[_Hanging]:
    receiver = _Hanging()
    try:
        yield receiver
    finally:
        receiver.sock.close()
        for conn in receiver.held:
            conn.close()


@pytest.fixture
def thread_deaths(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """Exceptions that ended a thread (the sender's must never end so)."""
    died: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    return died


def test_garbage_for_an_answer_is_a_failed_attempt_and_the_sender_goes_on(
    thread_deaths: list[threading.ExceptHookArgs], caplog: pytest.LogCaptureFixture
) -> None:
    receiver = _Scripted([b"GARBAGE\r\n\r\n", OK])  # a proxy or captive portal, once
    sender = WebhookSender((receiver.url,), timeout_s=2.0, backoff_s=0.05)
    with caplog.at_level(logging.DEBUG, logger="modeltap"):
        sender.offer({"n": 1})
        assert wait_for(lambda: sender.sent == 1, 10)
        for n in (2, 3):
            sender.offer({"n": n})
        assert wait_for(lambda: sender.sent == 3, 10)
    sender.close(1.0)
    receiver.sock.close()

    assert (sender.failed, sender.dropped, len(receiver.requests)) == (0, 0, 4)  # one retry
    assert thread_deaths == []
    assert "BadStatusLine" in caplog.text
    assert "XXSECRETXX" not in caplog.text


def test_a_result_callback_that_raises_does_not_stop_the_sender() -> None:
    with webhook() as hook:
        sender = WebhookSender((hook.url,), backoff_s=0.05)

        def broken(url: str, tag: str | None, ok: bool) -> None:
            raise RuntimeError("a bug in the caller")

        sender.on_result = broken
        sender.offer({"n": 1})
        sender.offer({"n": 2})
        assert wait_for(lambda: len(hook.received) == 2, 10)
        sender.close(1.0)
    assert sender.sent == 2


def test_a_document_that_cannot_be_encoded_is_counted_failed_and_the_sender_goes_on(
    thread_deaths: list[threading.ExceptHookArgs],
) -> None:
    with webhook() as hook:
        sender = WebhookSender((hook.url,), backoff_s=0.05)
        sender.offer({"score": object()})  # never raises on the monitor's thread
        sender.offer({"n": 1})
        assert wait_for(lambda: len(hook.received) == 1, 10)
        sender.close(1.0)
    assert (sender.sent, sender.failed) == (1, 1)
    assert thread_deaths == []


class _Target(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TargetHandler)
        self.seen: list[tuple[str, str]] = []


class _TargetHandler(http.server.BaseHTTPRequestHandler):
    server: _Target

    def _any(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.seen.append((self.command, self.path))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status", [301, 302, 303, 308])
def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    target = _Target()
    threading.Thread(target=target.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    moved_to = f"http://127.0.0.1:{target.server_port}/new/XXNEWSECRETXX"
    answer = f"HTTP/1.1 {status} Moved\r\nLocation: {moved_to}\r\nContent-Length: 0\r\n\r\n".encode()
    moved = _Scripted([answer])
    try:
        sender = WebhookSender((moved.url,), backoff_s=0.01)
        results: list[bool] = []
        sender.on_result = lambda url, tag, ok: results.append(ok)
        with caplog.at_level(logging.WARNING, logger="modeltap"):
            sender.offer({"kind": "firing"})
            assert wait_for(lambda: results, 10)
        sender.close(1.0)
    finally:
        target.shutdown()
        target.server_close()
        moved.sock.close()

    assert (results, sender.sent, sender.failed) == ([False], 0, 1)
    assert target.seen == []
    assert len(moved.requests) == 1  # a redirect does not change on a retry
    assert f"redirect to http://127.0.0.1:{target.server_port}/…" in caplog.text
    assert "SECRETXX" not in caplog.text  # neither path, the old or the new


def test_a_hanging_receiver_delays_only_its_own_notifications() -> None:
    with _hanging() as hanging, webhook() as hook:
        # The defaults: three attempts of 5 s, 1 + 2 s apart (18 s per notification).
        sender = WebhookSender((hanging.url, hook.url))
        sender.offer({"n": 1})
        sender.offer({"n": 2})
        assert wait_for(lambda: len(hook.received) == 2, 10)
        assert [body["n"] for body in hook.received] == [1, 2]
        sender.close(0.2)


def test_closing_stops_at_its_deadline_and_counts_what_was_not_sent() -> None:
    with _hanging() as hanging:
        sender = WebhookSender((hanging.url,))
        for n in range(5):
            sender.offer({"n": n})
        assert wait_for(lambda: len(hanging.held) == 1, 10)  # the first one's post is under way
        started = time.monotonic()
        sender.close(0.5)
        took = time.monotonic() - started
    assert took < 3.0
    assert sender.dropped == 4  # the one in flight ends as the hanging post's failure
    sender.offer({"n": 5})  # after the close: nothing would post it
    assert sender.dropped == 5


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:80a/services/T0/B0/XXSECRETXX",
        "http://hooks.example:99999/services/T0/B0/XXSECRETXX",
        "http://hooks.example:0/services/T0/B0/XXSECRETXX",
        "https://hooks.slack.com/services/T0/B0/XXSECRET XX",
        "https://hooks.slack.com/services/T0/B0/XXSECRET\tXX",
        "https://hooks.slack.com/services/T0/B0/XXSECRETé",
        "http://[::1/services/T0/B0/XXSECRETXX",
        "http://user:XXSECRETXX@hooks.example/hook",
        "hooks.slack.com/services/T0/B0/XXSECRETXX",
    ],
)
def test_a_url_that_can_never_be_posted_to_is_refused_without_its_secret(url: str) -> None:
    with pytest.raises(ValueError, match="an alert receiver must be an http") as info:
        WebhookSender((url,))
    assert "XXSECRET" not in str(info.value)
