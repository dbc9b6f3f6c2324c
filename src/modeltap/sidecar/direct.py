"""The sidecar's direct path: the usual exchange forwarded from the protocols' callbacks.

uvicorn serves each request through an ASGI app run as a task: a scope, `receive` and `send`
coroutines, a dict per message, the task's steps through the event loop, then the proxy's own
coroutines. For a proxy that only moves bytes that is most of its work: side by side
(`bench/run_sidecar_layers.sh`), the leanest ASGI proxy under uvicorn reached 0.88 to 0.90 of
nginx's rate where one forwarding from the protocols' callbacks reached 0.99 to 1.07.

So the usual exchange of a model client skips the app: a whole request read at once (the compiled
reader, `_serve_whole`), an idle pooled upstream connection, and a response that comes back whole
(framed by Content-Length, a status other than 204 and 304; in one read, or its head in one and
its body in the next) are forwarded from the callbacks: the request head built as `ProxyApp`
builds it, the response head written as uvicorn's `send` writes it, and the exchange recorded by
the compiled capture as if the app had run (`Capture.offer_whole`), with the same sampling and
trace decisions (`Capture.root_trace`). The client gets the same bytes and the monitor the same
record (`tests/integration/sidecar/test_direct_path.py` holds both paths to that).

Everything else takes the app. What is decided before anything is written (monitoring's start,
a local view, draining, the in-flight bound, no idle connection, a `traceparent` or a current
trace context, a HEAD, a head the compiled builder does not take, a paused client) takes it from
the start. What turns up after the request went out (a response that is not whole in one read: a
stream, a 204, an error; the upstream closing or timing out; the drain) is handed to the app where
it stands (`resume_in_app`, `Capture.resume`): `ProxyApp` waits for the response on the same
connection, replays or answers the error as it would have, and the capture records the exchange
from its real start with its trace identity. A client that leaves is handled here, as the app
would: the upstream call is cancelled and the exchange filed as `client_disconnected` (or under
the code the protocol refused the connection with).

One difference is deliberate: a response head that comes alone is held until the next read, its
body's first bytes (servers write a small response's head and body apart). Meanwhile nothing has
reached the client, so what befalls the exchange then is answered as an error before the
response: the upstream closing gives a whole `502 upstream_reset_after_response_started` where
the app would have sent the head and cut the connection, the idle timeout a `504`, and a client
leaving is filed with status 0; and the time to the first byte is that of the body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE as _STATUS_LINE

from modeltap.capture import compiled
from modeltap.guarded.codes import ProxyError
from modeltap.records import PROXY_ERROR_KEY
from modeltap.sidecar.headers import compiled_request_head, rewrite_response_headers
from modeltap.sidecar.proxy import FORWARDED_EXTENSION, Forwarded, ProxyApp
from modeltap.sidecar.upstream import UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from modeltap.guarded.protocol import GuardedHttpToolsProtocol
    from modeltap.middleware.asgi import ModelTapMiddleware

_log = logging.getLogger("modeltap.sidecar")
_response_head: Any = compiled._speedups.response_head if compiled.AVAILABLE else None
_perf = time.perf_counter
_wall_ns = time.time_ns


class _NoEvent:
    """uvicorn sets its cycle's `message_event` when the connection is lost: the exchange learns
    of that through `_abandon`, which the protocol calls next."""

    @staticmethod
    def set() -> None:
        pass


_NO_EVENT = _NoEvent()


class DirectPath:
    """Takes the whole requests it can forward without the app (see the module docstring).

    Example::

        direct = DirectPath(proxy, middleware)
        protocol = protocol_class(limits, count_error, direct)
    """

    def __init__(self, proxy: ProxyApp, middleware: ModelTapMiddleware) -> None:
        self._proxy = proxy
        self._middleware = middleware
        self._compiled_head = compiled_request_head()
        self._capture_type: Any = compiled._speedups.Capture if compiled.AVAILABLE else None
        self.in_flight: set[Exchange] = set()

    @staticmethod
    def available() -> bool:
        """Whether this build can take the direct path (the compiled reader, head and capture)."""
        return compiled.wanted() and compiled_request_head() is not None

    def take(self, protocol: GuardedHttpToolsProtocol, scope: dict[str, Any], body: bytes) -> Exchange | None:
        """The exchange for this whole request, an upstream connection held for it, or None:
        the app takes the request (nothing was decided, counted or drawn)."""
        proxy = self._proxy
        limits = proxy.limits
        compiled_head = self._compiled_head
        if (
            compiled_head is None
            or proxy.draining
            or proxy.inflight >= limits.max_inflight
            or scope["method"] == "HEAD"
            or protocol.flow.write_paused
        ):
            return None
        middleware = self._middleware
        capture: Any = None
        tap: Any = None
        if middleware.enabled:
            tap = middleware.tap
            capture = tap.capture
            if type(capture) is not self._capture_type:
                return None  # not started yet (the app starts it), or the pure-Python capture
            prefix = middleware.config.views_prefix
            if prefix is not None and scope["path"].startswith(prefix):
                return None
        route = proxy.route
        pool = route.pool
        if not pool.idle_count:
            return None
        client = scope["client"]
        try:
            head = compiled_head(
                scope["headers"], client[0] if client else None, scope["scheme"], proxy.trusted,
                route.default_host, limits.via,
            )  # fmt: skip
        except ValueError:
            return None  # the app answers 400
        if head is None:
            return None
        fields, content_length, chunked, _, _ = head
        if chunked or (content_length is not None and content_length > limits.max_request_body_bytes):
            return None
        conn = pool.take_idle()
        if conn is None:
            return None
        try:
            return self._prepare(protocol, scope, body, pool, conn, fields, content_length, capture, tap)
        except Exception:
            pool.put_back(conn)  # nothing was written on it
            self._failed("take")
            return None

    def _prepare(
        self,
        protocol: GuardedHttpToolsProtocol,
        scope: dict[str, Any],
        body: bytes,
        pool: UpstreamPool,
        conn: UpstreamConnection,
        fields: list[bytes],
        content_length: int | None,
        capture: Any,
        tap: Any,
    ) -> Exchange | None:
        ids: Any = None
        weight = payload_weight = 0
        if capture is not None:
            ids = capture.root_trace(scope["headers"])
            if ids is NotImplemented:
                pool.put_back(conn)
                return None  # a traceparent or a current context: the capture's Python form decides
        proxy = self._proxy
        started = _perf()
        start_ns = _wall_ns()
        if capture is not None:
            # (1, 1) while everything is captured: one call costs less than reading both strides
            weight, payload_weight = tap.sampling.admit()
            if not weight:
                ids = None  # not captured: neither recorded nor traced, as through the app
        if ids is not None:
            # As `_inject_traceparent` with the exchange's span current (no traceparent came).
            fields.insert(0, b"traceparent: 00-%032x-%016x-01\r\n" % (ids.trace_id, ids.span_id))
        target: bytes = scope["raw_path"]
        query: bytes = scope["query_string"]
        if query:
            target += b"?" + query
        framing = b"content-length: %d\r\n\r\n" % len(body) if body or content_length is not None else b"\r\n"
        start_line = b"%s %s HTTP/1.1\r\n" % (scope["method"].encode(), target)
        upstream_head = start_line + b"".join(fields) + framing
        record = (capture, weight, payload_weight, ids, start_ns, started) if weight else None
        exchange = Exchange(self, protocol, scope, body, pool, conn, upstream_head, record)
        proxy.inflight += 1
        self.in_flight.add(exchange)
        return exchange

    def _failed(self, where: str) -> None:
        """A defect of the direct path itself: logged and counted, and the request is the app's
        (or, once written, the client's connection is closed: a failure, never a hang)."""
        _log.exception("modeltap sidecar: the direct path failed (%s)", where)
        self._middleware.tap.note_internal_error("sidecar_direct_path")

    def hand_over_all(self) -> None:
        """Hand every exchange in flight to the app (the drain begins: its deadline and its 503
        are the app's)."""
        for exchange in list(self.in_flight):
            try:
                exchange.hand_over()
            except Exception:
                exchange._broken("hand over")


class Exchange:
    """One request on the direct path, standing in for uvicorn's cycle and for the connection
    handle while it is in flight (the attributes the protocol and uvicorn read and set)."""

    __slots__ = (
        "_body", "_conn", "_direct", "_done", "_head", "_pool", "_protocol", "_scope", "disconnected",
        "keep_alive", "message_event", "on_lost", "record", "rejected", "response_complete",
        "response_started",
    )  # fmt: skip

    def __init__(
        self,
        direct: DirectPath,
        protocol: GuardedHttpToolsProtocol,
        scope: dict[str, Any],
        body: bytes,
        pool: UpstreamPool,
        conn: UpstreamConnection,
        head: bytes,
        record: tuple[Any, int, int, Any, int, float] | None,
    ) -> None:
        self._direct = direct
        self._protocol = protocol
        self._scope = scope
        self._body = body
        self._pool = pool
        self._conn = conn
        self._head = head
        # (capture, weight, payload_weight, ids, start_ns, started), or None: not captured.
        self.record = record
        self.response_complete = False
        self.response_started = False
        self.disconnected = False
        self.keep_alive = True  # uvicorn's shutdown turns it off: the response then closes
        self.message_event = _NO_EVENT
        self.on_lost: Callable[[], None] | None = None  # a handle's; the exchange needs none
        self.rejected: str | None = None
        self._done = False  # answered, abandoned or handed to the app

    # ---- as the protocol's request handle --------------------------------------------------

    @property
    def answered(self) -> bool:
        return self.response_complete

    def serves(self, cycle: Any) -> bool:
        return cycle is self

    def _abandon(self, code: str | None) -> None:
        """The client connection ended before the answer: cancel the upstream call, as the app
        does, and file the exchange under the protocol's refusal, else `client_disconnected`."""
        if self._done:
            return
        try:
            self._give_up(code)
        except Exception:
            self._direct._failed("abandon")

    def _give_up(self, code: str | None) -> None:
        self._finish()
        if code is not None and self.rejected is None:
            self.rejected = code
        conn = self._conn
        conn.on_response = None
        conn.abort(ProxyError("client_disconnected", "client went away"))
        self._pool.release(conn)
        scope = self._scope
        if self.rejected is not None:
            scope[PROXY_ERROR_KEY] = self.rejected  # counted by the protocol already
        else:
            self._direct._proxy.note(scope, "client_disconnected")
        record = self.record
        if record is not None:
            capture, weight, payload_weight, ids, start_ns, started = record
            capture.offer_whole(
                scope, weight, payload_weight, ids, start_ns, started, self._body, 0, [], None, b"", None
            )

    # ---- the exchange ----------------------------------------------------------------------

    def forward(self) -> None:
        """Write the request upstream; the answer comes to `on_response`."""
        conn = self._conn
        try:
            try:
                conn.send_request(self._head, self._body, False)
            except ProxyError:
                self.hand_over()  # the connection was gone: the app replays the request
                return
            limits = self._direct._proxy.limits
            conn.expect_response(limits.response_timeout_s, limits.idle_timeout_s, self.on_response)
        except Exception:
            self._broken("forward")

    def on_response(self) -> None:
        """The response headers are in, or the exchange failed: answer it here if it is whole
        and plain, else hand it to the app."""
        if self._done:
            return
        try:
            conn = self._conn
            protocol = self._protocol
            transport = protocol.transport
            status = conn.status
            if not conn.complete or status in (204, 304) or protocol.flow.write_paused:
                self.hand_over()
                return
            if transport.is_closing():
                self.hand_over()  # the client is leaving: the app hears of it as it always does
                return
            direct = self._direct
            proxy = direct._proxy
            via = proxy.limits.via
            # As `ProxyApp._respond`: names come lower-cased from the connection.
            headers = rewrite_response_headers(conn.headers, via) if conn.hop_by_hop or via else conn.headers
            if proxy.draining:
                headers.append((b"connection", b"close"))
            line = _STATUS_LINE.get(status)
            head = (
                _response_head(line, protocol.server_state.default_headers, headers, self.keep_alive, True)
                if line is not None
                else None
            )
            if head is None or head[1] is not False or head[2] != conn.queued:
                # Not as uvicorn's own writer would frame it here: the app's `send` decides.
                self.hand_over()
                return
            data, _, _, keep_alive = head
            body = conn.take_body() or b""
            self._pool.release(conn)  # back in the pool before the client is written to
            responded = _perf()
            self.response_started = True
            transport.write(data + body if body else data)
            self._finish()
            record = self.record
            if record is not None:
                capture, weight, payload_weight, ids, start_ns, started = record
                capture.offer_whole(
                    self._scope, weight, payload_weight, ids, start_ns, started, self._body, status, headers,
                    responded, body, responded,
                )  # fmt: skip
            if not keep_alive:
                transport.close()
            protocol.on_response_complete()
        except Exception:
            self._broken("respond")

    def _broken(self, where: str) -> None:
        """A defect here, wherever the exchange stood: the client connection is cut (a failure,
        never a hang) and the upstream call with it."""
        self._direct._failed(where)
        self._finish()
        conn = self._conn
        conn.on_response = None
        conn.abort()
        self._pool.release(conn)
        transport = self._protocol.transport
        if not transport.is_closing():
            transport.abort()

    def _finish(self) -> None:
        self._done = True
        self.response_complete = True
        self._uncount()

    def _uncount(self) -> None:
        """No longer in flight here (once, whatever ends the exchange)."""
        in_flight = self._direct.in_flight
        if self in in_flight:
            in_flight.discard(self)
            self._direct._proxy.inflight -= 1

    def hand_over(self) -> None:
        """Give the exchange to the app where it stands: it waits for the response on the same
        connection (or replays the request), answers, and the capture records it."""
        if self._done:
            return
        self._done = True
        direct = self._direct
        self._uncount()  # the app counts it again, past its in-flight bound
        conn = self._conn
        conn.on_response = None
        forwarded = Forwarded(conn, self._pool, self._head, self._body)
        record = self.record
        app: Any
        if record is None:
            app = direct._proxy
        else:
            capture, weight, payload_weight, ids, start_ns, started = record

            def app(scope: Any, receive: Any, send: Any) -> Any:
                return capture.resume(scope, receive, send, weight, payload_weight, ids, start_ns, started)

        self._protocol.resume_in_app(self, self._scope, self._body, app, {FORWARDED_EXTENSION: forwarded})
