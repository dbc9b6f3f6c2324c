"""`GET {prefix}/status` and `{prefix}/metrics` on the application's own port.

Loopback clients only unless a token or an allow-list says otherwise, since the numbers describe
the model's traffic; a request that carries a forwarding header is never taken for a loopback
client, since it came through a proxy (whose peer address may be loopback, or rewritten from the
header by the server). Served from the latest published snapshot, never computed on request.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson

from modeltap._types import Receive, Scope, Send
from modeltap.export import prometheus_text
from modeltap.export.status_json import feature_histogram, status_document
from modeltap.snapshot import Snapshot

# (status, headers, body) of a view rendered elsewhere (the monitor process).
ViewAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]
# Labels in: (body, content type) -> (status, JSON answer); runs on a thread of its own.
FeedbackEndpoint = Callable[[bytes, str], tuple[int, bytes]]
# Any write endpoint (POST): the same shape. A read endpoint (GET): () -> (status, JSON answer).
WriteEndpoint = FeedbackEndpoint
ReadEndpoint = Callable[[], tuple[int, bytes]]
MAX_FEEDBACK_BYTES = 1024 * 1024
# POST endpoints (write access: the token, or the machine itself): labels and outcomes in, a fire drill, the
# sidecar's rollback switch. GET endpoints beside the views: the last fire drill's report.
WRITE_PATHS = frozenset({"/feedback", "/outcome", "/drill", "/rollback", "/rollback/cancel"})
READ_PATHS = frozenset({"/drill"})


class RemoteViews(Protocol):
    """Fetches a view from the monitor process (`handoff.views_client.MonitorViews`)."""

    def __call__(
        self, sub: str, query: bytes, method: str = "GET", body: bytes = b"", content_type: str = ""
    ) -> Awaitable[ViewAnswer]: ...


class LocalViews:
    """An ASGI endpoint for the views under `prefix`.

    The views are rendered from `snapshot` here, or, with `remote`, by the monitor process
    (`remote(sub_path, query)` fetches them; nothing is rendered on this event loop). Access is
    checked here either way; `trust_peer` skips the check where the transport itself is private
    (the monitor's views socket in a 0700 directory).

    Example::

        views = LocalViews("/modeltap", snapshot=tap.latest_snapshot, model_name="churn")
        if views.handles(scope):
            await views(scope, receive, send)
    """

    def __init__(
        self,
        prefix: str,
        snapshot: Callable[[], Snapshot],
        model_name: str | None = None,
        token: str | None = None,
        allow: tuple[str, ...] = (),
        *,
        remote: RemoteViews | None = None,
        trust_peer: bool = False,
        feedback: FeedbackEndpoint | None = None,
        writes: dict[str, WriteEndpoint] | None = None,
        reads: dict[str, ReadEndpoint] | None = None,
        open_to_all: bool = False,
    ) -> None:
        self._prefix = prefix
        # Every network may read (the sidecar's admin port with neither token nor allow-list),
        # but not a loopback reader that names another machine: a page rebound to this one.
        self._open_to_all = open_to_all
        self._slash_prefix = prefix + "/"
        self._snapshot = snapshot
        self._model_name = model_name
        self._token = token.encode() if token else None
        self._allow = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow)
        self.remote = remote
        self._trust_peer = trust_peer
        self.writes: dict[str, WriteEndpoint] = dict(writes or {})
        self.reads: dict[str, ReadEndpoint] = dict(reads or {})
        if feedback is not None:
            self.writes["/feedback"] = feedback

    @property
    def prefix(self) -> str:
        """The path prefix the views answer under ("/modeltap" by default)."""
        return self._prefix

    @property
    def feedback(self) -> FeedbackEndpoint | None:
        return self.writes.get("/feedback")

    @feedback.setter
    def feedback(self, endpoint: FeedbackEndpoint | None) -> None:
        if endpoint is None:
            self.writes.pop("/feedback", None)
        else:
            self.writes["/feedback"] = endpoint

    def handles(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if path.startswith(self._prefix):
            return path == self._prefix or path.startswith(self._slash_prefix)
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root) :]
            return path == self._prefix or path.startswith(self._slash_prefix)
        return False

    def _has_token(self, scope: Scope) -> bool:
        if self._token is None:
            return False
        for key, value in scope.get("headers", ()):
            # The scheme name is case-insensitive (RFC 9110 §11.1); the token is not.
            if (
                key == b"authorization"
                and value[:7].lower() == b"bearer "
                and hmac.compare_digest(value[7:].strip(), self._token)
            ):
                return True
        return False

    def _allowed(self, scope: Scope) -> bool:
        """Reading the views: the token, an allow-listed peer, or the machine itself."""
        if self._has_token(scope):
            return True
        address = _peer(scope)
        if address is None:
            return False
        if address.is_loopback and not _names_this_machine(scope):
            # A page rebound to this machine, whatever it adds (a forwarding header is no proof
            # of a proxy: a page's script can send one). A proxy on this machine that forwards
            # the public name needs the token.
            return False
        # An allow-listed network is served whatever name it uses (a proxy's, a service's).
        return self._open_to_all or _local(address, scope) or any(address in n for n in self._allow)

    def _write_allowed(self, scope: Scope) -> bool:
        """Write endpoints: the token, or the machine itself; an allow-list grants reading only
        (CLARIFICATIONS: writes never depend on forwarding headers)."""
        if self._has_token(scope):
            return True
        address = _peer(scope)
        return address is not None and _local(address, scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        sub = path[len(self._prefix) :]
        endpoint = sub.rstrip("/") if sub != "/" else sub
        method = scope.get("method")
        if endpoint in WRITE_PATHS and not (method in ("GET", "HEAD") and endpoint in READ_PATHS):
            await self._write(scope, receive, send, endpoint)
            return
        if not self._trust_peer and not self._allowed(scope):
            await _respond(send, 403, _FORBIDDEN, "text/plain; charset=utf-8")
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(
                send, 405, b"method not allowed\n", "text/plain; charset=utf-8", [(b"allow", b"GET")]
            )
            return
        head = scope.get("method") == "HEAD"
        remote = self.remote
        if remote is not None:
            status, headers, body = await remote(sub, scope.get("query_string", b""))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if head else body})
            return
        if endpoint in READ_PATHS:
            read = self.reads.get(endpoint)
            if read is None:
                await _respond(send, 404, b"not served here\n", "text/plain; charset=utf-8")
                return
            status, answer = read()
            await _respond(send, status, answer, "application/json", head=head)
            return
        if sub in ("", "/"):
            await _respond(
                send,
                200,
                _page(),
                "text/html; charset=utf-8",
                [(b"content-security-policy", _PAGE_CSP)],
                head=head,
            )
        elif sub in ("/status", "/status/"):
            snapshot = self._snapshot()
            document: Any = status_document(snapshot, self._model_name)
            feature = _query_value(scope.get("query_string", b""), "feature")
            if feature is not None:
                document["histogram"] = feature_histogram(snapshot, feature)
            body = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
            await _respond(send, 200, body, "application/json", head=head)
        elif sub in ("/metrics", "/metrics/"):
            text = prometheus_text.render(self._snapshot()).encode()
            await _respond(send, 200, text, prometheus_text.CONTENT_TYPE, head=head)
        else:
            await _respond(send, 404, b"not found\n", "text/plain; charset=utf-8")

    async def _write(self, scope: Scope, receive: Receive, send: Send, sub: str) -> None:
        text = "text/plain; charset=utf-8"
        if scope.get("method") != "POST":
            what = b"POST labels here" if sub == "/feedback" else b"POST here"
            await _respond(send, 405, b"method not allowed: " + what + b"\n", text, [(b"allow", b"POST")])
            return
        if not self._trust_peer:
            refusal = _FORBIDDEN_CROSS_SITE if _cross_site(scope) else None
            if refusal is None and not self._write_allowed(scope):
                refusal = _FORBIDDEN_WRITE
            if refusal is None and not self._has_token(scope) and not _names_this_machine(scope):
                refusal = _FORBIDDEN_HOST
            if refusal is not None:
                await _respond(send, 403, refusal, text)
                return
        content_type = ""
        declared = None
        for key, value in scope.get("headers", ()):
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"content-length" and value.strip().isdigit():
                declared = int(value)
        too_large = f"feedback bodies are limited to {MAX_FEEDBACK_BYTES} bytes; send several\n".encode()
        if declared is not None and declared > MAX_FEEDBACK_BYTES:
            await _respond(send, 413, too_large, text)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_FEEDBACK_BYTES:
                await _respond(send, 413, too_large, text)
                return
            if not message.get("more_body"):
                break
        if self.remote is not None:
            status, headers, answer = await self.remote(sub, b"", "POST", bytes(body), content_type)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": answer})
            return
        endpoint = self.writes.get(sub)
        if endpoint is None:
            await _respond(send, 404, f"{sub.lstrip('/')} is not served here\n".encode(), text)
            return
        loop = asyncio.get_running_loop()
        status, answer = await loop.run_in_executor(None, endpoint, bytes(body), content_type)
        await _respond(send, status, answer, "application/json")


# Headers a proxy adds on the way in: any of them means the peer address is not the client's.
FORWARDING_HEADERS = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-server",
        b"x-original-forwarded-for",
        b"x-real-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"via",
    }
)

_FORBIDDEN = (
    b"forbidden: these views answer loopback clients only, and only when the request carries no\n"
    b"forwarding header (X-Forwarded-For, X-Real-IP, Forwarded, Via, ...) and its Host header\n"
    b"names this machine (localhost, a loopback address or its host name: another name may be a\n"
    b"web page's, rebound to this machine).\n"
    b"To grant access, set a token (views_token, variable MODELTAP_VIEWS_TOKEN) and send\n"
    b"'Authorization: Bearer <token>', or allow the client's networks (views_allow, variable\n"
    b"MODELTAP_VIEWS_ALLOW, comma-separated CIDRs).\n"
)


_FORBIDDEN_WRITE = (
    b"forbidden: feedback is accepted from loopback clients (with no forwarding header) or with\n"
    b"'Authorization: Bearer <token>' (views_token, variable MODELTAP_VIEWS_TOKEN); an allow-list\n"
    b"grants reading the views only.\n"
)


_FORBIDDEN_CROSS_SITE = (
    b"forbidden: a browser sent this from another site's page (Origin or Sec-Fetch-Site says so);\n"
    b"labels, outcomes, drills and rollbacks are accepted from programs, not from web pages.\n"
)


_FORBIDDEN_HOST = (
    b"forbidden: a write trusted for coming from this machine must name it as localhost, a\n"
    b"loopback address or its host name in its Host header (another name may be a web page's,\n"
    b"rebound to this machine); use http://127.0.0.1:<port>/ or Authorization: Bearer\n"
    b"<MODELTAP_VIEWS_TOKEN>.\n"
)


def _names_this_machine(scope: Scope) -> bool:
    """Whether the request's Host names this machine: `localhost`, a `.localhost` name, a
    loopback address, the machine's host name, or the host the server itself reports for the
    connection (`scope["server"]`: the socket's own address, or an in-process test transport's
    name); any port. An absent Host (HTTP/1.0) is a program's. A web page whose name an attacker
    rebinds to 127.0.0.1 reaches a loopback listener as the same origin, Origin and
    Sec-Fetch-Site included; only its Host header still carries the page's name. So a loopback
    peer is trusted, for reading the views as for writing, only when it names this machine."""
    host = None
    for key, value in scope.get("headers", ()):
        if key == b"host":
            host = value.strip().lower()
            break
    if host is None:
        return True
    if host.startswith(b"["):
        name = host[1 : host.find(b"]")] if b"]" in host else b""
    else:
        name = host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host
    name = name.rstrip(b".")
    if name == b"localhost" or name.endswith(b".localhost") or name == _host_name():
        return True
    server = scope.get("server")
    if server and isinstance(server[0], str) and name == server[0].lower().encode("utf-8", "replace"):
        return bool(name)
    try:
        address = ipaddress.ip_address(name.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # [::ffff:127.0.0.1]: loopback, as its peer reads
    return address.is_loopback


@functools.lru_cache(maxsize=1)
def _host_name() -> bytes:
    """This machine's name as `hostname` prints it (Debian maps it to 127.0.1.1): a name only
    the machine's own user would type; empty when unknown. No DNS lookup (`getfqdn` may block)."""
    try:
        return socket.gethostname().strip().lower().rstrip(".").encode("ascii")
    except (OSError, UnicodeError):
        return b""


def _cross_site(scope: Scope) -> bool:
    """A browser's request made by another origin's page (a form or a no-cors fetch needs no
    preflight): the write endpoints trust loopback clients, and the operator's browser is one.
    Programs (curl, a labelling job) send neither header; browsers send one or both."""
    origin = host = site = None
    for key, value in scope.get("headers", ()):
        if key == b"sec-fetch-site":
            site = value.strip().lower()
        elif key == b"origin":
            origin = value.strip().lower()
        elif key == b"host":
            host = value.strip().lower()
    if site is not None:
        # The browser's own word, decided on alone (a proxy may rewrite Host): "same-site" is
        # refused too, since another port of localhost is another site's page.
        return site not in (b"same-origin", b"none")
    if origin is None:
        return False
    _, separator, authority = origin.partition(b"://")
    return not separator or authority != host


def _peer(scope: Scope) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's address (IPv4 clients of a dual-stack listener as IPv4), or None."""
    client = scope.get("client")
    if not client:
        return None
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _local(address: ipaddress.IPv4Address | ipaddress.IPv6Address, scope: Scope) -> bool:
    """A loopback peer is the machine itself only when no proxy stands between: behind one (or
    under uvicorn's --forwarded-allow-ips, which rewrites the peer from X-Forwarded-For) a
    loopback address says nothing about who sent the request."""
    return address.is_loopback and not _forwarded(scope)


def _forwarded(scope: Scope) -> bool:
    return any(key in FORWARDING_HEADERS for key, _ in scope.get("headers", ()))


# The page is one self-contained file: no external assets, and it may only talk to its own origin.
_PAGE_CSP = b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"


@functools.lru_cache(maxsize=1)
def _page() -> bytes:
    return resources.files("modeltap.export").joinpath("status_page.html").read_bytes()


def _query_value(query: bytes, key: str) -> str | None:
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name == key:
            return value
    return None


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
