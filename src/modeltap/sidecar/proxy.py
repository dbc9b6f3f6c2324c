"""The proxy itself: a pure-ASGI app that forwards each request to the one configured upstream.

It is wrapped in `ModelTapMiddleware` like any user app, so the sidecar and the middleware share
one capture path. Requests and responses stream both ways; small exchanges (the common case for
inference) take a fast path of one write upstream and one body message downstream.

Failure semantics (RELIABILITY.md A1-A15): connect failure, reset before headers and invalid
responses answer 502, deadlines 504, overload 503 with Retry-After, each with an
`x-modeltap-error` code; after the response started, the client connection is aborted.

Replays follow Go's net/http Transport (`shouldRetryRequest`): a request is sent once more, on a
new connection, only when it went out on a reused connection that ended (EOF or reset) before a
byte of a response came back, and either nothing of it was written or it is replayable: GET,
HEAD, OPTIONS or TRACE, or an `Idempotency-Key` / `X-Idempotency-Key` header, with the body held
in full (not streamed). PUT and DELETE without a key are not replayed. Each replay is counted.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from modeltap._types import Message, Receive, Scope, Send
from modeltap.guarded.codes import ProxyError, error_response
from modeltap.guarded.protocol import CONNECTION_EXTENSION, ConnectionHandle
from modeltap.records import PROXY_ERROR_KEY
from modeltap.sidecar.headers import (
    TrustedPeers,
    compiled_request_head,
    request_head,
    rewrite_response_headers,
)
from modeltap.sidecar.route import UpstreamRoute
from modeltap.sidecar.upstream import UpstreamConnection, UpstreamPool

_log = logging.getLogger("modeltap.sidecar")
# Where OpenTelemetry keeps the current context by default (its runtime context is configurable:
# with another one, the span is asked for through the API each time).
_CONTEXT_VAR: contextvars.ContextVar[Any] | None = getattr(
    getattr(otel_context, "_RUNTIME_CONTEXT", None), "_current_context", None
)
if not isinstance(_CONTEXT_VAR, contextvars.ContextVar):
    _CONTEXT_VAR = None
# A request the direct path forwarded before handing it to the app (`Forwarded`), in the scope's
# extensions: the app goes on from waiting for its response.
FORWARDED_EXTENSION = "modeltap.forwarded"
_REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_IDEMPOTENCY_KEYS = frozenset({b"idempotency-key", b"x-idempotency-key"})


class Forwarded(NamedTuple):
    """A request already written upstream on `conn` (held, from `pool`), as `head` and `body`."""

    conn: UpstreamConnection
    pool: UpstreamPool
    head: bytes
    body: bytes


@dataclass(frozen=True)
class ProxyLimits:
    response_timeout_s: float = 60.0
    idle_timeout_s: float = 30.0
    max_request_body_bytes: int = 64 * 1024 * 1024
    max_inflight: int = 1024
    via: bytes | None = None


class ProxyApp:
    """Forward every HTTP request to the upstream of `pool` (or of a route: the upstream or, after
    a rollback, the fallback); see the module docstring.

    Example::

        pool = UpstreamPool("127.0.0.1", 8080, connect_timeout_s=5, keepalive_expiry_s=4,
                            max_idle=256, max_header_bytes=64 * 1024)
        app = ModelTapMiddleware(ProxyApp(pool, ProxyLimits(), TrustedPeers([]), counter))
    """

    def __init__(
        self,
        pool: UpstreamPool | UpstreamRoute,
        limits: ProxyLimits,
        trusted: TrustedPeers,
        count_error: Callable[[str], None],
        count_retry: Callable[[], None] | None = None,
    ) -> None:
        self.route = pool if isinstance(pool, UpstreamRoute) else UpstreamRoute(pool)
        self.limits = limits
        self.trusted = trusted
        self._count_error = count_error
        self._count_retry = count_retry
        self.inflight = 0
        self.draining = False
        self._compiled_head = compiled_request_head()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self.inflight >= self.limits.max_inflight and not _forwarded(scope):
                await self._answer_error(scope, send, ProxyError("overloaded", "too many requests in flight"))
                return
            self.inflight += 1
            try:
                await self._forward(scope, receive, send)
            finally:
                self.inflight -= 1
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.route.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- one request -----------------------------------------------------------------------

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = scope.get("extensions")
        handle: ConnectionHandle | None = extensions.get(CONNECTION_EXTENSION) if extensions else None
        forwarded = _forwarded(scope)
        if handle is not None and handle.client_gone:
            # Rejected by the protocol (or the client left) while this task was being scheduled.
            if forwarded is not None:
                forwarded.conn.abort()
                forwarded.pool.release(forwarded.conn)
            self._note_client_gone(scope)
            return
        if forwarded is not None:
            if forwarded.body:
                await receive()  # already sent upstream; read so that capture sees it, as ever
            await self._go_on(
                scope, receive, send, handle, forwarded.pool, forwarded.head, forwarded.body, False, False,
                forwarded.conn,
            )  # fmt: skip
            return
        limits = self.limits
        client = scope.get("client")
        # The request stays with the upstream current now, whatever the route does meanwhile.
        route = self.route
        pool, default_host = route.pool, route.default_host
        arguments = (
            scope["headers"], client[0] if client else None, scope.get("scheme", "http"), self.trusted,
            default_host, limits.via,
        )  # fmt: skip
        try:
            compiled_head = self._compiled_head
            head = compiled_head(*arguments) if compiled_head is not None else None
            if head is None:
                head = request_head(*arguments)
        except ValueError:
            await self._answer_error(scope, send, ProxyError("invalid_request", "invalid Content-Length"))
            return
        fields, content_length, chunked, _, traceparent_index = head
        if content_length is not None and content_length > limits.max_request_body_bytes:
            # Before reading anything: with `Expect: 100-continue` the client never sends the body.
            await self._answer_error(
                scope, send, ProxyError("request_body_too_large", "request body too large")
            )
            return
        _inject_traceparent(fields, traceparent_index)
        method: str = scope["method"]
        target: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        if query:
            target += b"?" + query
        start_line = b"%s %s HTTP/1.1\r\n" % (method.encode(), target)

        body = b""
        more_body = False
        if chunked or content_length:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._note_client_gone(scope)
                return
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            if len(body) > limits.max_request_body_bytes:
                await self._answer_error(
                    scope, send, ProxyError("request_body_too_large", "request body too large")
                )
                return
        if not more_body:
            framing = (
                b"content-length: %d\r\n\r\n" % len(body) if body or content_length is not None else b"\r\n"
            )
        elif content_length is not None:
            framing = b"content-length: %d\r\n\r\n" % content_length
        else:
            framing = b"transfer-encoding: chunked\r\n\r\n"
        upstream_head = start_line + b"".join(fields) + framing
        await self._go_on(scope, receive, send, handle, pool, upstream_head, body, more_body, chunked, None)

    async def _go_on(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        handle: ConnectionHandle | None,
        pool: UpstreamPool,
        upstream_head: bytes,
        body: bytes,
        more_body: bool,
        chunked: bool,
        forwarded: UpstreamConnection | None,
    ) -> None:
        """Send the request (unless `forwarded` carries it already) and answer the client."""
        conn: UpstreamConnection | None = None
        responding = False
        try:
            conn = await self._exchange(
                scope, receive, handle, pool, upstream_head, body, more_body, chunked, forwarded
            )
            if conn is None:
                return  # answered already (client gone, body too large)
            responding = True
            await self._respond(scope, send, pool, conn, handle)
            conn = None
        except ProxyError as error:
            if conn is not None:
                conn.abort()
                pool.release(conn)
                conn = None
            await self._fail(scope, send, handle, error)
        except asyncio.CancelledError:
            if not self.draining or handle is None:
                raise
            # The drain deadline passed with this request in flight (uvicorn cancels it): answer
            # 503 draining if nothing was sent yet, else abort the client connection; never
            # uvicorn's 500 and its traceback, never a shorter body that looks complete.
            if responding:
                self.note(scope, "draining")
                handle.abort()
            else:
                await self._fail(scope, send, handle, ProxyError("draining", "shutting down: drain timeout"))
        finally:
            if conn is not None:  # cancelled (shutdown) or an unexpected error: never pool it
                conn.abort()
                pool.release(conn)

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        handle: ConnectionHandle | None,
        pool: UpstreamPool,
        upstream_head: bytes,
        body: bytes,
        more_body: bool,
        chunked: bool,
        forwarded: UpstreamConnection | None = None,
    ) -> UpstreamConnection | None:
        """Send the request and wait for the response headers; the connection is returned held.
        `forwarded`: the request was written on that (pooled) connection already."""
        limits = self.limits
        replayed = False
        while True:
            written = forwarded is not None
            if forwarded is not None:
                taken: UpstreamConnection | None = forwarded
                forwarded = None
            else:
                # A pooled connection without a coroutine step (the usual case), else a new one.
                taken = None if replayed else pool.take_idle()
            reused = taken is not None
            conn = taken if taken is not None else await pool.open_held()
            try:
                if written:
                    pass  # by the direct path: wait for its answer (a replay writes it again)
                elif more_body:
                    conn.send_request(upstream_head, b"", False)
                    if not await self._stream_body(scope, receive, conn, body, chunked):
                        pool.release(conn)
                        return None
                else:
                    conn.send_request(upstream_head, body, scope["method"] == "HEAD")
                if handle is not None:
                    handle.on_lost = conn.abort_client_gone
                try:
                    await conn.response_headers(limits.response_timeout_s, limits.idle_timeout_s)
                finally:
                    if handle is not None:
                        handle.on_lost = None
                return conn
            except ProxyError as error:
                pool.release(conn)
                if (
                    not replayed
                    and reused
                    and error.code == "upstream_reset_before_response_started"
                    and not conn.answered
                    and (conn.unsent or (not more_body and _replayable(scope)))
                    and not (handle is not None and handle.client_gone)
                ):
                    replayed = True  # once, on a new connection
                    if self._count_retry is not None:
                        self._count_retry()
                    continue
                raise
            except BaseException:
                conn.abort()
                pool.release(conn)
                raise

    async def _stream_body(
        self, scope: Scope, receive: Receive, conn: UpstreamConnection, first: bytes, chunked: bool
    ) -> bool:
        """Forward a request body as it arrives; False if the exchange ended here (answered)."""
        limit = self.limits.max_request_body_bytes
        total = len(first)
        if first:
            conn.write(b"%x\r\n%s\r\n" % (len(first), first) if chunked else first)
        more = True
        while more:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                conn.abort()
                self._note_client_gone(scope)
                return False
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            total += len(chunk)
            if total > limit:
                conn.abort()
                raise ProxyError("request_body_too_large", "request body too large")
            if chunk:
                conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")
        return True

    async def _respond(
        self,
        scope: Scope,
        send: Send,
        pool: UpstreamPool,
        conn: UpstreamConnection,
        handle: ConnectionHandle | None,
    ) -> None:
        via = self.limits.via
        # Names come lower-cased from the connection; most responses have nothing to rewrite.
        headers = rewrite_response_headers(conn.headers, via) if conn.hop_by_hop or via else conn.headers
        if conn.status in (204, 304):
            # No body follows, whatever Content-Length says (RFC 9110 8.6); uvicorn would raise
            # "Response content shorter than Content-Length" and drop the connection.
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        if self.draining:
            headers.append((b"connection", b"close"))  # move keep-alive clients to other replicas
        start = {"type": "http.response.start", "status": conn.status, "headers": headers}
        if conn.complete:
            body = conn.take_body() or b""
            pool.release(conn)  # back in the pool before the client is written to
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await send(start)
        try:
            if handle is not None:
                handle.on_lost = conn.abort_client_gone
            while True:
                chunk = await conn.next_body()
                if chunk is None:
                    break
                if handle is not None and handle.client_gone:
                    conn.abort()
                    self._note_client_gone(scope)
                    pool.release(conn)
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ProxyError as error:
            if error.code == "client_disconnected":
                self._note_client_gone(scope)
                pool.release(conn)
                return
            pool.release(conn)
            # Headers are out: the only honest signal left is an unfinished response.
            code = (
                error.code
                if error.code == "upstream_idle_timeout"
                else "upstream_reset_after_response_started"
            )
            self.note(scope, code)
            if handle is not None:
                handle.abort()
                return
            raise
        finally:
            if handle is not None:
                handle.on_lost = None
        pool.release(conn)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # ---- errors ----------------------------------------------------------------------------

    def note(self, scope: Scope, code: str) -> None:
        """File `code` as the exchange's proxy error and count it."""
        scope[PROXY_ERROR_KEY] = code
        self._count_error(code)

    def _note_client_gone(self, scope: Scope) -> None:
        extensions = scope.get("extensions")
        handle: ConnectionHandle | None = extensions.get(CONNECTION_EXTENSION) if extensions else None
        if handle is not None and handle.rejected is not None:
            # The protocol cut the request off (e.g. 408 body timeout) and counted it already:
            # one failure, one count, under its own code.
            scope[PROXY_ERROR_KEY] = handle.rejected
            return
        self.note(scope, "client_disconnected")

    async def _fail(
        self, scope: Scope, send: Send, handle: ConnectionHandle | None, error: ProxyError
    ) -> None:
        if error.code == "client_disconnected" or (handle is not None and handle.client_gone):
            self._note_client_gone(scope)
            return
        await self._answer_error(scope, send, error)

    async def _answer_error(self, scope: Scope, send: Send, error: ProxyError) -> None:
        self.note(scope, error.code)
        close = error.code in ("request_body_too_large", "invalid_request") or self.draining
        status, headers, body = error_response(error.code, str(error), close=close)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _forwarded(scope: Scope) -> Forwarded | None:
    extensions = scope.get("extensions")
    forwarded: Forwarded | None = extensions.get(FORWARDED_EXTENSION) if extensions else None
    return forwarded


def _replayable(scope: Scope) -> bool:
    """Go's `Request.isReplayable` (the body is held in full when this is asked)."""
    if scope["method"] in _REPLAYABLE_METHODS:
        return True
    return any(name in _IDEMPOTENCY_KEYS for name, _ in scope["headers"])


def _inject_traceparent(fields: list[bytes], index: int) -> None:
    """Continue the trace upstream: the exchange's span (when sampled) becomes the parent."""
    if _CONTEXT_VAR is not None and not _CONTEXT_VAR.get(None):
        return  # an empty context (no span: this exchange is not sampled), read without a call
    span: Any = otel_trace.get_current_span()
    context = span.get_span_context()
    if not context.is_valid:
        return  # not sampled: the client's own traceparent (if any) passes through unchanged
    line = b"traceparent: 00-%032x-%016x-%02x\r\n" % (context.trace_id, context.span_id, context.trace_flags)
    if index >= 0:
        fields[index] = line
    else:
        fields.insert(0, line)
