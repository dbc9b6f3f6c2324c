"""The client side of modeltap's ports: uvicorn's httptools protocol with the limits a proxy needs
(the sidecar's proxy port; its admin port too, served by the sidecar or its monitor process).

uvicorn's protocol has no header-size, header-count or header-read time limits and answers every
parser error with the same 400 (DESIGN.md). This subclass adds them (414, 431, 408 for slowloris
and slow bodies, 405 for CONNECT, 501 for upgrades and unknown transfer codings), answers each
with an `x-modeltap-error` code and counts it. Everything it rejects is rejected before the
request reaches the proxy app, so nothing malformed ever reaches the upstream.

Where the extension is built, the usual request (keep-alive HTTP/1.1 whole in one read) is read
in one compiled call instead of llhttp's callbacks, and its response head written in one
(`_serve_whole`, `_WholeRequestCycle`); anything else takes llhttp's and uvicorn's path, where
every limit and refusal above lives.

Per request the proxy app gets a `ConnectionHandle` in `scope["extensions"]`: it can abort the
downstream connection (upstream failed mid-body: the client must see a failure, never a shorter
body that looks complete) and be told when the client goes away (to cancel the upstream call).

A whole request may also be forwarded without the app (`direct`, the sidecar's `DirectPath`):
then an exchange object stands in for uvicorn's cycle and for the handle until it is answered or
handed to the app (`resume_in_app`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from modeltap.capture import compiled
from modeltap.guarded.codes import error_response

_log = logging.getLogger("modeltap.sidecar")
CONNECTION_EXTENSION = "modeltap.connection"


@dataclass(frozen=True)
class ClientLimits:
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 5.0

    @classmethod
    def handed(cls, values: object) -> ClientLimits:
        """The limits as another process was handed them (`dataclasses.asdict`): the defaults
        for what is missing or not a mapping."""
        if not isinstance(values, dict):
            return cls()
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in known})


# Request fields the protocol looks at as they arrive (the `Expect` value is uvicorn's concern).
_NOTED = frozenset({b"host", b"transfer-encoding", b"expect"})

# Requests a connection may have in flight (pipelined) before answered handles are swept out.
_HANDLES_PRUNED_AT = 8

# Where a client connection is, for the deadline sweep (the first two: between requests).
_FRESH, _IDLE, _HEAD, _BODY, _BUSY, _CLOSED = range(6)

# (method, path, raw_path, query_string, lower-cased fields, body), or None: not that shape.
WholeRequest = tuple[str, str, bytes, bytes, list[tuple[bytes, bytes]], bytes]


def _whole_request_reader() -> Callable[[bytes, int, int, int], WholeRequest | None] | None:
    """The compiled reader of a whole request in one read (`_speedups.parse_request`), if built and
    wanted: the usual request of a model client without a Python call per field (None: llhttp only)."""
    return compiled._speedups.parse_request if compiled.wanted() else None


class _WholeRequestCycle(RequestResponseCycle):
    """uvicorn's request cycle for a request the compiled reader took (the extension is built):
    the usual response (a head of plain fields, then a body framed by Content-Length) is written
    as uvicorn's `send` writes it, its head in one compiled call (`_speedups.response_head`) instead
    of two regular-expression searches and a lower-casing per field; everything else (a paused
    or lost client, the access log, a chunked or HEAD response, a field or length that is not
    plain, every error) is uvicorn's `send` itself."""

    async def send(self, message: Any) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            status = message.get("status")
            line = STATUS_LINE.get(status) if type(status) is int else None
            if (
                line is not None
                and not self.response_started
                and not self.disconnected
                and not self.flow.write_paused
                and not self.access_log
            ):
                head = compiled._speedups.response_head(
                    line,
                    self.default_headers,
                    message.get("headers", ()),
                    self.keep_alive,
                    self.scope["method"] != "HEAD" and status not in (204, 304),
                )
                if head is not None:
                    self.response_started = True
                    self.waiting_for_100_continue = False
                    data, self.chunked_encoding, self.expected_content_length, self.keep_alive = head
                    self.transport.write(data)
                    return
        elif (
            kind == "http.response.body"
            and self.chunked_encoding is False
            and self.response_started
            and not self.response_complete
            and not self.disconnected
            and not self.flow.write_paused
            and self.scope["method"] != "HEAD"
        ):
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            left = self.expected_content_length - len(body)
            if left >= 0 if more_body else left == 0:  # else uvicorn's error
                self.expected_content_length = left
                self.transport.write(body)
                if not more_body:
                    self.response_complete = True
                    self.message_event.set()
                    if not self.keep_alive:
                        self.transport.close()
                    self.on_response()
                return
        await super().send(message)


class _Sweeper:
    """One repeating timer per server that checks every connection's deadline."""

    def __init__(self, protocol: GuardedHttpToolsProtocol) -> None:
        self._loop = protocol.loop
        self._connections = protocol.connections
        limits = protocol.limits
        shortest = min(limits.header_timeout_s, limits.body_timeout_s, limits.keepalive_timeout_s)
        # Deadlines fire within one tick of their bound: a tenth of the shortest, 10 ms to 250 ms.
        self._tick_s = min(0.25, max(0.01, shortest / 10))
        self._loop.call_later(self._tick_s, self._sweep)

    @staticmethod
    def ensure(protocol: GuardedHttpToolsProtocol) -> None:
        state = protocol.server_state
        if getattr(state, "_modeltap_sweeper", None) is None:
            state._modeltap_sweeper = _Sweeper(protocol)  # type: ignore[attr-defined]

    def _sweep(self) -> None:
        now = self._loop.time()
        for connection in list(self._connections):
            if isinstance(connection, GuardedHttpToolsProtocol):
                try:
                    connection.check_deadlines(now)
                except Exception:
                    _log.exception("modeltap sidecar: deadline check failed")
        self._loop.call_later(self._tick_s, self._sweep)


class _Rejected(Exception):
    def __init__(self, code: str, detail: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


class ConnectionHandle:
    """What the proxy app may do to its client connection (one per request).

    It lives in the request's scope, which uvicorn's cycle holds: a strong reference back to the
    cycle would make every request a reference cycle (scope, handle, cycle), freed only by the
    garbage collector, about ten objects a request. The cycle is held weakly; it lives as long
    as the request is being served (its task holds it), and once it is gone the request is over.
    """

    __slots__ = ("_cycle", "_protocol", "on_lost", "rejected")

    def __init__(self, protocol: GuardedHttpToolsProtocol, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._cycle = weakref.ref(cycle)
        self.on_lost: Callable[[], None] | None = None
        # The code the protocol answered (and counted) when it cut this request off mid-body
        # (408, 400, ...): the app then sees a disconnect that is not the client's doing.
        self.rejected: str | None = None

    def abort(self) -> None:
        """Close the client connection now, unfinished: the client sees an incomplete response."""
        cycle = self._cycle()
        if cycle is not None:
            cycle.disconnected = True  # uvicorn then neither writes nor logs for this cycle
        transport = self._protocol.transport
        if not transport.is_closing():
            transport.abort()

    @property
    def client_gone(self) -> bool:
        cycle = self._cycle()
        return cycle is None or cycle.disconnected

    def _abandon(self, code: str | None) -> None:
        """The connection is ending: this request will not be answered (nor started, if it
        has not been); `code` is the protocol's rejection it ends with, if any."""
        cycle = self._cycle()
        if cycle is None or cycle.response_complete:
            return
        if code is not None and self.rejected is None:
            self.rejected = code
        cycle.disconnected = True
        cycle.message_event.set()

    @property
    def answered(self) -> bool:
        cycle = self._cycle()
        return cycle is None or cycle.response_complete

    def serves(self, cycle: RequestResponseCycle) -> bool:
        return self._cycle() is cycle


class RequestHandle(Protocol):
    """What the protocol keeps of each request it has not answered yet: a `ConnectionHandle`, or
    the direct path's exchange, which stands in for the cycle and the handle at once."""

    on_lost: Callable[[], None] | None
    rejected: str | None

    @property
    def answered(self) -> bool: ...

    def serves(self, cycle: Any) -> bool: ...

    def _abandon(self, code: str | None) -> None: ...


class DirectExchange(RequestHandle, Protocol):
    """The direct path's request while it stands in for uvicorn's cycle (what the protocol and
    uvicorn's own code read and set of a cycle)."""

    response_complete: bool
    response_started: bool
    disconnected: bool
    keep_alive: bool

    def forward(self) -> None: ...


class DirectServer(Protocol):
    """Forwards whole requests without the app, when it can (`sidecar.direct.DirectPath`)."""

    def take(self, protocol: GuardedHttpToolsProtocol, scope: Any, body: bytes) -> DirectExchange | None: ...


def _classify(exc: httptools.HttpParserError) -> tuple[str, str | None]:
    """The code (and the answer's text, if not the code's usual one) for a refused head."""
    cause = exc.__context__
    if isinstance(cause, _Rejected):
        return cause.code, cause.detail
    text = str(exc).lower()
    if "content-length" in text:
        # Content-Length with Transfer-Encoding is a smuggling shape, not an unknown coding: 400.
        return "invalid_request", None
    if "transfer-encoding" in text or "transfer encoding" in text:
        return "unsupported_transfer_encoding", None
    return "invalid_request", None


def _chunked_only(headers: list[tuple[bytes, bytes]]) -> bool:
    """No Transfer-Encoding, or exactly `chunked` (the only coding the proxy re-frames)."""
    codings = [
        token.strip().lower()
        for name, value in headers
        if name == b"transfer-encoding"
        for token in value.split(b",")
        if token.strip()
    ]
    return not codings or codings == [b"chunked"]


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus request limits; configure with `protocol_class()`."""

    limits = ClientLimits()
    # The limits read per header, as class attributes (one lookup each); set with `limits`.
    _max_url_bytes = limits.max_url_bytes
    _max_headers = limits.max_headers
    _max_header_bytes = limits.max_header_bytes

    direct: DirectServer | None = None  # set by protocol_class()
    # Open connections this server keeps at most (None: no cap); set by protocol_class().
    max_connections: int | None = None

    @staticmethod
    def count_error(code: str) -> None:  # replaced by protocol_class()
        pass

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._head_bytes = 0
        self._url_bytes = 0
        self._header_count = 0
        self._header_bytes = 0
        self._hosts = 0
        self._codings = False  # a Transfer-Encoding field came (its codings are checked at the end)
        # Client deadlines are checked by one sweep per server (`_Sweeper`), not by a timer per
        # request: arming and cancelling timers was a measurable share of a proxied request.
        self._phase = _FRESH
        self._phase_since = 0.0
        # Handles of requests not yet answered (more than one only when pipelined).
        self._handles: list[RequestHandle] = []
        self._read_whole = _whole_request_reader()

    # ---- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.max_connections
        if cap is not None and len(self.connections) > cap:
            # Over the cap (the admin port's: each connection within the client limits still
            # holds a socket and its buffers): answered at once and closed, never read.
            self._phase = _CLOSED
            status, headers, body = error_response("overloaded", "too many open connections", close=True)
            transport.write(_encode(status, headers, body))
            transport.close()
            return
        self._phase = _FRESH
        self._phase_since = self.loop.time()
        _Sweeper.ensure(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _CLOSED
        handles, self._handles = self._handles, []
        super().connection_lost(exc)
        for handle in handles:
            # uvicorn marks only the newest cycle: an earlier pipelined one still being answered
            # would write to the closed transport (uvloop raises) and keep its upstream call.
            handle._abandon(None)
            callback = handle.on_lost
            if callback is not None:
                handle.on_lost = None
                try:
                    callback()
                except Exception:
                    _log.exception("modeltap sidecar: disconnect callback failed")

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        read_whole = self._read_whole
        if read_whole is not None and phase <= _IDLE and not self.pipeline and type(data) is bytes:
            # Between requests, with none in flight: llhttp is at the start of a message, so a
            # whole request read here leaves it exactly where its callbacks would have.
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                request = read_whole(data, self._max_url_bytes, self._max_headers, self._max_header_bytes)
                if request is not None:
                    self._serve_whole(*request)
                    return
        if phase == _IDLE:
            self._phase_since = self.loop.time()  # a new request begins
        elif phase == _BODY:
            cycle = self.cycle
            if cycle is None or not cycle.response_complete:
                self._phase_since = self.loop.time()  # progress
            # Else the rest of a body answered early (see `on_response_complete`): what it sends
            # does not extend its one deadline, or a trickle would hold the connection for good.
        if self._awaiting_headers:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject("upgrade_not_supported")
            return
        except httptools.HttpParserError as exc:
            self._reject(*_classify(exc))
            return
        if (
            self._awaiting_headers
            and self._head_bytes > self.limits.max_header_bytes + self.limits.max_url_bytes
        ):
            # Still inside one request's head: bound what the parser buffers for it, so a
            # header that never ends cannot grow memory.
            self._reject("request_headers_too_large")

    # ---- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._url_bytes = 0
        self._header_count = 0
        self._header_bytes = 0
        self._hosts = 0
        self._codings = False
        self._phase = _HEAD
        self._phase_since = self.loop.time()

    # `on_url` and `on_header` do uvicorn's part themselves (the URL and the lower-cased field
    # list it builds the scope from): called per header, a second Python frame each was a
    # measurable share of a proxied request.

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self._max_url_bytes:
            raise _Rejected("uri_too_long")
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self._max_headers or self._header_bytes > self._max_header_bytes:
            raise _Rejected("request_headers_too_large")
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace (RFC 9110 5.5 excludes it)
        if name in _NOTED:
            if name == b"host":
                self._hosts += 1
            elif name == b"transfer-encoding":
                self._codings = True
            elif value.lower() == b"100-continue":
                self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Refusals first, while this request still counts as a head being read: behind a
        # pipelined request not yet answered, `_reject` must close the connection rather than
        # answer the earlier request with this one's error.
        if self.parser.get_method() == b"CONNECT":
            raise _Rejected("method_not_allowed")
        if self.parser.should_upgrade():
            # Never half-upgraded: a proxied upgrade would need a tunnel, which is not offered.
            raise _Rejected("upgrade_not_supported")
        if self._codings and not _chunked_only(self.headers):
            # llhttp frames `gzip, chunked` (or `gzip` and `chunked` in two fields) as chunked;
            # forwarding the de-chunked body without its other codings would corrupt it.
            raise _Rejected("unsupported_transfer_encoding")
        if self._hosts > 1 or (self._hosts == 0 and self.parser.get_http_version() != "1.0"):
            # RFC 9112 3.2: 400 for two Host fields (which one counts is ambiguous: a cache or
            # router in front may have read the other) or none on HTTP/1.1; HTTP/1.0 may omit it.
            raise _Rejected(
                "invalid_request", "a request needs exactly one Host header (HTTP/1.0: at most one)"
            )
        self._awaiting_headers = False
        self._head_bytes = 0
        self._phase = _BODY
        self._phase_since = self.loop.time()
        super().on_headers_complete()
        self._hand_over(self.cycle)

    def _hand_over(self, cycle: RequestResponseCycle) -> None:
        """Give the request's scope its connection handle (the proxy app's hold on the client)."""
        handle = ConnectionHandle(self, cycle)
        self._keep(handle)
        cycle.scope["extensions"] = {CONNECTION_EXTENSION: handle}

    def _keep(self, handle: RequestHandle) -> None:
        handles = self._handles
        if len(handles) >= _HANDLES_PRUNED_AT:
            # Answered ones leave as their responses complete; this bounds any left behind.
            handles[:] = [h for h in handles if not h.answered]
        handles.append(handle)

    def resume_in_app(
        self,
        exchange: DirectExchange,
        scope: Any,
        body: bytes,
        app: ASGI3Application,
        extensions: dict[str, object],
    ) -> None:
        """The direct path hands its request to the app where it stands (see `sidecar.direct`):
        a cycle as `_serve_whole` makes it, in the exchange's place, with the app's task; the
        scope's extensions get the connection handle and `extensions`."""
        cycle = self._whole_cycle(scope, exchange.keep_alive)
        cycle.disconnected = exchange.disconnected  # the connection may be closing already
        handle = ConnectionHandle(self, cycle)
        handle.rejected = exchange.rejected
        handles = self._handles
        for index, kept in enumerate(handles):
            if kept is exchange:
                handles[index] = handle
                break
        else:
            handles.append(handle)
        scope["extensions"] = {CONNECTION_EXTENSION: handle, **extensions}
        if self.cycle is cast(Any, exchange):
            self.cycle = cycle  # else a request read since is the newest, queued behind this one
        cycle.body += body
        cycle.more_body = False
        cycle.message_event.set()
        self._start_asgi_task(cycle, app)

    def _serve_whole(
        self,
        method: str,
        path: str,
        raw_path: bytes,
        query_string: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        """A whole request from one read (`_speedups.parse_request`): what llhttp's callbacks,
        from `on_message_begin` to `on_message_complete`, do for it (uvicorn's part as uvicorn
        does it), in one call. None of `on_headers_complete`'s refusals can apply: the compiled
        reader takes no CONNECT, upgrade, transfer coding, Expect or Connection but keep-alive,
        and exactly one Host."""
        HttpToolsProtocol.on_message_begin(self)  # the scope, as this uvicorn version builds it
        scope = self.scope
        self.headers = scope["headers"] = headers
        root_path = self.root_path
        scope["method"] = method
        scope["path"] = root_path + path
        scope["raw_path"] = root_path.encode("ascii") + raw_path
        scope["query_string"] = query_string
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app: Any = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app
        self._awaiting_headers = False
        self._head_bytes = 0
        direct = self.direct
        if direct is not None and app is self.app:
            exchange = direct.take(self, scope, body)
            if exchange is not None:
                # In place of the cycle: a request read now queues behind it, as behind a cycle.
                self.cycle = exchange  # type: ignore[assignment]  # (no `cast`: a call per request)
                self._keep(exchange)
                self._phase = _BUSY
                exchange.forward()
                return
        cycle = self.cycle = self._whole_cycle(scope, True)
        self._start_asgi_task(cycle, app)
        self._hand_over(cycle)
        if body:
            cycle.body += body
            if len(cycle.body) > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
        cycle.more_body = False
        cycle.message_event.set()
        self._phase = _BUSY

    def _whole_cycle(self, scope: Any, keep_alive: bool) -> _WholeRequestCycle:
        """uvicorn's request cycle for a whole request (no `Expect`, the body in hand)."""
        return _WholeRequestCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._phase == _BODY:
            cycle = self.cycle
            if cycle is not None and cycle.response_complete:
                # Answered before its body was all in (see `on_response_complete`): the rest has
                # been read and dropped, and the connection is between requests now.
                self._phase = _IDLE
                self._phase_since = self.loop.time()
            else:
                self._phase = _BUSY

    def on_response_complete(self) -> None:
        # uvicorn's version, with the keep-alive deadline left to the sweep instead of a timer.
        handles = self._handles
        if handles and handles[0].answered:
            del handles[0]  # the oldest request is the one answered (pipelined ones in order)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._phase == _BUSY:
            self._phase = _IDLE
            self._phase_since = self.loop.time()
        elif self._phase == _BODY:
            # Answered before the body was all in (502 with the upstream down, 503 overloaded),
            # and kept alive. The rest of the body is read and dropped as it comes (uvicorn's
            # `on_body`), the connection staying in the body phase until the body ends (then
            # keep-alive). It has `body_timeout_s` from now for all of it, whatever it sends
            # meanwhile (`data_received`): one that stops sending, or trickles, is closed.
            self._phase_since = self.loop.time()

    # ---- limits ----------------------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        """Called by the sweep: enforce the header, body and keep-alive timeouts."""
        phase = self._phase
        if phase in (_BUSY, _CLOSED) or self.transport.is_closing():
            return
        waited_s = now - self._phase_since
        limits = self.limits
        if phase == _HEAD:
            previous = self.cycle
            if previous is not None and not previous.response_complete:
                return  # a pipelined request is still being answered; reading is paused till then
            if waited_s >= limits.header_timeout_s:
                self._reject("request_header_timeout")
        elif phase == _BODY:
            cycle = self.cycle
            if cycle is None or not cycle.more_body:
                self._phase = _BUSY
            elif waited_s >= limits.body_timeout_s:
                if cycle.response_complete:
                    # Answered already (see `on_response_complete`): no second answer, and not
                    # counted (the exchange has its code); closed, as an idle connection is.
                    self.transport.close()
                else:
                    self._reject("request_body_timeout")
        elif waited_s >= (limits.header_timeout_s if phase == _FRESH else limits.keepalive_timeout_s):
            self.transport.close()  # connected and silent: close without an answer, as nginx does

    def _reject(self, code: str, detail: str | None = None) -> None:
        """Answer `code` (unless a response is already under way) and close the connection."""
        reading_body, self._phase = self._phase == _BODY, _CLOSED
        cycle = self.cycle
        if reading_body and cycle is not None and cycle.response_complete:
            # The body of a request answered before it was all in (see `on_response_complete`):
            # that request has its answer (and its code, counted), and a second one would be
            # read as the next request's. Closed, as at its body deadline.
            self.transport.close()
            return
        self.count_error(code)
        # Pipelined: the newest request may be queued behind an earlier one still being answered.
        queued = bool(self.pipeline)
        in_flight = (
            cycle is not None and not cycle.response_complete and not self._awaiting_headers and not queued
        )
        transport = self.transport
        if in_flight and cycle is not None:
            # The app is running for this request: it must stop waiting for a body that will
            # not come, and the upstream call is cancelled through the handle's callback.
            if not cycle.response_started and not transport.is_closing():
                status, headers, body = error_response(code, detail or _DETAIL[code], close=True)
                transport.write(_encode(status, headers, body))
            for handle in self._handles:
                if handle.serves(cycle):
                    handle.rejected = code
            cycle.disconnected = True
            cycle.message_event.set()
            if not transport.is_closing():
                transport.close()
            return
        if cycle is not None and not cycle.response_complete:
            # An earlier (pipelined) response is still due: never interleave another one (the
            # client would take it for the earlier request's answer), and do not start or finish
            # requests whose answers can no longer be delivered.
            for handle in self._handles:
                handle._abandon(code)
            self.pipeline.clear()
            transport.close()
            return
        if not transport.is_closing():
            status, headers, body = error_response(code, detail or _DETAIL[code], close=True)
            transport.write(_encode(status, headers, body))
            transport.close()


_DETAIL = {
    "invalid_request": "invalid HTTP request",
    "unsupported_transfer_encoding": "unsupported transfer coding",
    "method_not_allowed": "CONNECT is not supported",
    "upgrade_not_supported": "protocol upgrades are not supported",
    "request_header_timeout": "request headers not received in time",
    "request_body_timeout": "request body not received in time",
    "uri_too_long": "request target too long",
    "request_headers_too_large": "request header fields too large",
}


def _encode(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    import http

    reason = http.HTTPStatus(status).phrase.encode()
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


def protocol_class(
    limits: ClientLimits,
    count_error: Callable[[str], None],
    direct: DirectServer | None = None,
    max_connections: int | None = None,
) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` with these limits and error counter, the
    direct path, if given (it is taken only where the compiled request reader is built), and a
    cap on open connections, if given (a connection over it is answered 503 and closed)."""
    return type(
        "SidecarHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "limits": limits,
            "_max_url_bytes": limits.max_url_bytes,
            "_max_headers": limits.max_headers,
            "_max_header_bytes": limits.max_header_bytes,
            "count_error": staticmethod(count_error),
            "direct": direct,
            "max_connections": max_connections,
        },
    )


def _uncounted(code: str) -> None:
    """The admin port's refusals are not the proxy's errors: not counted in its metrics."""


# Open connections the admin port keeps at most: its clients are a few scrapers, pages and
# feedback writers; without a cap, connections that each stay within the client limits (a head
# sent slowly, a keep-alive left idle) hold a descriptor each until the process runs out.
ADMIN_MAX_CONNECTIONS = 256


def admin_protocol(
    limits: ClientLimits, max_connections: int = ADMIN_MAX_CONNECTIONS
) -> type[GuardedHttpToolsProtocol]:
    """The protocol of the sidecar's admin port: the proxy port's client limits, no direct path,
    its refusals uncounted, at most `max_connections` open connections."""
    return protocol_class(limits, _uncounted, max_connections=max_connections)
