"""The upstream side of the sidecar: a keep-alive connection pool on asyncio and httptools.

Not httpx or aiohttp: under concurrency those proxied at 0.05x and 0.5x of nginx (DESIGN.md);
a connection that is an `asyncio.Protocol` feeding llhttp reaches nginx's rate. Framing comes
from llhttp (Content-Length vs chunked, conflicting lengths, invalid status lines); what llhttp
cannot know (HEAD, read-until-close, header size) is decided here. The usual response of a model
server (HTTP/1.1, all of it in one read, framed by Content-Length) is read in one compiled call
instead (`_speedups.parse_response`, where the extension is built): it accepts only what llhttp
reads the same way, and leaves everything else to llhttp.

One connection carries one exchange at a time. Deadlines are timer handles owned by the
connection (no `wait_for` task per request): a connect timeout, a response deadline until the
headers arrive, then an idle timeout between body bytes, checked lazily so a streaming response
does not re-arm a timer per chunk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import select
import socket
import time
from collections.abc import Callable
from typing import cast

import httptools

from modeltap.capture import compiled
from modeltap.guarded.codes import ProxyError
from modeltap.sidecar.headers import HOP_BY_HOP

# Response bodies queued above this are back-pressured: the upstream socket stops being read
# until the client has taken them, so a 1 GiB stream is forwarded in constant memory.
BODY_HIGH_WATER = 256 * 1024
BODY_LOW_WATER = 64 * 1024
# Response fields `on_header` notes: framing, and the hop-by-hop ones the client must not get.
_RESPONSE_NOTED = HOP_BY_HOP | {b"content-length"}


# (status, lower-cased fields, a hop-by-hop field came, keep-alive, body), or None: not that shape.
WholeResponse = tuple[int, list[tuple[bytes, bytes]], bool, bool, bytes]


def _fast_parser() -> Callable[[bytes, int, int], WholeResponse | None] | None:
    """The compiled reader of a whole response in one read (`_speedups.parse_response`), if built
    and wanted: the usual small response without a Python call per field (None: llhttp only)."""
    return compiled._speedups.parse_response if compiled.wanted() else None


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to the upstream and the response currently being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_header_bytes: int) -> None:
        self._loop = loop
        self._max_header_bytes = max_header_bytes
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._parse_whole = _fast_parser()
        self._fresh = False  # no byte of the current response has reached llhttp yet
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0
        self.in_exchange = False
        self.held = False
        # Set by the pool while the connection is idle in it: the upstream's close removes it.
        self.on_idle_close: Callable[[UpstreamConnection], None] | None = None
        self.poll: select.poll | None = None  # asks the kernel whether the socket has news
        # Per-exchange state.
        self.status = 0
        # Response fields with lower-cased names (as the client gets them), and what the
        # response path needs to know of them without another pass over the list.
        self.headers: list[tuple[bytes, bytes]] = []
        self.hop_by_hop = False  # a hop-by-hop field came: the list needs rewriting for the client
        self._length = False
        self._codings: list[bytes] | None = None
        self._header_bytes = 0
        self.headers_done = False
        self.complete = False
        self.answered = False  # a byte of a response arrived
        self.unsent = False  # nothing of the request was written: the connection was gone
        self._head = False
        self._until_eof = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._reading_paused = False
        self._error: ProxyError | None = None
        self._headers_waiter: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        # Deadlines, checked by the pool's sweep (see `check_deadline`).
        self._response_timeout_s = 0.0
        self._idle_timeout_s = 0.0
        self._waiting_since = 0.0
        self._last_activity = 0.0
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # The direct path's waiter (`expect_response`): called once, instead of a future.
        self.on_response: Callable[[], None] | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.poll = select.poll()
            self.poll.register(sock.fileno(), select.POLLIN)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.in_exchange:
            # Bytes on an idle pooled connection: the upstream broke framing; never reuse it.
            self.reusable = False
            self._close_transport()
            return
        self.answered = True
        self._last_activity = self._loop.time()
        if self._fresh:
            self._fresh = False
            parse_whole = self._parse_whole
            if parse_whole is not None and not self._head:
                whole = parse_whole(data, self._max_header_bytes, BODY_HIGH_WATER)
                if whole is not None:
                    self._take_whole(*whole)
                    self._notify()
                    return
        if not self.headers_done:
            self._header_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if not self.headers_done and self._header_bytes > self._max_header_bytes:
                # Counted per read, not per header field: one check instead of one per field, and
                # the parser never buffers more than one read beyond the limit.
                raise ProxyError("upstream_protocol_error", "upstream response headers too large")
            if self.headers_done and self.on_response is not None and not self._body_due():
                self._notify()  # after the whole read: the response may have completed in it
        except ProxyError as error:
            self._fail(error)
        except httptools.HttpParserUpgrade:
            self._fail(ProxyError("upstream_protocol_error", "upstream switched protocols"))
        except httptools.HttpParserError as exc:
            if self._error is None:
                if isinstance(exc.__context__, ProxyError):  # raised by a callback below
                    self._fail(exc.__context__)
                    return
                detail = f"invalid upstream response: {exc}"
                self._fail(ProxyError("upstream_protocol_error", detail))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        forget = self.on_idle_close
        if forget is not None:
            # Closed (or reset) while idle in the pool: out of it now, not at the next checkout.
            self.on_idle_close = None
            forget(self)
        if self.headers_done and not self.complete and self._until_eof and self._error is None:
            # A response framed by the connection's end is complete when the upstream closes.
            self.complete = True
            self._wake_body()
            return
        if self._error is None and (self._headers_waiter is not None or not self.complete):
            if self.headers_done:
                self._fail(ProxyError("upstream_reset_after_response_started", "upstream closed mid-body"))
            elif self._headers_waiter is not None or self.on_response is not None:
                self._fail(
                    ProxyError("upstream_reset_before_response_started", "upstream closed before responding")
                )
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # ---- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # Another response begins in the same read as a whole one: bytes nobody asked for
            # (the upstream broke framing). llhttp now holds part of it, and the next request's
            # response would be read after it: the connection is never reused.
            self.reusable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _RESPONSE_NOTED:
            if name == b"content-length":
                self._length = True
            elif name == b"transfer-encoding":
                self._codings = [*(self._codings or ()), value]
                self.hop_by_hop = True
            else:
                self.hop_by_hop = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            # llhttp takes any three digits; no such status can be sent on to the client.
            raise ProxyError("upstream_protocol_error", f"invalid upstream status {status}")
        if 100 <= status < 200:
            # Interim responses (100 Continue, 103) are not forwarded; wait for the final one.
            self.headers = []
            self.hop_by_hop = self._length = False
            self._codings = None
            self._header_bytes = 0
            return
        if self._header_bytes > self._max_header_bytes and (
            sum(len(name) + len(value) + 4 for name, value in self.headers) > self._max_header_bytes
        ):
            # Exact count only when the reads so far could hold that much header.
            raise ProxyError("upstream_protocol_error", "upstream response headers too large")
        self.status = status
        self.headers_done = True
        chunked = False
        length = self._length
        for value in self._codings or ():
            if chunked or value.strip().lower() != b"chunked":
                # Only chunked is decoded here; another coding would reach the client with its
                # Transfer-Encoding header stripped, i.e. corrupted (nginx answers 502 too).
                raise ProxyError("upstream_protocol_error", "unsupported upstream transfer coding")
            chunked = True
        self._until_eof = not chunked and not length and status not in (204, 304) and not self._head
        if self._head:
            # llhttp cannot be told the request was HEAD: the response ends with its headers, and
            # the connection is not reused since the parser would expect a body on it.
            self.complete = True
            self.reusable = False
        self._last_activity = self._loop.time()
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._head:
            return
        self._chunks.append(body)
        self._queued += len(body)
        if self._queued > BODY_HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_body()

    def _take_whole(
        self, status: int, fields: list[tuple[bytes, bytes]], hop_by_hop: bool, keep_alive: bool, body: bytes
    ) -> None:
        """A whole response read by `parse_response` (one read, Content-Length framed, HTTP/1.1,
        status 200-599 but 204 and 304): the state llhttp's callbacks would have left."""
        self.headers = fields
        self.hop_by_hop = hop_by_hop
        self._length = True
        self.status = status
        self.headers_done = True
        if body:
            self._chunks.append(body)
            self._queued = len(body)
        self.complete = True
        self.reusable = keep_alive and status < 500  # as `on_message_complete` decides
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._wake_body()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # end of an interim response
        if self._head:
            return
        self.complete = True
        # llhttp's keep-alive answer covers `Connection: close` and HTTP/1.0 without keep-alive.
        # A 5xx is never reused: servers that answer an exception (uvicorn behind Starlette or
        # FastAPI, MLServer) close the connection right after it, often once the next request
        # has been written on it.
        self.reusable = self._parser.should_keep_alive() and not self._until_eof and self.status < 500
        self._wake_body()

    # ---- one exchange ----------------------------------------------------------------------

    def send_request(self, head: bytes, body: bytes, head_request: bool) -> None:
        """Write a request; the response is then awaited with `response_headers()`.

        Raises `ProxyError` (reset before the response started) with `unsent` set when nothing
        of the request can have left: the transport was closing before the write, or the write
        itself failed (asyncio and uvloop try the socket at once; a send that fails sends
        nothing, and the transport starts closing before `write` returns). Bytes the kernel
        accepted count as written, even if the upstream never read them."""
        transport = self.transport
        assert transport is not None
        self.in_exchange = True
        self.status = 0
        self.headers = []
        self.hop_by_hop = self._length = False
        self._codings = None
        self._header_bytes = 0
        self.headers_done = False
        self.complete = False
        self.answered = False
        self.unsent = self.closed or transport.is_closing()
        self._head = head_request
        self._until_eof = False
        self._error = None
        self.reusable = False
        self._chunks.clear()
        self._queued = 0
        self._waiting_since = 0.0
        self._fresh = True
        if not self.unsent:
            transport.write(head + body if body else head)
            self.unsent = transport.is_closing()
        if self.unsent:
            error = ProxyError("upstream_reset_before_response_started", "upstream closed before the request")
            self._fail(error)
            raise error

    def write(self, data: bytes) -> None:
        """More request body (streamed uploads)."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the upstream is not reading what we write (streamed uploads)."""
        while self._write_paused and not self.closed:
            waiter = self._drain_waiter = self._loop.create_future()
            await waiter
        if self._error is not None:
            raise self._error

    async def response_headers(self, response_timeout_s: float, idle_timeout_s: float) -> None:
        """Wait for the final response headers; raises `ProxyError` with the failure's code."""
        self._response_timeout_s = response_timeout_s
        self._idle_timeout_s = idle_timeout_s
        if self._error is not None:
            raise self._error
        if self.headers_done:
            return
        if not self._waiting_since:  # else the direct path began the wait, when it sent
            self._waiting_since = self._loop.time()
        waiter = self._headers_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._headers_waiter = None
        if self._error is not None:
            raise self._error

    def expect_response(
        self, response_timeout_s: float, idle_timeout_s: float, on_response: Callable[[], None]
    ) -> None:
        """`response_headers()` for a caller without a coroutine (the sidecar's direct path):
        `on_response()` is called once: after the read that brought the response headers, or
        the next one when the headers came alone before a body framed by Content-Length (then
        the idle timeout applies meanwhile), or when the exchange failed (the error is then
        raised by `response_headers()`); under the same deadlines."""
        self._response_timeout_s = response_timeout_s
        self._idle_timeout_s = idle_timeout_s
        if self._error is not None or self.headers_done:
            on_response()
            return
        self._waiting_since = self._loop.time()
        self.on_response = on_response

    @property
    def queued(self) -> int:
        """Bytes of response body read and not yet taken."""
        return self._queued

    def take_body(self) -> bytes | None:
        """Whatever body is queued now, without waiting (b"" if none yet, None at the end)."""
        if self._chunks:
            return self._take_queued()
        if self.complete:
            return None
        if self._error is not None:
            raise self._error
        return b""

    async def next_body(self) -> bytes | None:
        """The next piece of response body, or None once the response is complete."""
        while True:
            if self._chunks:
                return self._take_queued()
            if self.complete:
                return None
            if self._error is not None:
                raise self._error
            waiter = self._body_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._body_waiter = None

    def abort(self, error: ProxyError | None = None) -> None:
        """Give up on this exchange (client gone, deadline): the connection is closed, not pooled."""
        if error is not None and self._error is None:
            self._fail(error)
        self.reusable = False
        self._close_transport()

    def abort_client_gone(self) -> None:
        self.abort(ProxyError("client_disconnected", "client went away"))

    # ---- internals -------------------------------------------------------------------------

    def _take_queued(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._queued = 0
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def _fail(self, error: ProxyError) -> None:
        if self._error is None:
            self._error = error
        self.reusable = False
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._wake_body()
        self._wake_drain()
        self._close_transport()
        self._notify()

    def _body_due(self) -> bool:
        """Whether the direct path's waiter waits for the next read: the headers came alone and
        a body framed by Content-Length is to follow (servers write a small response's head and
        body apart, often in two segments). Once any of the body is in, or for a body framed
        otherwise (a stream), the waiter is called: the response is then whole, or streamed."""
        return not self.complete and self._length and self._codings is None and not self._queued

    def _notify(self) -> None:
        callback = self.on_response
        if callback is not None:
            self.on_response = None
            callback()

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close_transport(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def check_deadline(self, now: float) -> None:
        """Called by the pool's sweep: the response deadline until the headers, then the idle
        timeout between bytes (not while the client is the slow side and reading is paused)."""
        if self.complete or self.closed or self._error is not None or not self.in_exchange:
            return
        if not self.headers_done:
            if self._waiting_since and now - self._waiting_since >= self._response_timeout_s:
                self._fail(ProxyError("upstream_response_timeout", "upstream did not respond in time"))
        elif self._reading_paused or self._chunks:
            self._last_activity = now
        elif self._idle_timeout_s and now - self._last_activity >= self._idle_timeout_s:
            self._fail(ProxyError("upstream_idle_timeout", "upstream sent nothing within the idle timeout"))


class UpstreamPool:
    """Keep-alive connections to the one configured upstream (LIFO, expired before the upstream's
    own keep-alive closes them, so a stale connection is never picked).

    An upstream's close is never seen by another request: a connection is pooled only after a
    complete response that let it live (not `Connection: close`, not HTTP/1.0 without
    keep-alive, not framed by the close, not a 5xx); it leaves the pool as soon as the upstream
    closes it; and at checkout the kernel is asked whether anything (an EOF, a reset, stray
    bytes) is pending on it that the event loop has not yet read.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float,
        keepalive_expiry_s: float,
        max_idle: int,
        max_header_bytes: int,
        deadline_tick_s: float = 0.1,
    ) -> None:
        self.host = host
        self.port = port
        self._connect_timeout_s = connect_timeout_s
        self._expiry_s = keepalive_expiry_s
        self._max_idle = max_idle
        self._max_header_bytes = max_header_bytes
        self._idle: list[UpstreamConnection] = []
        self._busy: set[UpstreamConnection] = set()
        self._tick_s = deadline_tick_s
        self._sweeping: asyncio.TimerHandle | None = None
        self.opened = 0
        self.active = 0

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection ready for a request (held from now on), or None if none is."""
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            conn.on_idle_close = None
            if now - conn.idle_since < self._expiry_s and self._quiet(conn):
                self.active += 1
                conn.held = True
                self._busy.add(conn)
                return conn
            conn.abort()
        return None

    def put_back(self, conn: UpstreamConnection) -> None:
        """Undo `take_idle` for a connection nothing was written on: idle again, as it was."""
        if not conn.held:
            return
        conn.held = False
        self._busy.discard(conn)
        self.active -= 1
        if conn.closed or len(self._idle) >= self._max_idle:
            conn.abort()
            return
        conn.on_idle_close = self._forget
        self._idle.append(conn)

    async def open_held(self) -> UpstreamConnection:
        """A new connection, held for a request."""
        conn = await self.connect()
        self.active += 1
        conn.held = True
        self._busy.add(conn)
        if self._sweeping is None:
            self._sweeping = asyncio.get_running_loop().call_later(self._tick_s, self._sweep)
        return conn

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        max_header_bytes = self._max_header_bytes
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(loop, max_header_bytes), self.host, self.port
                ),
                self._connect_timeout_s,
            )
        except asyncio.TimeoutError:
            raise ProxyError("upstream_connect_timeout", "connecting to the upstream timed out") from None
        except OSError as exc:
            raise ProxyError("upstream_connect_failure", f"cannot connect to the upstream: {exc}") from None
        self.opened += 1
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection after its exchange: pooled if the response allowed it, else closed."""
        if not conn.held:
            return  # released already
        conn.held = False
        self._busy.discard(conn)
        self.active -= 1
        conn.in_exchange = False
        if (
            conn.reusable
            and conn.complete
            and not conn.closed
            and len(self._idle) < self._max_idle
            and conn.transport is not None
            and not conn.transport.is_closing()
            and not conn.transport.get_write_buffer_size()  # never a request's tail left to send
        ):
            conn.idle_since = time.monotonic()
            conn.on_idle_close = self._forget
            self._idle.append(conn)
        else:
            conn.abort()

    def _forget(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def _quiet(self, conn: UpstreamConnection) -> bool:
        """Whether an idle connection can carry a request: open, and nothing readable on its
        socket. An idle connection has nothing to read, so any event (EOF, reset, bytes) means
        the upstream is done with it, even if the loop has not polled since (one syscall)."""
        transport = conn.transport
        if conn.closed or transport is None or transport.is_closing():
            return False
        poll = conn.poll
        if poll is None:
            return True  # no socket to ask (not a socket transport)
        return not poll.poll(0)

    def _sweep(self) -> None:
        # One timer for all deadlines: a timer per request was a measurable cost.
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self._busy):
            conn.check_deadline(now)
        self._sweeping = loop.call_later(self._tick_s, self._sweep)

    def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.on_idle_close = None
            conn.abort()
