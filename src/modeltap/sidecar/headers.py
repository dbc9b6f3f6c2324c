"""Header rewriting for the proxy: hop-by-hop fields out (RFC 9110 §7.6.1), forwarding fields in.

Hop-by-hop fields describe one connection, so neither direction may pass them on; that includes
every field the `Connection` header names (a client could otherwise hide `X-Forwarded-For` from
the upstream by listing it). The order is strip, then add, so the sidecar's own forwarding fields
always survive.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

from modeltap.capture import compiled

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
# Request fields the sidecar itself answers or re-frames: `expect` (the sidecar sends the
# 100 Continue), framing (re-written for the upstream) and the forwarding fields it owns.
_REQUEST_OWN = frozenset(
    {b"expect", b"content-length", b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)

# Every request field the loop below does more with than pass on.
_REQUEST_NOTED = HOP_BY_HOP | _REQUEST_OWN | {b"traceparent"}


def connection_tokens(headers: Iterable[Header]) -> frozenset[bytes]:
    """Field names listed in `Connection` headers (lower-cased), besides the option keywords."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return frozenset(tokens)


class TrustedPeers:
    """Peers whose `X-Forwarded-Proto`/`-Host` are believed (another proxy in front)."""

    def __init__(self, cidrs: Sequence[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __contains__(self, host: str) -> bool:
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)


class RequestHead:
    """What the proxy learns from the client's headers while rewriting them, in one pass."""

    __slots__ = ("chunked", "content_length", "fields", "host", "traceparent_index")

    def __init__(self) -> None:
        self.fields: list[bytes] = []
        self.content_length: int | None = None
        self.chunked = False
        self.host: bytes | None = None
        self.traceparent_index = -1


# What the proxy takes per request: (fields, content_length, chunked, host, traceparent_index), the
# slots of `RequestHead` as one tuple (no object to build per request).
RequestFields = tuple[list[bytes], int | None, bool, bytes | None, int]


def request_head(
    headers: Iterable[Header],
    peer: str | None,
    scheme: str,
    trusted: TrustedPeers,
    default_host: bytes,
    via: bytes | None,
) -> RequestFields:
    """`rewrite_request_headers` as a tuple. Raises ValueError on an unusable Content-Length."""
    head = rewrite_request_headers(
        headers, peer=peer, scheme=scheme, trusted=trusted, default_host=default_host, via=via
    )
    return head.fields, head.content_length, head.chunked, head.host, head.traceparent_index


def compiled_request_head() -> Callable[..., RequestFields | None] | None:
    """`request_head` in compiled code (`_speedups.request_head`, same arguments), where the
    extension is built and wanted. It answers None for what it leaves to `request_head`: a
    Connection field naming a field to drop (`keep-alive` or `close` name none), a field that is
    not a pair of bytes, a Content-Length of more than 18 digits."""
    return compiled._speedups.request_head if compiled.wanted() else None


def rewrite_request_headers(
    headers: Iterable[Header],
    *,
    peer: str | None,
    scheme: str,
    trusted: TrustedPeers,
    default_host: bytes,
    via: bytes | None,
) -> RequestHead:
    """Encoded `name: value\\r\\n` lines for the upstream, without framing fields (the caller
    adds Content-Length or Transfer-Encoding). Raises ValueError on an unusable Content-Length."""
    head = RequestHead()
    fields = head.fields
    forwarded_for: list[bytes] = []
    forwarded_proto: bytes | None = None
    forwarded_host: bytes | None = None
    connection: list[bytes] | None = None
    for name, value in headers:
        if name not in _REQUEST_NOTED:  # most fields: one set lookup, passed on as they are
            fields.append(name + b": " + value + b"\r\n")
            continue
        if name == b"content-length":
            head.content_length = _content_length(value)
        elif name == b"host":
            head.host = value
        elif name == b"traceparent":
            head.traceparent_index = len(fields)
            fields.append(name + b": " + value + b"\r\n")
        elif name == b"transfer-encoding":
            head.chunked = True
        elif name == b"x-forwarded-for":
            forwarded_for.append(value)
        elif name == b"x-forwarded-proto":
            forwarded_proto = value
        elif name == b"x-forwarded-host":
            forwarded_host = value
        elif name == b"connection":
            connection = [*(connection or ()), value]
    if connection is not None:
        named = connection_tokens((b"connection", v) for v in connection)
        if named:
            kept = [line for line in fields if line.split(b":", 1)[0] not in named]
            if len(kept) != len(fields):
                head.fields = fields = kept
                head.traceparent_index = next(
                    (i for i, line in enumerate(fields) if line.startswith(b"traceparent:")), -1
                )
            # A client naming a forwarding field in Connection does not remove ours (added below),
            # but its own value is dropped: it asked for that field not to be forwarded.
            if b"x-forwarded-for" in named:
                forwarded_for = []
            if b"x-forwarded-proto" in named:
                forwarded_proto = None
            if b"x-forwarded-host" in named:
                forwarded_host = None
    host = head.host if head.host else default_host
    fields.append(b"host: " + host + b"\r\n")
    if peer is not None:
        forwarded_for.append(peer.encode("latin-1"))
    if forwarded_for:
        fields.append(b"x-forwarded-for: " + b", ".join(forwarded_for) + b"\r\n")
    peer_trusted = peer is not None and peer in trusted
    if not (peer_trusted and forwarded_proto):
        forwarded_proto = scheme.encode("latin-1")
    fields.append(b"x-forwarded-proto: " + forwarded_proto + b"\r\n")
    if not (peer_trusted and forwarded_host):
        forwarded_host = head.host
    if forwarded_host:
        fields.append(b"x-forwarded-host: " + forwarded_host + b"\r\n")
    if via is not None:
        fields.append(b"via: " + via + b"\r\n")
    return head


def _content_length(value: bytes) -> int:
    # llhttp already rejected conflicting or malformed lengths; this guards other servers.
    if not value.isdigit():
        raise ValueError("invalid Content-Length")
    return int(value)


def rewrite_response_headers(headers: list[Header], via: bytes | None) -> list[Header]:
    """The upstream's response fields for the client, hop-by-hop fields removed."""
    named: frozenset[bytes] | None = None
    kept: list[Header] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP:
            if lowered == b"connection":
                named = (named or frozenset()) | connection_tokens(((b"connection", value),))
            continue
        kept.append((lowered, value))
    if named:
        kept = [(name, value) for name, value in kept if name not in named]
    if via is not None:
        kept.append((b"via", via))
    return kept
