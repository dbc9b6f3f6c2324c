"""A webhook receiver for alert tests: a real HTTP server on 127.0.0.1 that keeps every JSON
document posted to it (optionally after hanging `hang_s`, to play a slow receiver; `arrived`
counts the posts as they come in, before the hang)."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any


class Webhook(http.server.ThreadingHTTPServer):
    def __init__(self, hang_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[dict[str, Any]] = []
        self.arrived = 0
        self.hang_s = hang_s

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Webhook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.arrived += 1
        if self.server.hang_s:
            time.sleep(self.server.hang_s)
        self.server.received.append(json.loads(body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def webhook(hang_s: float = 0.0) -> Iterator[Webhook]:
    server = Webhook(hang_s)
    # Polled every 50 ms for shutdown (rather than every 0.5 s): each test stops its receiver.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
