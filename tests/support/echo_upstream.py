"""A real upstream for proxy tests: a Starlette app under uvicorn that records and echoes requests.

Every request that reaches the app is counted (thread-safe, readable from the test thread) and
answered with JSON: method, path, raw query, headers as a list in order, body length and sha256,
and `scope["client"]` and `scope["scheme"]` as uvicorn derived them. Run under uvicorn with
`proxy_headers=True` and `forwarded_allow_ips="127.0.0.1"`, `client` shows what uvicorn takes
from the `X-Forwarded-For` the sidecar (at 127.0.0.1) wrote. Every answer carries `x-echo: 1`,
so a response without it (and without `x-modeltap-error`) came from somewhere else, e.g.
uvicorn's own 400 for a request it could not parse (h11 by default: the stricter parser, so
anything malformed the sidecar lets through shows).

A request may ask for extra response headers with `x-echo-response-header: name: value`
(repeatable), and the app reads the body as a stream, so a request whose connection is closed
mid-body is recorded as started but `disconnected`, never `completed`.

Example::

    echo = EchoUpstream()
    with echo.serving() as upstream, running_sidecar(upstream) as sidecar:
        ...
        assert echo.count == 1
        assert echo.records[0].path == "/v1/models/m:predict"
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tests.support.servers import serve

ECHO_MARK = (b"x-echo", b"1")
RESPONSE_HEADER_REQUEST = "x-echo-response-header"


@dataclasses.dataclass
class EchoRecord:
    """One request as the upstream app saw it."""

    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[str, str]]
    client: tuple[str, int] | None
    scheme: str
    body_bytes: int = 0
    body_sha256: str = ""
    completed: bool = False
    disconnected: bool = False

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    @property
    def header_names(self) -> set[str]:
        return {key for key, _value in self.headers}


class EchoUpstream:
    """The recording echo app and a way to serve it (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[EchoRecord] = []
        self.app = Starlette()
        # Every request, whatever its method or target (even `*`), is echoed: no route can miss.
        self.app.router.default = self._default

    # ---- what was received -----------------------------------------------------------------

    @property
    def count(self) -> int:
        """Requests that reached the app (counted when their head arrived)."""
        with self._lock:
            return len(self._records)

    @property
    def records(self) -> list[EchoRecord]:
        with self._lock:
            return [dataclasses.replace(r) for r in self._records]

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    def wait_for(self, predicate: Callable[[list[EchoRecord]], bool], timeout_s: float = 3.0) -> bool:
        """Poll until `predicate(records)` holds; False at the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.records):
                return True
            time.sleep(0.01)
        return predicate(self.records)

    # ---- the app ---------------------------------------------------------------------------

    async def _default(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response = await self._echo(Request(scope, receive))
        await response(scope, receive, send)

    async def _echo(self, request: Request) -> Response:
        scope = request.scope
        client = scope.get("client")
        record = EchoRecord(
            method=request.method,
            path=scope["path"],
            raw_path=scope.get("raw_path") or b"",
            query=scope.get("query_string", b""),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            client=(str(client[0]), int(client[1])) if client else None,
            scheme=scope.get("scheme", ""),
        )
        with self._lock:
            self._records.append(record)
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in request.stream():
                digest.update(chunk)
                size += len(chunk)
        except ClientDisconnect:
            with self._lock:
                record.disconnected = True
            return Response(b"", status_code=499)  # nobody is left to read it
        with self._lock:
            record.body_bytes = size
            record.body_sha256 = digest.hexdigest()
            record.completed = True
        payload: dict[str, Any] = {
            "method": record.method,
            "path": record.path,
            "raw_path": record.raw_path.decode("latin-1"),
            "query": record.query.decode("latin-1"),
            "headers": record.headers,
            "client": list(record.client) if record.client else None,
            "scheme": record.scheme,
            "body_bytes": size,
            "body_sha256": record.body_sha256,
        }
        response = Response(json.dumps(payload).encode(), media_type="application/json")
        response.raw_headers.append(ECHO_MARK)
        for value in request.headers.getlist(RESPONSE_HEADER_REQUEST):
            name, _sep, field_value = value.partition(":")
            response.raw_headers.append((name.strip().lower().encode(), field_value.strip().encode()))
        return response

    # ---- serving ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def serving(
        self, *, proxy_headers: bool = True, forwarded_allow_ips: str = "127.0.0.1", http: str = "h11"
    ) -> Iterator[str]:
        """Run the app in a real uvicorn on 127.0.0.1 (ephemeral port); yields the base URL."""
        with serve_uvicorn(
            self.app, proxy_headers=proxy_headers, forwarded_allow_ips=forwarded_allow_ips, http=http
        ) as url:
            yield url


@contextlib.contextmanager
def serve_uvicorn(
    app: Any, *, proxy_headers: bool, forwarded_allow_ips: str, http: str = "h11", name: str = "echo-upstream"
) -> Iterator[str]:
    """`tests.support.servers.serve` with the X-Forwarded-* trust settings exposed."""
    with serve(
        app,
        name,
        lifespan="off",
        http=http,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
    ) as url:
        yield url
