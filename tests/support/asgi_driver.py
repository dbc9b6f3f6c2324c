"""A scripted, in-process ASGI "server" for middleware tests.

The driver plays the server side of one HTTP request (or of the lifespan protocol) against an ASGI 3
application. Everything the server would normally get from a socket is scripted instead, and everything
the application does is recorded, so a test can run the same request with and without a middleware and
compare the exact message sequences the application received and sent.

Behaviour follows the ASGI HTTP spec 2.4 and uvicorn where the spec leaves room:

* ``receive()`` replays the scripted request messages, then blocks like a server waiting on an idle
  client until the client disconnects (or, optionally, until the response is complete, which is when
  uvicorn starts answering ``http.disconnect``).
* ``send()`` can model a vanished client either by raising ``OSError`` (spec 2.4) or by silently
  dropping messages (uvicorn >= 0.28.1), and by default rejects protocol violations with the same
  ``RuntimeError`` a real server raises, so a middleware that breaks the protocol fails its test.
* The application's exception is recorded, never propagated, and kept as the exact object raised.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
OnMessage = Callable[[Message], Awaitable[None] | None]
SendOutcome = Literal["delivered", "dropped", "raised", "rejected"]

__all__ = [
    "DEFAULT_TIMEOUT",
    "ASGIApp",
    "DriverResult",
    "DriverTimeoutError",
    "Headers",
    "LifespanResult",
    "Message",
    "OnMessage",
    "Receive",
    "RecordingSend",
    "Scope",
    "ScriptedReceive",
    "Send",
    "SendOutcome",
    "SentRecord",
    "http_request_messages",
    "make_http_scope",
    "make_lifespan_scope",
    "run_asgi",
    "run_asgi_async",
    "run_lifespan",
    "run_lifespan_async",
]

DEFAULT_TIMEOUT = 5.0
HTTP_ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
# The lifespan sub-protocol is versioned separately from HTTP; 2.0 is what uvicorn advertises.
LIFESPAN_ASGI_VERSION = {"version": "3.0", "spec_version": "2.0"}
# How long a cancelled (timed-out) app, or a lifespan app that has given its final answer, gets to unwind.
# Bounded so an app that swallows cancellation cannot turn a failing test into a hanging one.
_GRACE_SECONDS = 1.0
# How long a lifespan app may keep running after its final answer before the driver, like an exiting
# server, stops waiting for it. Well-behaved apps return (or raise) immediately after answering.
_LIFESPAN_EXIT_GRACE_SECONDS = 0.25
# Characters RFC 3986 allows unescaped in a path, so raw_path looks like what a client actually sends.
_PATH_SAFE = "/!$&'()*+,;=:@"
_BYTES_LIKE = (bytes, bytearray, memoryview)
# Extension messages that stand in for body messages; apps may send them only when the scope advertises
# the matching extension.
_BODY_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopy")


def _snapshot(value: Any) -> Any:
    """Copy the containers an app may keep mutating after handing a message over.

    Starlette's ``MutableHeaders`` appends to a message's header list in place, and apps reuse
    ``bytearray`` buffers, so a record that shared those objects could change after the fact. Immutable
    leaves (str, bytes, int, None, ...) and foreign objects are shared as they are.
    """
    if isinstance(value, dict):
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_snapshot(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_snapshot(item) for item in value)
    if isinstance(value, bytearray):
        return bytearray(value)
    if isinstance(value, memoryview):
        # A view's exporter may be rewritten later; keep the type but pin the bytes seen right now.
        return memoryview(value.tobytes())
    return value


def _copy_message(message: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _snapshot(item) for key, item in message.items()}


def _header_list(headers: Any) -> Headers:
    """Header pairs as a list of ``(bytes, bytes)`` tuples, whatever iterable of pairs the app used."""
    return [(bytes(name), bytes(value)) for name, value in headers]


def _well_formed_headers(headers: Any) -> Headers:
    """The ``(bytes, bytes)`` pairs among ``headers``, skipping malformed ones instead of raising.

    Used on messages that were delivered without validation (``strict=False``), where the driver must
    still be able to summarise the response rather than crash.
    """
    pairs: Headers = []
    try:
        items = list(headers or [])
    except TypeError:
        return pairs
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            name, value = item
            if isinstance(name, _BYTES_LIKE) and isinstance(value, _BYTES_LIKE):
                pairs.append((bytes(name), bytes(value)))
    return pairs


def _headers_problem(headers: Any) -> str | None:
    if headers is None:
        return None
    try:
        pairs = list(headers)
    except TypeError:
        return f"ASGI headers must be an iterable of [name, value] pairs, got {type(headers).__name__}."
    for pair in pairs:
        try:
            name, value = pair
        except (TypeError, ValueError):
            return f"ASGI header {pair!r} is not a [name, value] pair."
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            return f"ASGI header {pair!r} must be a pair of byte strings."
    return None


def make_http_scope(
    method: str = "POST",
    path: str = "/predict",
    headers: Iterable[tuple[bytes, bytes]] | None = None,
    query_string: bytes = b"",
    root_path: str = "",
    client: tuple[str, int] | None = ("127.0.0.1", 5000),
    server: tuple[str, int | None] | None = ("127.0.0.1", 8000),
    scheme: str = "http",
    http_version: str = "1.1",
    extensions: Mapping[str, Mapping[str, Any]] | None = None,
    state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build an ASGI 3 / HTTP spec 2.4 ``http`` scope with every key a server provides.

    ``headers=None`` means a single ``content-type: application/json`` header; pass ``[]`` for none.
    Header names are used exactly as given so tests can probe how a middleware treats unusual casing.
    ``path`` is the decoded request path relative to ``root_path``; as uvicorn does, the scope's
    ``path`` and ``raw_path`` carry the ``root_path`` prefix (Starlette strips it again for routing).
    ``extensions`` is only added when given, because uvicorn's HTTP/1.1 scopes have none.
    """
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
        raise ValueError(f"root_path must start and not end with '/', got {root_path!r}")
    header_list = [(b"content-type", b"application/json")] if headers is None else _header_list(headers)
    full_path = root_path + path
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": dict(HTTP_ASGI_VERSION),
        "http_version": http_version,
        "method": method.upper(),
        "scheme": scheme,
        "path": full_path,
        "raw_path": urllib.parse.quote(full_path, safe=_PATH_SAFE).encode("ascii"),
        "query_string": bytes(query_string),
        "root_path": root_path,
        "headers": header_list,
        "client": client,
        "server": server,
        # Servers hand every request a shallow copy of the lifespan state.
        "state": dict(state) if state is not None else {},
    }
    if extensions is not None:
        scope["extensions"] = {name: dict(options) for name, options in extensions.items()}
    return scope


def make_lifespan_scope(state: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build the ``lifespan`` scope a server opens once at startup."""
    return {
        "type": "lifespan",
        "asgi": dict(LIFESPAN_ASGI_VERSION),
        "state": dict(state) if state is not None else {},
    }


def http_request_messages(body: bytes = b"", chunk_size: int | None = None) -> list[Message]:
    """Split a request body into the ``http.request`` messages a server would deliver.

    Always at least one message, and only the last has ``more_body`` False, as the spec requires.
    """
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    step = chunk_size or max(len(body), 1)
    chunks = [body[start : start + step] for start in range(0, len(body), step)] or [b""]
    return [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]


class ScriptedReceive:
    """ASGI ``receive`` that replays a script of request messages, then waits like a real server.

    Messages are returned in order (as copies, so an app mutating them cannot alter the script or the
    record). Once the script is exhausted, the call blocks until :meth:`disconnect` is called, or, with
    ``disconnect_after_response=True``, until the driver reports the response complete, which is when
    uvicorn starts answering ``http.disconnect``. ``disconnect_at=i`` makes call number ``i`` (0-based)
    return ``http.disconnect`` instead of script message ``i``; the rest of the script is never
    delivered, since a real client that went away sends no more body. After a disconnect every later call
    returns ``http.disconnect`` again, as servers do.

    ``calls`` counts how often the app awaited ``receive`` (including a call still blocked or cancelled);
    ``received`` records every message actually returned. One instance serves one request on one event
    loop.
    """

    def __init__(
        self,
        messages: Iterable[Message] = (),
        *,
        disconnect_at: int | None = None,
        disconnect_after_response: bool = False,
    ) -> None:
        self._script = [_copy_message(message) for message in messages]
        if disconnect_at is not None and not 0 <= disconnect_at <= len(self._script):
            # Past the end the call before it would block forever, so the disconnect could never happen.
            raise ValueError(f"disconnect_at must be within 0..{len(self._script)}, got {disconnect_at}")
        self._disconnect_at = disconnect_at
        self._disconnect_after_response = disconnect_after_response
        self._position = 0
        self._disconnected = False
        self._response_complete = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0
        self.received: list[Message] = []

    @property
    def disconnected(self) -> bool:
        """Whether the client is (scripted to be) gone."""
        return self._disconnected

    @property
    def script(self) -> list[Message]:
        """A copy of the scripted messages."""
        return [_copy_message(message) for message in self._script]

    def disconnect(self) -> None:
        """Model the client going away: blocked and future calls return ``http.disconnect``.

        Safe to call from the event loop, from another thread (e.g. a sync iterator Starlette runs in a
        worker thread), or before the app starts.
        """
        self._disconnected = True
        self._notify()

    def response_completed(self) -> None:
        """Tell the receive side the response was fully sent (the driver calls this)."""
        self._response_complete = True
        if self._disconnect_after_response:
            self._notify()

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            # Nobody can be waiting yet; the flags are checked before any wait starts.
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    def _client_gone(self) -> bool:
        return self._disconnected or (self._disconnect_after_response and self._response_complete)

    async def __call__(self) -> Message:
        self.calls += 1
        self._loop = asyncio.get_running_loop()
        if self._disconnect_at is not None and self._position >= self._disconnect_at:
            self._disconnected = True
        if not self._disconnected and self._position < len(self._script):
            message: Message = self._script[self._position]
            self._position += 1
        else:
            # Both conditions only ever turn true, so the event never needs clearing.
            while not self._client_gone():
                await self._wake.wait()
            self._disconnected = True
            message = {"type": "http.disconnect"}
        self.received.append(_copy_message(message))
        return _copy_message(message)


@dataclass(frozen=True)
class SentRecord:
    """One call the app made to ``send``: a snapshot of the message, when it arrived, what became of it.

    ``outcome`` is ``delivered`` (reached the client), ``dropped`` (``noop_after``), ``raised``
    (``raise_after``: the app got ``OSError``) or ``rejected`` (protocol violation: the app got
    ``RuntimeError``).
    """

    message: Message
    at: float
    outcome: SendOutcome


class RecordingSend:
    """ASGI ``send`` that records every message with its ``time.perf_counter()`` arrival time.

    Options model a client that went away: with ``raise_after=k`` the first ``k`` calls succeed and every
    later call raises ``OSError("client disconnected")`` (ASGI spec 2.4); with ``noop_after=k`` later
    calls return silently and are dropped (uvicorn >= 0.28.1). ``on_message`` is called (and awaited if it
    returns an awaitable, e.g. to model a slow client) with a copy of every message, whatever its outcome,
    before any error is raised into the app.

    With ``strict=True`` (the default) delivered messages must follow the HTTP response protocol the way
    uvicorn enforces it: start first, then body until ``more_body`` is false, a body matching any
    ``content-length``, nothing after completion, and extension messages only when the scope advertises
    them. Violations raise ``RuntimeError`` into the app, as a real server would.
    """

    def __init__(
        self,
        *,
        raise_after: int | None = None,
        noop_after: int | None = None,
        on_message: OnMessage | None = None,
        strict: bool = True,
    ) -> None:
        for name, value in (("raise_after", raise_after), ("noop_after", noop_after)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.raise_after = raise_after
        self.noop_after = noop_after
        self.on_message = on_message
        self.strict = strict
        self.records: list[SentRecord] = []
        self.response_started = False
        self.response_complete = False
        self.response_completed_at: float | None = None
        self._method = "GET"
        self._extensions: Mapping[str, Any] = {}
        self._trailers_expected = False
        self._body_finished = False
        self._remaining_length: int | None = None

    def attach(self, scope: Scope) -> None:
        """Learn the request method and advertised extensions (the driver calls this before the app runs)."""
        self._method = str(scope.get("method", "GET")).upper()
        self._extensions = scope.get("extensions") or {}

    @property
    def messages(self) -> list[Message]:
        """Every message the app sent, whether or not it reached the client."""
        return [record.message for record in self.records]

    @property
    def delivered(self) -> list[Message]:
        """The messages that reached the (modelled) client."""
        return [record.message for record in self.records if record.outcome == "delivered"]

    @property
    def times(self) -> list[float]:
        """Arrival time of each message in :attr:`messages`."""
        return [record.at for record in self.records]

    @property
    def client_gone(self) -> bool:
        """Whether a send has already found the client gone."""
        return any(record.outcome in ("dropped", "raised") for record in self.records)

    async def __call__(self, message: Message) -> None:
        at = time.perf_counter()
        snapshot = _copy_message(message)
        index = len(self.records)
        problem: str | None = None
        outcome: SendOutcome
        if self.raise_after is not None and index >= self.raise_after:
            outcome = "raised"
        elif self.noop_after is not None and index >= self.noop_after:
            outcome = "dropped"
        else:
            problem = self._protocol_problem(snapshot) if self.strict else None
            outcome = "rejected" if problem is not None else "delivered"
        self.records.append(SentRecord(snapshot, at, outcome))
        if outcome == "delivered":
            self._advance(snapshot, at)
        if self.on_message is not None:
            maybe_awaitable = self.on_message(_copy_message(snapshot))
            if inspect.isawaitable(maybe_awaitable):
                await maybe_awaitable
        if outcome == "raised":
            raise OSError("client disconnected")
        if problem is not None:
            raise RuntimeError(problem)

    def _advertised(self, message_type: str) -> bool:
        return message_type in self._extensions

    def _protocol_problem(self, message: Mapping[str, Any]) -> str | None:
        """Why a real server would reject this message next, or None if it is acceptable."""
        message_type = message.get("type")
        if not isinstance(message_type, str):
            return f"ASGI message has no string 'type': {message!r}"
        if self.response_complete:
            return f"Unexpected ASGI message '{message_type}' sent, after response already completed."
        # Server push may interleave anywhere before completion; early hints only precede the start.
        if message_type == "http.response.push" and self._advertised(message_type):
            return None
        if message_type == "http.response.early_hint" and not self.response_started:
            return None if self._advertised(message_type) else "Unadvertised ASGI extension 'early_hint'."
        if not self.response_started:
            if message_type != "http.response.start":
                return f"Expected ASGI message 'http.response.start', but got '{message_type}'."
            return self._start_problem(message)
        if self._body_finished:
            if message_type != "http.response.trailers":
                return f"Expected ASGI message 'http.response.trailers', but got '{message_type}'."
            return _headers_problem(message.get("headers"))
        if message_type == "http.response.body":
            return self._body_problem(message)
        if message_type in _BODY_EXTENSIONS and self._advertised(message_type):
            return None
        return f"Expected ASGI message 'http.response.body', but got '{message_type}'."

    def _start_problem(self, message: Mapping[str, Any]) -> str | None:
        status = message.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
            return f"ASGI 'http.response.start' needs an integer status, got {status!r}."
        problem = _headers_problem(message.get("headers"))
        if problem is not None:
            return problem
        if message.get("trailers") and not self._advertised("http.response.trailers"):
            return "ASGI 'http.response.start' asked for trailers the server did not advertise."
        return None

    def _body_problem(self, message: Mapping[str, Any]) -> str | None:
        body = message.get("body", b"")
        if not isinstance(body, _BYTES_LIKE):
            return f"ASGI 'http.response.body' body must be bytes, got {type(body).__name__}."
        if not isinstance(message.get("more_body", False), bool):
            return "ASGI 'http.response.body' more_body must be a bool."
        if self._remaining_length is not None and self._method != "HEAD":
            sent = len(body)
            if sent > self._remaining_length:
                return "Response content longer than Content-Length"
            if not message.get("more_body", False) and sent != self._remaining_length:
                return "Response content shorter than Content-Length"
        return None

    def _advance(self, message: Mapping[str, Any], at: float) -> None:
        """Move the response state machine on for a delivered message (tolerant of malformed ones)."""
        message_type = message.get("type")
        if message_type == "http.response.start":
            self.response_started = True
            self._trailers_expected = bool(message.get("trailers", False))
            for name, value in _well_formed_headers(message.get("headers")):
                if name.lower() == b"content-length":
                    try:
                        self._remaining_length = int(value)
                    except (TypeError, ValueError):
                        self._remaining_length = None
        elif message_type in ("http.response.body", "http.response.zerocopy"):
            body = message.get("body", b"")
            if self._remaining_length is not None and isinstance(body, _BYTES_LIKE):
                self._remaining_length -= len(body)
            if not message.get("more_body", False):
                self._finish_body(at)
        elif message_type == "http.response.pathsend":
            self._finish_body(at)
        elif message_type == "http.response.trailers" and not message.get("more_trailers", False):
            self._complete(at)

    def _finish_body(self, at: float) -> None:
        self._body_finished = True
        if not self._trailers_expected:
            self._complete(at)

    def _complete(self, at: float) -> None:
        self.response_complete = True
        self.response_completed_at = at


@dataclass(frozen=True)
class DriverResult:
    """Both sides of one scripted request.

    ``sent`` is every message the app sent; ``delivered`` the subset that reached the client. ``status``,
    ``headers``, ``body`` and ``response_complete`` describe the response *as the client saw it* (built
    from ``delivered``; malformed header pairs, possible only with ``strict=False``, are left out).
    ``exception`` is the exact object the app raised, or None. Times are ``time.perf_counter()`` values:
    the app was called at ``started_at``, returned at ``finished_at``, and the response completed at
    ``response_completed_at`` (None if it never did).
    """

    scope: Scope
    sent: list[Message]
    delivered: list[Message]
    send_records: list[SentRecord]
    received: list[Message]
    receive_calls: int
    exception: BaseException | None
    status: int | None
    headers: Headers
    body: bytes
    response_complete: bool
    started_at: float
    response_completed_at: float | None
    finished_at: float

    @property
    def elapsed(self) -> float:
        """Seconds from calling the app to its return."""
        return self.finished_at - self.started_at

    @property
    def sent_types(self) -> list[str]:
        """The ``type`` of every sent message, the usual thing to compare between runs."""
        return [str(message.get("type")) for message in self.sent]

    @property
    def received_types(self) -> list[str]:
        """The ``type`` of every message the app received."""
        return [str(message.get("type")) for message in self.received]

    def header(self, name: bytes) -> bytes | None:
        """First value of a response header, matched case-insensitively, or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def _build_result(
    scope: Scope,
    receive: ScriptedReceive,
    recorder: RecordingSend,
    exception: BaseException | None,
    started_at: float,
    finished_at: float,
) -> DriverResult:
    delivered = recorder.delivered
    start = next((message for message in delivered if message.get("type") == "http.response.start"), None)
    status = start.get("status") if start is not None else None
    headers = _well_formed_headers(start.get("headers")) if start is not None else []
    body = b"".join(
        bytes(message.get("body", b""))
        for message in delivered
        if message.get("type") == "http.response.body" and isinstance(message.get("body", b""), _BYTES_LIKE)
    )
    return DriverResult(
        scope=scope,
        sent=recorder.messages,
        delivered=delivered,
        send_records=list(recorder.records),
        received=list(receive.received),
        receive_calls=receive.calls,
        exception=exception,
        status=status if isinstance(status, int) else None,
        headers=headers,
        body=body,
        response_complete=recorder.response_complete,
        started_at=started_at,
        response_completed_at=recorder.response_completed_at,
        finished_at=finished_at,
    )


class DriverTimeoutError(AssertionError):
    """The app did not finish within the driver's time box; ``result`` holds what happened until then.

    An ``AssertionError`` because a hung app is a test failure, not an error in the test itself.
    """

    def __init__(self, message: str, result: DriverResult | LifespanResult) -> None:
        super().__init__(message)
        self.result = result


async def _call_app(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    # An ASGI app may return any awaitable; a coroutine wrapper lets it run as a Task.
    await app(scope, receive, send)


async def _finish_within(task: asyncio.Task[None], timeout: float) -> bool:
    """Wait for ``task`` up to ``timeout``; on expiry cancel it and give it a bounded grace to unwind.

    ``asyncio.wait`` rather than ``asyncio.wait_for``: ``wait_for`` re-raises the app's own outcome, so
    an app raising ``TimeoutError`` (or ``CancelledError``) would be indistinguishable from the time box
    expiring, and on expiry it waits without limit for an app that ignores cancellation.
    """
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done:
        return True
    task.cancel()
    await asyncio.wait({task}, timeout=_GRACE_SECONDS)
    return False


def _task_exception(task: asyncio.Task[None], *, cancelled_by_driver: bool = False) -> BaseException | None:
    """The exception the app's task ended with; reading it also stops asyncio logging it as unretrieved.

    A cancellation the driver caused is not the app's exception. One the app raised by itself is reported
    as a fresh ``CancelledError``, since asyncio does not keep the original object.
    """
    if not task.done():
        return None
    if task.cancelled():
        return None if cancelled_by_driver else asyncio.CancelledError()
    return task.exception()


async def run_asgi_async(
    app: ASGIApp,
    scope: Scope,
    receive_messages: Iterable[Message] | ScriptedReceive | None = None,
    *,
    raise_after: int | None = None,
    noop_after: int | None = None,
    on_message: OnMessage | None = None,
    strict: bool = True,
    send: RecordingSend | None = None,
    disconnect_at: int | None = None,
    disconnect_after_response: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> DriverResult:
    """Run ``app`` for one HTTP request inside the running event loop; see :func:`run_asgi`."""
    if isinstance(receive_messages, ScriptedReceive):
        if disconnect_at is not None or disconnect_after_response:
            raise ValueError("configure disconnect options on the ScriptedReceive passed in")
        receive = receive_messages
    else:
        receive = ScriptedReceive(
            http_request_messages() if receive_messages is None else receive_messages,
            disconnect_at=disconnect_at,
            disconnect_after_response=disconnect_after_response,
        )
    if send is not None:
        if raise_after is not None or noop_after is not None or on_message is not None or not strict:
            raise ValueError("configure send options on the RecordingSend passed in")
        recorder = send
    else:
        recorder = RecordingSend(
            raise_after=raise_after, noop_after=noop_after, on_message=on_message, strict=strict
        )
    # The app gets its own copy: Starlette writes routing keys into the scope, and tests reuse one scope
    # for the runs they compare. ``result.scope`` is the copy as the app left it.
    app_scope: Scope = _copy_message(scope)
    recorder.attach(app_scope)

    async def server_send(message: Message) -> None:
        try:
            await recorder(message)
        finally:
            # A server learns the client is gone from a failed write; its receive() then reports it too.
            if recorder.client_gone:
                receive.disconnect()
            if recorder.response_complete:
                receive.response_completed()

    started_at = time.perf_counter()
    task = asyncio.ensure_future(_call_app(app, app_scope, receive, server_send))
    try:
        finished = await _finish_within(task, timeout)
    finally:
        # Only reached with the task still running if this coroutine itself was cancelled.
        if not task.done():
            task.cancel()
    finished_at = time.perf_counter()
    exception = _task_exception(task, cancelled_by_driver=not finished)
    result = _build_result(app_scope, receive, recorder, exception, started_at, finished_at)
    if not finished:
        raise DriverTimeoutError(
            f"ASGI app did not finish within {timeout}s (sent {result.sent_types}, "
            f"receive awaited {result.receive_calls} times, received {result.received_types})",
            result,
        )
    return result


def run_asgi(
    app: ASGIApp,
    scope: Scope,
    receive_messages: Iterable[Message] | ScriptedReceive | None = None,
    *,
    raise_after: int | None = None,
    noop_after: int | None = None,
    on_message: OnMessage | None = None,
    strict: bool = True,
    send: RecordingSend | None = None,
    disconnect_at: int | None = None,
    disconnect_after_response: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> DriverResult:
    """Run ``app`` for one scripted HTTP request in a fresh event loop and record everything.

    ``receive_messages`` is the request script (default: one empty ``http.request``) or a prepared
    :class:`ScriptedReceive`, e.g. one a test disconnects from an ``on_message`` callback. Send options
    (``raise_after``, ``noop_after``, ``on_message``, ``strict``) configure a :class:`RecordingSend`, or
    pass ``send=`` a prepared one. When a send finds the client gone (``raise_after``/``noop_after``),
    ``receive`` starts answering ``http.disconnect``, as a server's would.

    The app's exception is recorded in the result, never raised. If the app has not returned after
    ``timeout`` seconds it is cancelled and :class:`DriverTimeoutError` is raised.
    """
    return asyncio.run(
        run_asgi_async(
            app,
            scope,
            receive_messages,
            raise_after=raise_after,
            noop_after=noop_after,
            on_message=on_message,
            strict=strict,
            send=send,
            disconnect_at=disconnect_at,
            disconnect_after_response=disconnect_after_response,
            timeout=timeout,
        )
    )


class LifespanResult(list[Message]):
    """The messages an app sent on the lifespan scope, in order, plus the rest of the story.

    A list so tests can compare it directly with the expected messages. ``received`` is what the driver
    sent the app, ``exception`` the exact object the app raised (apps without lifespan support raise),
    ``state`` the lifespan ``scope["state"]`` after the run (what Starlette lifespans yield lands here),
    and ``abandoned`` tells whether the app was still running after its final answer and was cancelled,
    which is what a server exiting does to it.
    """

    def __init__(
        self,
        sent: Iterable[Message],
        *,
        received: Sequence[Message],
        exception: BaseException | None,
        state: dict[str, Any],
        abandoned: bool,
    ) -> None:
        super().__init__(sent)
        self.received = list(received)
        self.exception = exception
        self.state = state
        self.abandoned = abandoned

    @property
    def types(self) -> list[str]:
        """The ``type`` of every message the app sent."""
        return [str(message.get("type")) for message in self]

    @property
    def startup_complete(self) -> bool:
        """Whether the app reported a successful startup."""
        return "lifespan.startup.complete" in self.types

    @property
    def startup_failed(self) -> bool:
        """Whether startup failed, by message or by raising before reporting success."""
        return "lifespan.startup.failed" in self.types or (
            self.exception is not None and not self.startup_complete
        )

    @property
    def failure_message(self) -> str | None:
        """The ``message`` of the first ``lifespan.*.failed`` the app sent, if any."""
        for message in self:
            if str(message.get("type")).endswith(".failed"):
                return str(message.get("message", ""))
        return None


_STARTUP_ANSWERS = ("lifespan.startup.complete", "lifespan.startup.failed")
_FINAL_ANSWERS = ("lifespan.startup.failed", "lifespan.shutdown.complete", "lifespan.shutdown.failed")


async def run_lifespan_async(
    app: ASGIApp,
    *,
    fail_startup: bool = False,
    state: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> LifespanResult:
    """Drive the lifespan protocol inside the running event loop; see :func:`run_lifespan`."""
    scope = make_lifespan_scope(state)
    sent: list[Message] = []
    received: list[Message] = []
    startup_answered = asyncio.Event()
    final_answer = asyncio.Event()
    receive_calls = 0

    async def receive() -> Message:
        nonlocal receive_calls
        receive_calls += 1
        message: Message
        if receive_calls == 1:
            message = {"type": "lifespan.startup"}
        else:
            # Shutdown is only requested once startup succeeded; after a failed startup (or a third
            # receive) a server sends nothing more, so the call blocks until the driver cancels it.
            await startup_answered.wait()
            if receive_calls != 2 or "lifespan.startup.complete" not in [m.get("type") for m in sent]:
                await asyncio.get_running_loop().create_future()
            message = {"type": "lifespan.shutdown"}
        received.append(dict(message))
        return message

    async def send(message: Message) -> None:
        sent.append(_copy_message(message))
        if message.get("type") in _STARTUP_ANSWERS:
            startup_answered.set()
        if message.get("type") in _FINAL_ANSWERS:
            final_answer.set()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    task = asyncio.ensure_future(_call_app(app, scope, receive, send))
    final_waiter = asyncio.ensure_future(final_answer.wait())
    abandoned = False
    timed_out = False
    try:
        await asyncio.wait({task, final_waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            if final_answer.is_set():
                # The app has said its last word; like a server exiting, give it a moment, then move on.
                remaining = max(deadline - loop.time(), 0.0)
                finished = await _finish_within(task, min(_LIFESPAN_EXIT_GRACE_SECONDS, remaining))
                abandoned = not finished
            else:
                # Time is up with no final answer: cancel the app (with the usual bounded grace).
                await _finish_within(task, 0.0)
                timed_out = True
    finally:
        final_waiter.cancel()
        if not task.done():
            task.cancel()
    exception = _task_exception(task, cancelled_by_driver=abandoned or timed_out)
    result = LifespanResult(
        sent, received=received, exception=exception, state=scope["state"], abandoned=abandoned
    )
    if timed_out:
        raise DriverTimeoutError(
            f"lifespan app did not answer within {timeout}s (sent {result.types}, received "
            f"{[m['type'] for m in received]})",
            result,
        )
    if fail_startup and not result.startup_failed:
        raise AssertionError(f"expected lifespan startup to fail, but the app sent {result.types}")
    return result


def run_lifespan(
    app: ASGIApp,
    *,
    fail_startup: bool = False,
    state: Mapping[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> LifespanResult:
    """Play a server's lifespan protocol against ``app`` in a fresh event loop.

    Sends ``lifespan.startup``; if the app answers ``lifespan.startup.complete`` it then sends
    ``lifespan.shutdown``. Returns the messages the app sent (a list, with ``exception``, ``received``,
    ``state`` and ``abandoned`` attributes). The app's exception is recorded, never raised.

    ``fail_startup=True`` declares that startup is expected to fail: the driver then raises
    ``AssertionError`` unless the app sent ``lifespan.startup.failed`` or raised before reporting success.
    Shutdown is never requested after a failed startup, whatever the flag says, because servers don't.
    """
    return asyncio.run(run_lifespan_async(app, fail_startup=fail_startup, state=state, timeout=timeout))
