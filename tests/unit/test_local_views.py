"""`GET /modeltap/status` and `/modeltap/metrics` on the application's own port.

Who may read them (loopback, bearer token, allow-listed networks), what other methods and paths get,
that HEAD carries no body, that the views are never counted as model traffic, and that the
Prometheus exposition is well formed: every sample line is `name{labels} value`, histogram `le`
labels are the same strings in every series and every scrape, end with `+Inf`, and bucket counts are
cumulative.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass

import pytest

from modeltap import ModelTapMiddleware
from modeltap.export.local_views import LocalViews
from modeltap.snapshot import Snapshot
from tests.support.asgi_driver import (
    DriverResult,
    Receive,
    Scope,
    Send,
    http_request_messages,
    make_http_scope,
    run_asgi,
)
from tests.support.tapping import BODY, PROMETHEUS_LABEL, START, MakeMiddleware

LOOPBACK = ("127.0.0.1", 5000)
REMOTE = ("10.1.2.3", 5000)


class ModelFailure(Exception):
    pass


async def model_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every path itself, so a request the views did not take is visible as `app:<path>`."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            break
    if scope["path"].endswith("/fail"):
        raise ModelFailure("boom")
    status = 503 if scope["path"].endswith("/unavailable") else 200
    headers = [(b"content-type", b"application/json")]
    version = dict(scope["headers"]).get(b"x-send-version")
    if version is not None:
        headers.append((b"x-model-version", version))
    await send({"type": START, "status": status, "headers": headers})
    await send({"type": BODY, "body": b'{"app": "%s", "predictions": [1]}' % scope["path"].encode()})


def get(
    middleware: ModelTapMiddleware,
    path: str,
    *,
    method: str = "GET",
    client: tuple[str, int] | None = LOOPBACK,
    headers: list[tuple[bytes, bytes]] | None = None,
    root_path: str = "",
    query: bytes = b"",
) -> DriverResult:
    scope = make_http_scope(
        method, path, headers=headers or [], client=client, root_path=root_path, query_string=query
    )
    return run_asgi(middleware, scope)


def served_by_views(result: DriverResult) -> bool:
    return not result.body.startswith(b'{"app"')


# --- access control --------------------------------------------------------------------------------


@pytest.mark.parametrize("client", [("127.0.0.1", 1), ("127.8.9.10", 2), ("::1", 3)])
def test_loopback_clients_are_allowed(make_middleware: MakeMiddleware, client: tuple[str, int]) -> None:
    result = get(make_middleware(model_app), "/modeltap/status", client=client)

    assert result.status == 200
    assert json.loads(result.body)["model"]["name"] == "demo"


def test_ipv4_mapped_loopback_is_loopback(make_middleware: MakeMiddleware) -> None:
    """A dual-stack listener (uvicorn --host ::) reports IPv4 loopback clients as ::ffff:127.0.0.1."""
    result = get(make_middleware(model_app), "/modeltap/status", client=("::ffff:127.0.0.1", 4))

    assert result.status == 200


@pytest.mark.parametrize("client", [REMOTE, ("192.168.1.20", 1), ("2001:db8::1", 1), None, ("not-an-ip", 1)])
@pytest.mark.parametrize("path", ["/modeltap/status", "/modeltap/metrics"])
def test_other_clients_are_forbidden(
    make_middleware: MakeMiddleware, client: tuple[str, int] | None, path: str
) -> None:
    middleware = make_middleware(model_app)
    run_asgi(middleware, make_http_scope("POST", "/predict"), http_request_messages(b'{"x": 1}'))

    result = get(middleware, path, client=client)

    assert result.status == 403
    assert result.body.startswith(b"forbidden")


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER"])
def test_bearer_token_allows_a_remote_client(make_middleware: MakeMiddleware, scheme: bytes) -> None:
    middleware = make_middleware(model_app, views_token="s3cret-token")

    result = get(
        middleware, "/modeltap/status", client=REMOTE, headers=[(b"authorization", scheme + b" s3cret-token")]
    )

    # The auth scheme is case-insensitive (RFC 9110 section 11.1).
    assert result.status == 200
    assert json.loads(result.body)["model"]["name"] == "demo"


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer wrong",
        b"Bearer s3cret-token-and-more",
        b"Bearer ",
        b"s3cret-token",
        b"Basic czNjcmV0LXRva2Vu",
    ],
)
def test_wrong_token_is_forbidden(make_middleware: MakeMiddleware, authorization: bytes) -> None:
    middleware = make_middleware(model_app, views_token="s3cret-token")

    result = get(middleware, "/modeltap/metrics", client=REMOTE, headers=[(b"authorization", authorization)])

    assert result.status == 403


def test_bearer_header_without_configured_token_is_forbidden(make_middleware: MakeMiddleware) -> None:
    result = get(
        make_middleware(model_app),
        "/modeltap/status",
        client=REMOTE,
        headers=[(b"authorization", b"Bearer x")],
    )

    assert result.status == 403


@pytest.mark.parametrize(
    ("client", "allowed"),
    [
        (("10.1.2.3", 1), True),
        (("10.255.0.1", 1), True),
        (("11.0.0.1", 1), False),
        (("fd00::7", 1), True),
        (("fe80::1", 1), False),
    ],
)
def test_allow_list_cidrs(make_middleware: MakeMiddleware, client: tuple[str, int], allowed: bool) -> None:
    middleware = make_middleware(model_app, views_allow=("10.0.0.0/8", "fd00::/8"))

    result = get(middleware, "/modeltap/status", client=client)

    assert result.status == (200 if allowed else 403)


@pytest.mark.parametrize(
    "header",
    [
        (b"x-forwarded-for", b"127.0.0.1"),
        (b"x-forwarded-host", b"localhost"),
        (b"x-forwarded-proto", b"http"),
        (b"x-real-ip", b"127.0.0.1"),
        (b"forwarded", b"for=127.0.0.1"),
        (b"via", b"1.1 edge"),
    ],
)
def test_a_forwarded_loopback_request_is_not_local(
    make_middleware: MakeMiddleware, header: tuple[bytes, bytes]
) -> None:
    """Behind a proxy on the same machine, or with the peer rewritten from X-Forwarded-For, the
    loopback address is the proxy's (or the client's claim), not the reader's."""
    result = get(make_middleware(model_app), "/modeltap/status", client=LOOPBACK, headers=[header])

    assert result.status == 403
    # The answer says how to grant access.
    assert b"MODELTAP_VIEWS_TOKEN" in result.body
    assert b"MODELTAP_VIEWS_ALLOW" in result.body
    assert b"Authorization: Bearer" in result.body


def test_a_forwarded_request_is_served_with_the_token_or_an_allowed_network(
    make_middleware: MakeMiddleware,
) -> None:
    forwarded = (b"x-forwarded-for", b"127.0.0.1")
    with_token = make_middleware(model_app, views_token="s3cret-token")
    allowed = make_middleware(model_app, views_allow=("127.0.0.0/8",))

    by_token = get(
        with_token,
        "/modeltap/status",
        headers=[forwarded, (b"authorization", b"Bearer s3cret-token")],
    )
    by_network = get(allowed, "/modeltap/status", headers=[forwarded])

    assert by_token.status == 200
    assert by_network.status == 200


@pytest.mark.parametrize(
    ("host", "server", "status"),
    [
        (b"127.0.0.1:8000", ("127.0.0.1", 8000), 200),
        (b"localhost:8000", ("127.0.0.1", 8000), 200),
        (b"[::1]:8000", ("::1", 8000), 200),
        (b"models.localhost", ("127.0.0.1", 8000), 200),
        (None, ("127.0.0.1", 8000), 200),  # HTTP/1.0 without Host: a program
        (b"testserver", ("testserver", 80), 200),  # an in-process transport names its server
        # A page whose name was rebound to 127.0.0.1 (its fetch is same-origin to the browser):
        (b"evil.example:8000", ("127.0.0.1", 8000), 403),
        (b"127.0.0.1.evil.example", ("127.0.0.1", 8000), 403),
        (b"testserver", ("127.0.0.1", 8000), 403),  # a name is not the socket's own address
    ],
)
def test_a_loopback_read_must_name_this_machine(
    make_middleware: MakeMiddleware, host: bytes | None, server: tuple[str, int], status: int
) -> None:
    """Through DNS rebinding a web page the operator visits could read the views (feature
    names, distributions, model names) from a loopback port; only its Host header gives it away."""
    middleware = make_middleware(model_app)
    headers = [] if host is None else [(b"host", host)]
    scope = make_http_scope("GET", "/modeltap/status", headers=headers, client=LOOPBACK, server=server)

    result = run_asgi(middleware, scope)

    assert result.status == status, result.body
    assert served_by_views(result)
    if status == 403:
        assert b"Host header" in result.body


def test_the_machines_own_host_name_is_this_machine(make_middleware: MakeMiddleware) -> None:
    """Debian maps the host name to 127.0.1.1: `http://$(hostname):8000/modeltap/` is the
    operator's own, and no other site's page can carry that Host."""
    import socket

    host = socket.gethostname().encode().upper() + b":8000"
    scope = make_http_scope("GET", "/modeltap/status", headers=[(b"host", host)], client=("127.0.1.1", 9))

    assert run_asgi(make_middleware(model_app), scope).status == 200


def test_an_allow_list_does_not_let_a_rebound_page_read(make_middleware: MakeMiddleware) -> None:
    """An allow-list covering loopback, or the sidecar's admin port open to every network (no
    token, no allow-list): a loopback reader must still name this machine, forwarding headers or
    not (a page's script can send them); other allow-listed peers may use any name; the token
    is what lets a proxy on this machine forward the public name."""
    allowed = make_middleware(model_app, views_allow=("0.0.0.0/0", "::/0"))
    open_to_all = LocalViews("/modeltap", lambda: SNAPSHOT, open_to_all=True)
    evil = [(b"host", b"evil.example:8000")]
    forwarded = [*evil, (b"x-forwarded-for", b"203.0.113.9")]
    with_token = make_middleware(model_app, views_token="s3cret-token", views_allow=("0.0.0.0/0",))
    bearer = (b"authorization", b"Bearer s3cret-token")

    for views in (allowed, open_to_all):
        assert get_view(views, evil).status == 403
        assert get_view(views, forwarded).status == 403
        assert get_view(views, evil, client=REMOTE).status == 200
        assert get_view(views, [(b"host", b"localhost:8000")]).status == 200
    assert get_view(with_token, [*forwarded, bearer]).status == 200


def get_view(
    views: ModelTapMiddleware | LocalViews,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] = LOOPBACK,
) -> DriverResult:
    scope = make_http_scope("GET", "/modeltap/status", headers=headers, client=client)
    return run_asgi(views, scope)


SNAPSHOT = Snapshot(taken_unix_ns=2, start_unix_ns=1, instance_id="i", pid=1)


# --- methods, paths, HEAD --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405_with_allow(make_middleware: MakeMiddleware, method: str) -> None:
    result = get(make_middleware(model_app), "/modeltap/status", method=method)

    assert result.status == 405
    allow = result.header(b"allow")
    assert allow is not None
    assert b"GET" in allow


@pytest.mark.parametrize("path", ["/modeltap/unknown", "/modeltap/status/extra"])
def test_unknown_subpaths_get_404(make_middleware: MakeMiddleware, path: str) -> None:
    result = get(make_middleware(model_app), path)

    assert result.status == 404
    assert served_by_views(result)


@pytest.mark.parametrize("path", ["/modeltap", "/modeltap/"])
def test_the_prefix_serves_the_self_contained_status_page(make_middleware: MakeMiddleware, path: str) -> None:
    result = get(make_middleware(model_app), path)

    assert result.status == 200
    assert result.header(b"content-type") == b"text/html; charset=utf-8"
    page = result.body.decode()
    assert "<table" in page
    assert "fetch(" in page
    # Self-contained: no external scripts, styles or fonts.
    assert "http://" not in page
    assert "https://" not in page
    assert "src=" not in page
    policy = result.header(b"content-security-policy")
    assert policy is not None
    assert b"default-src 'none'" in policy


def test_status_with_a_feature_adds_its_histogram(make_middleware: MakeMiddleware) -> None:
    result = get(make_middleware(model_app), "/modeltap/status", query=b"feature=nope")

    assert result.status == 200
    assert json.loads(result.body)["histogram"] is None  # no reference: nothing to compare


@pytest.mark.parametrize("path", ["/modeltapx/status", "/v1/modeltap/status", "/predict"])
def test_paths_outside_the_prefix_reach_the_app(make_middleware: MakeMiddleware, path: str) -> None:
    result = get(make_middleware(model_app), path)

    assert result.status == 200
    assert json.loads(result.body)["app"] == path


def test_trailing_slash_is_accepted(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(model_app)

    assert get(middleware, "/modeltap/status/").status == 200
    assert get(middleware, "/modeltap/metrics/").status == 200


@pytest.mark.parametrize("path", ["/modeltap/status", "/modeltap/metrics"])
def test_head_has_headers_but_no_body(make_middleware: MakeMiddleware, path: str) -> None:
    middleware = make_middleware(model_app)

    got = get(middleware, path)
    head = get(middleware, path, method="HEAD")

    assert head.status == 200
    assert head.body == b""
    assert head.response_complete
    assert head.header(b"content-type") == got.header(b"content-type")
    length = head.header(b"content-length")
    assert length is not None
    assert int(length) > 0


def test_content_types_and_no_caching(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(model_app)

    status = get(middleware, "/modeltap/status")
    metrics = get(middleware, "/modeltap/metrics")

    assert status.header(b"content-type") == b"application/json"
    content_type = metrics.header(b"content-type")
    assert content_type is not None
    assert content_type.startswith(b"text/plain; version=0.0.4")
    assert status.header(b"cache-control") == metrics.header(b"cache-control") == b"no-store"
    for result in (status, metrics):
        assert result.header(b"content-length") == str(len(result.body)).encode()


def test_custom_prefix_and_disabled_views(make_middleware: MakeMiddleware) -> None:
    custom = make_middleware(model_app, views_prefix="/_monitor")
    assert get(custom, "/_monitor/status").status == 200
    assert json.loads(get(custom, "/modeltap/status").body)["app"] == "/modeltap/status"

    disabled = make_middleware(model_app, views_prefix=False)
    assert json.loads(get(disabled, "/modeltap/status").body)["app"] == "/modeltap/status"

    # None means "not given" and True "keep the configured prefix": the default stays on.
    for keep in (None, True):
        assert get(make_middleware(model_app, views_prefix=keep), "/modeltap/status").status == 200


def test_views_under_a_server_root_path(make_middleware: MakeMiddleware) -> None:
    result = get(make_middleware(model_app), "/modeltap/status", root_path="/svc")

    assert result.status == 200
    assert json.loads(result.body)["model"]["name"] == "demo"


@pytest.mark.timeout(30)
def test_views_are_not_counted_as_model_traffic(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(model_app)
    run_asgi(middleware, make_http_scope("POST", "/predict"), http_request_messages(b'{"x": 1}'))
    for path in ("/modeltap/status", "/modeltap/metrics", "/modeltap/nope"):
        get(middleware, path)
    get(middleware, "/modeltap/status", client=REMOTE)

    assert middleware.tap.flush(5.0)
    document = json.loads(get(middleware, "/modeltap/status").body)
    assert document["requests"]["total"] == 1
    assert document["monitoring"]["records_processed"] == 1


def test_status_document_names_the_process(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(model_app)

    document = json.loads(get(middleware, "/modeltap/status").body)

    assert document["process"]["pid"] == os.getpid()
    assert document["process"]["instance_id"]
    assert document["uptime_s"] >= 0
    assert document["requests"] == {"total": 0, "errors": 0, "client_disconnected": 0, "dropped": 0}
    assert {"queue_depth", "worker_lag_s", "export_failures", "last_export_unix_s"} <= set(
        document["monitoring"]
    )


# --- Prometheus exposition -------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"'
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?P<labels>\{{(?:{_LABEL}(?:,{_LABEL})*)?\}})? (?P<value>\S+)$")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_exposition(text: str) -> tuple[dict[str, str], list[Sample]]:
    """Strict parse of text format 0.0.4; fails on any line that is not HELP, TYPE or a sample."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: list[Sample] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert re.match(rf"^# HELP {_NAME} \S", line), line
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in _TYPES, line
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
        else:
            match = _SAMPLE.match(line)
            assert match is not None, f"not a sample line: {line!r}"
            name = match["name"]
            family = next(
                (
                    f
                    for f in (
                        name,
                        *(name.removesuffix(s) for s in ("_bucket", "_sum", "_count") if name.endswith(s)),
                    )
                    if f in types
                ),
                None,
            )
            assert family is not None, f"sample {name} has no TYPE line before it"
            labels = tuple((k, unescape(v)) for k, v in PROMETHEUS_LABEL.findall(match["labels"] or ""))
            samples.append(Sample(name, labels, float(match["value"])))
    keys = [(s.name, s.labels) for s in samples]
    assert len(keys) == len(set(keys)), "duplicate series"
    return types, samples


def histogram_buckets(
    samples: list[Sample], family: str
) -> dict[tuple[tuple[str, str], ...], list[tuple[str, float]]]:
    series: dict[tuple[tuple[str, str], ...], list[tuple[str, float]]] = defaultdict(list)
    for sample in samples:
        if sample.name == family + "_bucket":
            labels = dict(sample.labels)
            le = labels.pop("le")
            series[tuple(sorted(labels.items()))].append((le, sample.value))
    return series


def drive_mixed_traffic(middleware: ModelTapMiddleware) -> None:
    body = http_request_messages(b'{"instances": [[1, 2], [3, null]]}')
    for path, headers in (
        ("/v1/models/demo:predict", [(b"x-send-version", b'v"1\\2')]),
        ("/v1/models/demo:predict", []),
        ("/v1/models/demo/unavailable", []),
        ("/v1/models/demo/fail", []),
        ("/v1/models/demo:predict", [(b"content-type", b"application/json")]),
    ):
        run_asgi(middleware, make_http_scope("POST", path, headers=headers), body)


@pytest.mark.timeout(30)
def test_prometheus_text_is_well_formed(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(model_app)
    drive_mixed_traffic(middleware)
    assert middleware.tap.flush(5.0)

    result = get(middleware, "/modeltap/metrics")
    types, samples = parse_exposition(result.body.decode())

    family = "http_server_request_duration_seconds"
    assert types[family] == "histogram"
    assert types["modeltap_capture_dropped_total"] == "counter"
    assert types["modeltap_data_quality_violations_total"] == "counter"
    buckets = histogram_buckets(samples, family)
    assert len(buckets) >= 3  # 200, 503 and the exception each have their own series
    le_sequences = {tuple(le for le, _ in series) for series in buckets.values()}
    assert len(le_sequences) == 1, "every series must use the same le strings"
    [le_values] = le_sequences
    assert le_values[-1] == "+Inf"
    bounds = [float(le) for le in le_values[:-1]]
    assert bounds == sorted(set(bounds))
    # Go's FormatFloat(b, 'g', -1, 64), as the Collector's Prometheus exporter writes bounds:
    # 10 s is "10", not "10.0" (the fleet rules match `le` byte for byte).
    assert le_values[:-1] == ("0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5",
                              "0.75", "1", "2.5", "5", "7.5", "10")  # fmt: skip
    counts = {(s.name, tuple(sorted(s.labels))): s.value for s in samples}
    for labels, series in buckets.items():
        values = [v for _, v in series]
        assert all(a <= b for a, b in itertools.pairwise(values)), series
        assert values[-1] == counts[(family + "_count", labels)]
        assert (family + "_sum", labels) in counts
        assert all(v == int(v) for v in values)
    assert sum(counts[(family + "_count", labels)] for labels in buckets) == 5
    # Values round-trip through label escaping.
    versions = {dict(s.labels).get("modeltap_model_version") for s in samples}
    assert 'v"1\\2' in versions


@pytest.mark.timeout(30)
def test_le_labels_are_stable_across_scrapes(make_middleware: MakeMiddleware) -> None:
    middleware = make_middleware(model_app)
    drive_mixed_traffic(middleware)
    assert middleware.tap.flush(5.0)
    first = parse_exposition(get(middleware, "/modeltap/metrics").body.decode())[1]
    drive_mixed_traffic(middleware)
    assert middleware.tap.flush(5.0)
    second = parse_exposition(get(middleware, "/modeltap/metrics").body.decode())[1]

    def le_strings(samples: list[Sample]) -> set[tuple[str, ...]]:
        buckets = histogram_buckets(samples, "http_server_request_duration_seconds")
        return {tuple(le for le, _ in series) for series in buckets.values()}

    assert le_strings(first) == le_strings(second)
    assert len(le_strings(first)) == 1
    counts_first = {(s.name, s.labels): s.value for s in first if s.name.endswith("_count")}
    counts_second = {(s.name, s.labels): s.value for s in second if s.name.endswith("_count")}
    assert counts_first.keys() == counts_second.keys()
    assert all(counts_second[k] == 2 * v for k, v in counts_first.items())


def test_empty_exposition_parses(make_middleware: MakeMiddleware) -> None:
    types, samples = parse_exposition(get(make_middleware(model_app), "/modeltap/metrics").body.decode())

    assert "http_server_request_duration_seconds" in types
    assert not any(s.name.startswith("http_server_request_duration_seconds") for s in samples)
    assert all(math.isfinite(s.value) for s in samples)


# --- writes from web pages -------------------------------------------------------------------------


def _write_views() -> tuple[LocalViews, list[bytes]]:
    received: list[bytes] = []

    def endpoint(body: bytes, content_type: str) -> tuple[int, bytes]:
        received.append(body)
        return 200, b'{"accepted": 1}'

    snapshot = Snapshot(taken_unix_ns=2, start_unix_ns=1, instance_id="i", pid=1)
    return LocalViews("", lambda: snapshot, writes={"/rollback": endpoint}), received


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([], 200),  # a program: curl, a labelling job
        ([(b"sec-fetch-site", b"same-origin"), (b"origin", b"http://127.0.0.1:9464")], 200),
        ([(b"sec-fetch-site", b"none")], 200),  # typed or bookmarked by the operator
        # Behind a proxy that rewrites Host, the browser's Sec-Fetch-Site decides alone.
        ([(b"sec-fetch-site", b"same-origin"), (b"origin", b"https://models.example")], 200),
        ([(b"origin", b"http://127.0.0.1:9464")], 200),  # the page's own origin
        ([(b"sec-fetch-site", b"cross-site"), (b"origin", b"https://evil.example")], 403),
        ([(b"sec-fetch-site", b"same-site"), (b"origin", b"http://127.0.0.1:3000")], 403),
        ([(b"origin", b"https://evil.example")], 403),  # a browser without Sec-Fetch-*
        ([(b"origin", b"null")], 403),  # a sandboxed page or a file
        ([(b"origin", b"http://127.0.0.1:3000")], 403),  # another port is another origin
    ],
)
def test_writes_from_another_sites_page_are_refused(headers: list[tuple[bytes, bytes]], status: int) -> None:
    """A page the operator visits could otherwise POST to the loopback admin port through their
    browser (no preflight for a form or a no-cors fetch) and roll the model back."""
    views, received = _write_views()
    scope = make_http_scope(
        "POST",
        "/rollback",
        headers=[(b"host", b"127.0.0.1:9464"), (b"content-type", b"text/plain"), *headers],
        client=LOOPBACK,
    )

    result = run_asgi(views, scope, http_request_messages(b'{"cause": "x"}'))

    assert result.status == status
    assert received == ([b'{"cause": "x"}'] if status == 200 else [])
    if status == 403:
        assert b"another site's page" in result.body


@pytest.mark.parametrize(
    ("host", "token", "status"),
    [
        (b"127.0.0.1:9464", False, 200),
        (b"localhost:9464", False, 200),
        (b"LOCALHOST", False, 200),
        (b"[::1]:9464", False, 200),
        (b"127.0.0.2:9464", False, 200),
        (b"models.localhost:9464", False, 200),  # *.localhost is loopback by definition
        (b"[::ffff:127.0.0.1]:9464", False, 200),  # IPv4-mapped loopback
        (None, False, 200),  # HTTP/1.0 without Host: a program
        # A page whose name was rebound to 127.0.0.1: same origin to the browser, so its Origin and
        # Sec-Fetch-Site say nothing; its Host still names the page.
        (b"evil.example:9464", False, 403),
        (b"evil.example", False, 403),
        (b"127.0.0.1.evil.example:9464", False, 403),
        (b"[2001:db8::1]:9464", False, 403),
        (b"evil.example:9464", True, 200),  # the token is what it is, whatever the name
    ],
)
def test_a_loopback_write_must_name_this_machine(host: bytes | None, token: bool, status: int) -> None:
    received: list[bytes] = []

    def endpoint(body: bytes, content_type: str) -> tuple[int, bytes]:
        received.append(body)
        return 200, b'{"accepted": 1}'

    snapshot = Snapshot(taken_unix_ns=2, start_unix_ns=1, instance_id="i", pid=1)
    views = LocalViews("", lambda: snapshot, token="s3cret", writes={"/rollback": endpoint})
    headers = [(b"content-type", b"text/plain")]
    if host is not None:
        origin = b"http://" + host
        headers += [(b"host", host), (b"origin", origin), (b"sec-fetch-site", b"same-origin")]
    if token:
        headers.append((b"authorization", b"Bearer s3cret"))
    scope = make_http_scope("POST", "/rollback", headers=headers, client=LOOPBACK)

    result = run_asgi(views, scope, http_request_messages(b'{"cause": "x"}'))

    assert result.status == status, result.body
    assert received == ([b'{"cause": "x"}'] if status == 200 else [])
    if status == 403:
        assert b"Host header" in result.body
