"""Header rewriting between client, sidecar and upstream (`modeltap.sidecar.headers`).

A proxy must not pass on what describes only its own connection (RFC 9110 §7.6.1: the hop-by-hop
fields and every field a `Connection` header names) and must say who it forwarded for: the order is
strip, then add, so a client can neither hide `X-Forwarded-For` from the upstream nor forge
`X-Forwarded-Proto`/`-Host` unless it is a trusted proxy. Each case is a row of a table: client
headers in, the exact fields the upstream (or the client, for responses) gets out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltap.capture import compiled
from modeltap.sidecar.headers import (
    HOP_BY_HOP,
    TrustedPeers,
    connection_tokens,
    request_head,
    rewrite_request_headers,
    rewrite_response_headers,
)

Header = tuple[bytes, bytes]

PEER = "203.0.113.7"
PROXY_PEER = "10.1.2.3"
UPSTREAM_HOST = b"127.0.0.1:8080"
VIA = b"1.1 modeltap"
# RFC 9110 §7.6.1 (and §11.7.1/§11.7.2 for the proxy credentials, which are for this hop only).
RFC_HOP_BY_HOP = (
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"trailer",
    b"proxy-authorization",
    b"proxy-authenticate",
)


def parse_fields(fields: Sequence[bytes]) -> list[Header]:
    """The encoded `name: value\\r\\n` lines back into pairs (every line must be well formed)."""
    out: list[Header] = []
    for line in fields:
        assert line.endswith(b"\r\n"), line
        name, sep, value = line[:-2].partition(b": ")
        assert sep, line
        assert name == name.lower(), line
        out.append((name, value))
    return out


def forward(
    headers: Sequence[Header],
    *,
    peer: str | None = PEER,
    scheme: str = "http",
    trusted: Sequence[str] = (),
    via: bytes | None = None,
) -> list[Header]:
    head = rewrite_request_headers(
        headers,
        peer=peer,
        scheme=scheme,
        trusted=TrustedPeers(trusted),
        default_host=UPSTREAM_HOST,
        via=via,
    )
    return parse_fields(head.fields)


def values(fields: Sequence[Header], name: bytes) -> list[bytes]:
    return [value for key, value in fields if key == name]


# ---- requests: table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestCase:
    id: str
    headers: tuple[Header, ...]
    expected: tuple[Header, ...]
    peer: str | None = PEER
    scheme: str = "http"
    trusted: tuple[str, ...] = ()
    via: bytes | None = None


HOST = (b"host", b"model.example:8000")
XFP_HTTP = (b"x-forwarded-proto", b"http")
XFH = (b"x-forwarded-host", b"model.example:8000")
XFF_PEER = (b"x-forwarded-for", PEER.encode())

REQUEST_CASES = [
    RequestCase(
        "plain request: Host kept, forwarding fields added",
        (HOST, (b"content-type", b"application/json")),
        ((b"content-type", b"application/json"), HOST, XFF_PEER, XFP_HTTP, XFH),
    ),
    RequestCase(
        "no Host (HTTP/1.0): the upstream's authority, no X-Forwarded-Host",
        ((b"accept", b"*/*"),),
        ((b"accept", b"*/*"), (b"host", UPSTREAM_HOST), XFF_PEER, XFP_HTTP),
    ),
    RequestCase(
        "every hop-by-hop field is stripped",
        (
            HOST,
            (b"connection", b"keep-alive"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-connection", b"keep-alive"),
            (b"te", b"trailers"),
            (b"trailer", b"x-checksum"),
            (b"upgrade", b"h2c"),
            (b"proxy-authorization", b"Basic cHJveHk6c2VjcmV0"),
            (b"x-request-id", b"r-1"),
        ),
        ((b"x-request-id", b"r-1"), HOST, XFF_PEER, XFP_HTTP, XFH),
    ),
    RequestCase(
        "fields named in Connection are stripped, case-insensitively",
        (
            HOST,
            (b"connection", b"close, X-Secret-Hop ,x-other"),
            (b"x-secret-hop", b"1"),
            (b"x-other", b"2"),
            (b"x-kept", b"3"),
        ),
        ((b"x-kept", b"3"), HOST, XFF_PEER, XFP_HTTP, XFH),
    ),
    RequestCase(
        "fields named in several Connection headers are all stripped",
        (
            HOST,
            (b"connection", b"x-a"),
            (b"x-a", b"1"),
            (b"connection", b"x-b"),
            (b"x-b", b"2"),
        ),
        (HOST, XFF_PEER, XFP_HTTP, XFH),
    ),
    RequestCase(
        "framing and Expect are the sidecar's: Content-Length, Transfer-Encoding, Expect out",
        (HOST, (b"content-length", b"12"), (b"expect", b"100-continue"), (b"transfer-encoding", b"chunked")),
        (HOST, XFF_PEER, XFP_HTTP, XFH),
    ),
    RequestCase(
        "X-Forwarded-For is appended to, the peer last",
        (HOST, (b"x-forwarded-for", b"198.51.100.1, 198.51.100.2")),
        (HOST, (b"x-forwarded-for", b"198.51.100.1, 198.51.100.2, " + PEER.encode()), XFP_HTTP, XFH),
    ),
    RequestCase(
        "several X-Forwarded-For fields are joined in order",
        (HOST, (b"x-forwarded-for", b"198.51.100.1"), (b"x-forwarded-for", b"198.51.100.2")),
        (HOST, (b"x-forwarded-for", b"198.51.100.1, 198.51.100.2, " + PEER.encode()), XFP_HTTP, XFH),
    ),
    RequestCase(
        "Connection naming X-Forwarded-For drops the client's value, never the sidecar's (strip, then add)",
        (HOST, (b"connection", b"x-forwarded-for"), (b"x-forwarded-for", b"198.51.100.1")),
        (HOST, XFF_PEER, XFP_HTTP, XFH),
    ),
    RequestCase(
        "Connection naming the other forwarding fields: the sidecar's own values are still sent",
        (
            HOST,
            (b"connection", b"x-forwarded-proto, x-forwarded-host"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"evil.example"),
        ),
        (HOST, (b"x-forwarded-for", PROXY_PEER.encode()), XFP_HTTP, XFH),
        peer=PROXY_PEER,
        trusted=("10.0.0.0/8",),
    ),
    RequestCase(
        "untrusted peer: X-Forwarded-Proto and -Host are overwritten",
        (HOST, (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"evil.example")),
        (HOST, XFF_PEER, XFP_HTTP, XFH),
    ),
    RequestCase(
        "trusted peer: X-Forwarded-Proto and -Host are kept",
        (HOST, (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"public.example")),
        (
            HOST,
            (b"x-forwarded-for", PROXY_PEER.encode()),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"public.example"),
        ),
        peer=PROXY_PEER,
        trusted=("10.0.0.0/8",),
    ),
    RequestCase(
        "trusted peer without forwarding fields: the sidecar's own values",
        (HOST,),
        (HOST, (b"x-forwarded-for", PROXY_PEER.encode()), XFP_HTTP, XFH),
        peer=PROXY_PEER,
        trusted=("10.0.0.0/8",),
    ),
    RequestCase(
        "a peer outside the trusted networks is untrusted",
        (HOST, (b"x-forwarded-proto", b"https")),
        (HOST, XFF_PEER, XFP_HTTP, XFH),
        trusted=("10.0.0.0/8", "192.168.0.0/16"),
    ),
    RequestCase(
        "IPv6 trusted network",
        (HOST, (b"x-forwarded-proto", b"https")),
        (HOST, (b"x-forwarded-for", b"fd00::5"), (b"x-forwarded-proto", b"https"), XFH),
        peer="fd00::5",
        trusted=("fd00::/8",),
    ),
    RequestCase(
        "https listener: X-Forwarded-Proto is the scheme",
        (HOST,),
        (HOST, XFF_PEER, (b"x-forwarded-proto", b"https"), XFH),
        scheme="https",
    ),
    RequestCase(
        "no peer (unix socket): the client's X-Forwarded-For passes unchanged",
        (HOST, (b"x-forwarded-for", b"198.51.100.1")),
        (HOST, (b"x-forwarded-for", b"198.51.100.1"), XFP_HTTP, XFH),
        peer=None,
    ),
    RequestCase(
        "no peer and no X-Forwarded-For: none is invented",
        (HOST,),
        (HOST, XFP_HTTP, XFH),
        peer=None,
    ),
    RequestCase(
        "Via is added last when enabled; the client's own Via is kept before it",
        (HOST, (b"via", b"1.0 edge")),
        ((b"via", b"1.0 edge"), HOST, XFF_PEER, XFP_HTTP, XFH, (b"via", VIA)),
        via=VIA,
    ),
    RequestCase(
        "Connection naming Via cannot remove the sidecar's Via",
        (HOST, (b"connection", b"via"), (b"via", b"1.0 edge")),
        (HOST, XFF_PEER, XFP_HTTP, XFH, (b"via", VIA)),
        via=VIA,
    ),
    RequestCase(
        "end-to-end fields keep their order and repeated values",
        (
            (b"accept", b"application/json"),
            HOST,
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"authorization", b"Bearer t"),
        ),
        (
            (b"accept", b"application/json"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"authorization", b"Bearer t"),
            HOST,
            XFF_PEER,
            XFP_HTTP,
            XFH,
        ),
    ),
]


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c.id for c in REQUEST_CASES])
def test_request_headers(case: RequestCase) -> None:
    out = forward(case.headers, peer=case.peer, scheme=case.scheme, trusted=case.trusted, via=case.via)
    assert out == list(case.expected)


@pytest.mark.parametrize("name", RFC_HOP_BY_HOP)
def test_each_hop_by_hop_request_field_is_stripped(name: bytes) -> None:
    assert name in HOP_BY_HOP
    out = forward([HOST, (name, b"anything"), (b"x-end-to-end", b"1")])
    assert values(out, name) == []
    assert values(out, b"x-end-to-end") == [b"1"]


def test_request_head_reports_framing_and_host() -> None:
    trusted = TrustedPeers([])
    head = rewrite_request_headers(
        [HOST, (b"content-length", b"42")],
        peer=PEER,
        scheme="http",
        trusted=trusted,
        default_host=UPSTREAM_HOST,
        via=None,
    )
    assert (head.content_length, head.chunked, head.host) == (42, False, HOST[1])
    chunked = rewrite_request_headers(
        [(b"transfer-encoding", b"chunked")],
        peer=PEER,
        scheme="http",
        trusted=trusted,
        default_host=UPSTREAM_HOST,
        via=None,
    )
    assert (chunked.content_length, chunked.chunked, chunked.host) == (None, True, None)


@pytest.mark.parametrize("length", [b"", b"-1", b"1e3", b"0x10", b" 5"])
def test_unusable_content_length_is_rejected(length: bytes) -> None:
    with pytest.raises(ValueError, match="Content-Length"):
        forward([HOST, (b"content-length", length)])


@dataclass(frozen=True)
class TraceCase:
    id: str
    headers: tuple[Header, ...]
    traceparent_at: int  # index in the forwarded fields, -1 if none


TRACEPARENT = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
TRACE_CASES = [
    TraceCase("none", (HOST,), -1),
    TraceCase("first", (TRACEPARENT, HOST), 0),
    TraceCase(
        "after stripped fields", ((b"connection", b"x-a"), (b"x-a", b"1"), (b"x-b", b"2"), TRACEPARENT), 1
    ),
    TraceCase("named in Connection", ((b"connection", b"traceparent"), TRACEPARENT, (b"x-b", b"2")), -1),
]


@pytest.mark.parametrize("case", TRACE_CASES, ids=[c.id for c in TRACE_CASES])
def test_traceparent_index_points_at_the_forwarded_field(case: TraceCase) -> None:
    head = rewrite_request_headers(
        case.headers,
        peer=PEER,
        scheme="http",
        trusted=TrustedPeers([]),
        default_host=UPSTREAM_HOST,
        via=None,
    )
    assert head.traceparent_index == case.traceparent_at
    if case.traceparent_at >= 0:
        assert head.fields[case.traceparent_at].startswith(b"traceparent: ")


# ---- requests: the compiled form -------------------------------------------------------------------
#
# `_speedups.request_head` runs the same loop for the usual request; it answers None for what it
# leaves to the Python form (a Connection field, a field that is not a pair of bytes, a length of
# more than 18 digits). Wherever it answers, it must answer what the Python form does.

needs_extension = pytest.mark.skipif(not compiled.AVAILABLE, reason="the extension is not built here")


def both_forms(
    headers: Sequence[Header], peer: str | None = PEER, scheme: str = "http", trusted: Sequence[str] = (),
    via: bytes | None = None,
) -> tuple[object, object]:  # fmt: skip
    """(compiled, Python) results: the fields tuple, None (left to Python), or ValueError."""
    arguments = (list(headers), peer, scheme, TrustedPeers(trusted), UPSTREAM_HOST, via)
    outcomes: list[object] = []
    for form in (compiled._speedups.request_head, request_head):
        try:
            outcomes.append(form(*arguments))
        except ValueError:
            outcomes.append(ValueError)
    return outcomes[0], outcomes[1]


@needs_extension
@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c.id for c in REQUEST_CASES])
def test_the_compiled_form_forwards_every_table_row_alike(case: RequestCase) -> None:
    fast, slow = both_forms(case.headers, case.peer, case.scheme, case.trusted, case.via)
    assert fast in (slow, None)
    assert fast is not None or any(name == b"connection" for name, _ in case.headers)


@needs_extension
@pytest.mark.parametrize("case", TRACE_CASES, ids=[c.id for c in TRACE_CASES])
def test_the_compiled_form_points_at_the_same_traceparent(case: TraceCase) -> None:
    fast, slow = both_forms(case.headers)
    assert fast in (slow, None)
    if fast is not None:
        assert fast[4] == case.traceparent_at  # type: ignore[index]


@needs_extension
@pytest.mark.parametrize("length", [b"", b"-1", b"1e3", b"0x10", b" 5", b"5 ", b"007", b"9" * 18, b"9" * 19])
def test_the_compiled_form_reads_lengths_alike(length: bytes) -> None:
    fast, slow = both_forms([HOST, (b"content-length", length)])
    assert fast in (slow, None)
    assert fast is not None or len(length) > 18


_REQUEST_NAMES = st.sampled_from(
    [b"host", b"content-length", b"transfer-encoding", b"x-forwarded-for", b"x-forwarded-proto",
     b"x-forwarded-host", b"traceparent", b"expect", b"te", b"keep-alive", b"upgrade", b"trailer",
     b"proxy-authorization", b"proxy-connection", b"connection", b"content-type", b"x-a", b"via", b""]
)  # fmt: skip
_REQUEST_VALUES = st.one_of(
    st.sampled_from([b"", b"12", b"0", b"x-a", b"https", b"a.example", b"1.2.3.4", b"chunked", b"x-a, te"]),
    st.binary(max_size=10),
)


@needs_extension
# 400 examples, as the other compiled-against-Python checks of the sidecar run.
@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(_REQUEST_NAMES, _REQUEST_VALUES), max_size=8),
    st.sampled_from([PEER, PROXY_PEER, "::1", None]),
    st.sampled_from(["http", "https"]),
    st.sampled_from([(), ("10.0.0.0/8",), ("::1/128", "203.0.113.0/24")]),
    st.sampled_from([None, VIA]),
)
def test_the_compiled_form_gives_the_python_forms_fields(
    headers: list[Header], peer: str | None, scheme: str, trusted: tuple[str, ...], via: bytes | None
) -> None:
    fast, slow = both_forms(headers, peer, scheme, trusted, via)
    if fast is None:  # left to Python: a Connection field naming something, or a very long length
        assert any(name == b"connection" and value.strip(b" ,") for name, value in headers) or any(
            name == b"content-length" and len(value) > 18 for name, value in headers
        )
    else:
        assert fast == slow


@needs_extension
@pytest.mark.parametrize(
    "connection", [b"keep-alive", b"close", b"Keep-Alive", b" close , keep-alive ", b"upgrade, te", b""]
)
def test_a_connection_field_naming_nothing_forwarded_stays_compiled(connection: bytes) -> None:
    """What clients send most (`Connection: keep-alive`, `close`) names no forwarded field."""
    fast, slow = both_forms([HOST, (b"connection", connection), (b"keep-alive", b"timeout=5"), TRACEPARENT])
    assert fast is not None
    assert fast == slow


@needs_extension
@pytest.mark.parametrize("named", [b"x-a", b"X-A", b"traceparent", b"x-forwarded-for", b"x-forwarded-host"])
def test_a_connection_field_naming_a_forwarded_field_takes_the_python_form(named: bytes) -> None:
    fast, slow = both_forms([HOST, (b"connection", b"keep-alive, " + named), (b"x-a", b"1"), TRACEPARENT])
    assert fast is None
    assert slow is not ValueError


@needs_extension
def test_the_compiled_form_leaves_unusual_shapes_to_python() -> None:
    trusted = TrustedPeers([])
    for headers in ([[b"host", b"a"]], [(b"host", "a")], (HOST,)):
        assert compiled._speedups.request_head(headers, PEER, "http", trusted, UPSTREAM_HOST, None) is None


# ---- trusted peers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidrs", "host", "trusted"),
    [
        ((), "10.0.0.1", False),
        (("10.0.0.0/8",), "10.255.0.1", True),
        (("10.0.0.0/8",), "11.0.0.1", False),
        (("192.168.1.7",), "192.168.1.7", True),
        (("192.168.1.7",), "192.168.1.8", False),
        (("10.0.0.1/8",), "10.9.9.9", True),  # host bits set: not strict
        (("::1/128",), "::1", True),
        (("10.0.0.0/8",), "::1", False),
        (("10.0.0.0/8",), "not-an-address", False),
    ],
)
def test_trusted_peers(cidrs: tuple[str, ...], host: str, trusted: bool) -> None:
    assert (host in TrustedPeers(cidrs)) is trusted


# ---- responses ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseCase:
    id: str
    headers: tuple[Header, ...]
    expected: tuple[Header, ...]
    via: bytes | None = None


RESPONSE_CASES = [
    ResponseCase(
        "end-to-end fields kept (names lower-cased), order and repeats preserved",
        (
            (b"Content-Type", b"application/json"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"Content-Length", b"2"),
        ),
        (
            (b"content-type", b"application/json"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"content-length", b"2"),
        ),
    ),
    ResponseCase(
        "every hop-by-hop field is stripped",
        (
            (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5, max=100"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Trailer", b"x-checksum"),
            (b"Upgrade", b"h2c"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"x-model", b"m"),
        ),
        ((b"x-model", b"m"),),
    ),
    ResponseCase(
        "fields named in Connection are stripped, whatever their case",
        (
            (b"Connection", b"X-Internal, close"),
            (b"x-internal", b"secret"),
            (b"X-INTERNAL", b"secret2"),
            (b"x-public", b"1"),
        ),
        ((b"x-public", b"1"),),
    ),
    ResponseCase(
        "fields named in several Connection headers",
        ((b"connection", b"x-a"), (b"connection", b"x-b"), (b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")),
        ((b"x-c", b"3"),),
    ),
    ResponseCase(
        "Via added last when enabled",
        ((b"content-length", b"0"), (b"via", b"1.1 model-server")),
        ((b"content-length", b"0"), (b"via", b"1.1 model-server"), (b"via", VIA)),
        via=VIA,
    ),
    ResponseCase("no fields", (), ()),
]


@pytest.mark.parametrize("case", RESPONSE_CASES, ids=[c.id for c in RESPONSE_CASES])
def test_response_headers(case: ResponseCase) -> None:
    assert rewrite_response_headers(list(case.headers), case.via) == list(case.expected)


@pytest.mark.parametrize("name", RFC_HOP_BY_HOP)
def test_each_hop_by_hop_response_field_is_stripped(name: bytes) -> None:
    out = rewrite_response_headers([(name.title(), b"anything"), (b"x-end-to-end", b"1")], None)
    assert out == [(b"x-end-to-end", b"1")]


@dataclass(frozen=True)
class TokensCase:
    headers: tuple[Header, ...]
    expected: frozenset[bytes]


@pytest.mark.parametrize(
    "case",
    [
        TokensCase(((b"connection", b"close"),), frozenset({b"close"})),
        TokensCase(((b"Connection", b" Keep-Alive , X-A,,"),), frozenset({b"keep-alive", b"x-a"})),
        TokensCase(((b"connection", b"x-a"), (b"connection", b"x-b")), frozenset({b"x-a", b"x-b"})),
        TokensCase(((b"x-connection", b"x-a"),), frozenset()),
        TokensCase((), frozenset()),
    ],
)
def test_connection_tokens(case: TokensCase) -> None:
    assert connection_tokens(case.headers) == case.expected
