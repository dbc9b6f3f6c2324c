#!/usr/bin/env python3
"""One layer of the sidecar's data path at a time, served on a port (for `run_sidecar_layers.sh`).

usage: sidecar_layers.py LAYER PORT    (the upstream on 127.0.0.1:$UP_PORT, 18099 by default)

LAYER:
  lean            the leanest ASGI proxy under uvicorn's httptools protocol: a pool of httptools
                  response parsers, hop-by-hop fields dropped, nothing else (no limits, no
                  errors handled: a ceiling, not a proxy; it answers some requests with errors)
  lean_guarded    the same behind the sidecar's client protocol (`guarded/protocol.py`: header, body
                  and time limits, the per-request connection handle)
  proxy           the sidecar's `ProxyApp` (`proxy.py`, `upstream.py`, `headers.py`) under
                  uvicorn's own protocol
  proxy_guarded   `ProxyApp` behind the sidecar's client protocol: the sidecar with monitoring
                  off, less its runner
  callbacks       no ASGI at all: requests forwarded from the client protocol's llhttp callbacks
                  to a pooled upstream connection and answered from its callbacks (no task, no
                  coroutine, no limits, no errors handled): the ceiling of the sidecar's direct
                  path (`modeltap/sidecar/direct.py`)

Each is a real server on uvloop, as the sidecar runs; `run_sidecar_layers.sh` measures them side by
side against nginx and the sidecar itself, so the difference between two rows is what one layer
costs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from typing import Any

import httptools
import uvicorn
import uvloop

from modeltap.guarded.protocol import ClientLimits, protocol_class
from modeltap.sidecar.headers import HOP_BY_HOP, TrustedPeers
from modeltap.sidecar.proxy import ProxyApp, ProxyLimits
from modeltap.sidecar.upstream import UpstreamPool

UP_PORT = int(os.environ.get("UP_PORT", "18099"))
_SKIPPED = HOP_BY_HOP | {b"host", b"content-length"}


class _LeanConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        answer = (self.parser.get_status_code(), self.headers, b"".join(self.body))
        self.headers, self.body = [], []
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter.set_result(answer)


_idle: list[_LeanConnection] = []


async def lean_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    start = b"%s %s HTTP/1.1\r\n" % (scope["method"].encode(), scope["raw_path"])
    head = [start, b"host: upstream\r\ncontent-length: %d\r\n" % len(body)]
    head.extend(name + b": " + value + b"\r\n" for name, value in scope["headers"] if name not in _SKIPPED)
    head.append(b"\r\n")
    loop = asyncio.get_running_loop()
    if _idle:
        conn = _idle.pop()
    else:
        _, conn = await loop.create_connection(_LeanConnection, "127.0.0.1", UP_PORT)
    waiter = conn.waiter = loop.create_future()
    conn.transport.write(b"".join(head) + body)
    status, headers, content = await waiter
    _idle.append(conn)
    kept = [(name, value) for name, value in headers if name not in _SKIPPED]
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": content})


class _CallbackSide(asyncio.Protocol):
    """One side of the callback proxy: a connection fed to llhttp, the message's fields (less the
    hop-by-hop ones and the framing) and body collected as they are parsed."""

    parser: Any

    def __init__(self) -> None:
        self.transport: Any = None
        self.fields: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in _SKIPPED:
            self.fields.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


class _CallbackUpstream(_CallbackSide):
    """One pooled upstream connection answering the client it was given, from its callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = httptools.HttpResponseParser(self)
        self.client: Any = None

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        status = self.parser.get_status_code()
        head = b"HTTP/1.1 %d OK\r\n%scontent-length: %d\r\n\r\n" % (status, b"".join(self.fields), len(body))
        self.fields, self.body = [], []
        client, self.client = self.client, None
        _callback_idle.append(self)
        client.transport.write(head + body)


_callback_idle: list[_CallbackUpstream] = []


class _CallbackClient(_CallbackSide):
    """One client connection: each request is written upstream from `on_message_complete`."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def on_message_begin(self) -> None:
        self.url, self.fields, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        request = b"%s %s HTTP/1.1\r\nhost: upstream\r\n%scontent-length: %d\r\n\r\n%s" % (
            self.parser.get_method(), self.url, b"".join(self.fields), len(body), body,
        )  # fmt: skip
        if _callback_idle:
            upstream = _callback_idle.pop()
            upstream.client = self
            upstream.transport.write(request)
        else:
            asyncio.get_running_loop().create_task(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        _, upstream = await asyncio.get_running_loop().create_connection(
            _CallbackUpstream, "127.0.0.1", UP_PORT
        )
        upstream.client = self
        upstream.transport.write(request)


async def _serve_callbacks(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_CallbackClient, "127.0.0.1", port, backlog=2048)
    await server.serve_forever()


def main() -> None:
    layer, port = sys.argv[1], int(sys.argv[2])
    if layer == "callbacks":
        uvloop.run(_serve_callbacks(port))
        return
    app: Any
    if layer.startswith("lean"):
        app = lean_app
    else:
        pool = UpstreamPool(
            "127.0.0.1",
            UP_PORT,
            connect_timeout_s=5.0,
            keepalive_expiry_s=4.0,
            max_idle=256,
            max_header_bytes=64 * 1024,
        )
        app = ProxyApp(pool, ProxyLimits(), TrustedPeers([]), lambda code: None)
    http: Any = "httptools"
    if layer.endswith("_guarded"):
        http = protocol_class(ClientLimits(), lambda code: None)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=http,
        loop="none",
        lifespan="on",
        ws="none",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        proxy_headers=False,
    )
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    gc.collect()
    gc.freeze()  # as the sidecar does
    loop.run_until_complete(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
