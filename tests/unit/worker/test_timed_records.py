"""Records whose payload was sampled out are filed by their shape, worked out once per shape.

Under sustained load nearly every record is timed and counted without its payload; what such a
record is filed under (model identity, route, status, error) is remembered per shape of the
fields that decide it, and a traced one's span has its repeating part looked up by that shape.
Here generated sequences of such records go through the pipeline three times: untraced (the
remembered shapes), traced (the same, with spans) and traced with every record worked out in full
(`spans_by_shape` off, as a record with its payload is), and every count, duration, identity and
served version must come out the same, and the spans byte for byte.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource

from modeltap.capture import compiled
from modeltap.config import ModelTapConfig
from modeltap.export import span_wire
from modeltap.export.spans import SpanOptions
from modeltap.handoff import framing
from modeltap.records import COLD_START_KEY, PROXY_ERROR_KEY, ROUTE_TEMPLATE_KEY, RawRecord, TraceIds
from modeltap.worker import pipeline as pipeline_module
from modeltap.worker.analyzer import Analyzer, statistics
from modeltap.worker.pipeline import BatchPipeline
from tests.support.asgi_driver import make_http_scope
from tests.support.timed_shapes import in_filing_order

PATHS = [
    "/predict",
    "/v1/models/churn:predict",
    "/v1/models/churn/versions/2:predict",
    "/v2/models/fraud/infer",
    "/v2/models/fraud/versions/7/infer",
    "/v2/models/%s/infer" % ("x" * 300),
    "/v1/chat/completions",
    "/health",
]


class Route:
    """A framework's route as Starlette's: compared by value, so not hashable."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Route) and other.path == self.path


ROUTES = [Route("/v1/models/{model}:predict"), Route("/predict"), Route("/predict")]


# What decides where a timed record is filed, and the values each may take.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "method": st.sampled_from(["POST", "GET", "PATCH", "BREW"]),
    "path": st.sampled_from(PATHS),
    "scheme": st.sampled_from(["http", "https"]),
    "http_version": st.sampled_from(["1.1", "2"]),
    # A record that crossed to the monitor carries its route's template, not the route object.
    "template": st.sampled_from([None, "/v1/models/{model}:predict", "/predict"]),
    # Or, in the serving process, the route object itself, under the mount paths routing added.
    "route": st.sampled_from([None, *ROUTES]),
    "root_path": st.sampled_from(["", "/api", "/api/v1"]),
    "root_path_at_start": st.sampled_from(["", "/api"]),
    "proxy_error": st.sampled_from([None, "client_disconnected", "upstream_timeout"]),
    "cold": st.booleans(),
    "version": st.sampled_from([None, b"1", b"2", b"3", b"9", b"v 1\x00"]),
    "model_id": st.sampled_from([None, b"churn", b"other", b"m-1", b"m-2", b"m-3"]),
    "unanswered": st.booleans(),  # no `ended`: the response never finished
    "status": st.sampled_from([200, 201, 404, 500, 503, 0]),
    "exception": st.sampled_from([None, "ValueError"]),
    "disconnected": st.booleans(),
    "weight": st.sampled_from([1, 2, 4]),
    # ASGI lets an app send its header pairs as lists (unhashable: no shape to remember).
    "header_lists": st.booleans(),
    # What a span takes from the request and not from what files the record.
    "user_agent": st.sampled_from([None, b"wrk", b"curl/8.5"]),
    "request_id": st.sampled_from([None, b"r-1", b"r-2"]),
    "event_id": st.sampled_from([None, b"e-1"]),
    "tenant": st.sampled_from([None, b"a", b"b"]),
    "client": st.sampled_from([("127.0.0.1", 5000), ("127.0.0.1", 5001), ("10.0.0.2", 6000), None]),
    "server": st.sampled_from([("127.0.0.1", 8000), ("127.0.0.1", None), None]),
    "query": st.sampled_from([b"", b"a=1", b"token=secret"]),
    "sizes": st.sampled_from([(-1, 0), (68, 20), (68, 21)]),
    "first_byte": st.booleans(),
}


def timed_record(fields: dict[str, Any], started: float, took: float) -> RawRecord:
    """A record without its payload (payload weight 0)."""
    request_headers = [(b"content-type", b"application/json")]
    if fields["user_agent"] is not None:
        request_headers.append((b"user-agent", fields["user_agent"]))
    if fields["request_id"] is not None:
        request_headers.append((b"x-request-id", fields["request_id"]))
    if fields["tenant"] is not None:
        request_headers.append((b"X-Tenant", fields["tenant"]))
    scope = make_http_scope(
        fields["method"],
        fields["path"],
        headers=request_headers,
        query_string=fields["query"],
        root_path=fields["root_path"],
        client=fields["client"],
        server=fields["server"],
        scheme=fields["scheme"],
        http_version=fields["http_version"],
    )
    if fields["route"] is not None:
        scope["route"] = fields["route"]
    if fields["template"] is not None:
        scope[ROUTE_TEMPLATE_KEY] = fields["template"]
    if fields["proxy_error"] is not None:
        scope[PROXY_ERROR_KEY] = fields["proxy_error"]
    if fields["cold"]:
        scope[COLD_START_KEY] = True
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    if fields["version"] is not None:
        headers.append((b"x-model-version", fields["version"]))
    if fields["model_id"] is not None:
        headers.append((b"ce-modelid", fields["model_id"]))
    if fields["event_id"] is not None:
        headers.append((b"ce-id", fields["event_id"]))
    if fields["header_lists"]:
        headers = [[name, value] for name, value in headers]  # type: ignore[misc]
    ended = None if fields["unanswered"] else started + took
    response_started = started + took / 2 if fields["first_byte"] else None
    request_size, response_size = fields["sizes"]
    return (
        scope, fields["root_path_at_start"], int(started * 1e9), started, response_started, ended,
        started + took * 1.5, fields["status"], headers, [], request_size, [], response_size,
        fields["exception"], fields["disconnected"], None, fields["weight"], 0, response_started,
    )  # fmt: skip


@st.composite
def timed_records(draw: st.DrawFn) -> list[RawRecord]:
    """Sequences of records each like an earlier one but for a field or two (most fields alike, as
    in real traffic, so that every field is the one difference between some two records)."""
    seen = [{name: draw(strategy) for name, strategy in FIELDS.items()}]
    records = []
    for _ in range(draw(st.integers(1, 60))):
        fields = dict(draw(st.sampled_from(seen)))
        for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=2)):
            fields[name] = draw(FIELDS[name])
        seen.append(fields)
        records.append(timed_record(fields, draw(st.floats(0.0, 100.0)), draw(st.floats(0.0001, 2.0))))
    return records


NO_CAPTURED_HEADERS = SpanOptions(False, 0, (), ())


def with_trace_ids(records: list[RawRecord]) -> list[RawRecord]:
    """The records traced, each with trace ids of its own (a remote parent for some)."""
    out = []
    for i, record in enumerate(records):
        parent = 0x99 if i % 3 else 0
        ids = TraceIds(0x1234 << 64 | i + 1, 0x42 + i, parent, i % 3 == 1, True, "k=v" * (i % 2), False)
        out.append((*record[:15], ids, *record[16:]))
    return out


def run(
    records: list[RawRecord],
    traced: bool,
    batch: int,
    by_shape: bool = True,
    options: SpanOptions = NO_CAPTURED_HEADERS,
) -> tuple[Any, ...]:
    # Few names and versions: the caps are reached, and what is over them is counted.
    config = ModelTapConfig(monitor="inline", max_models=3, max_versions_per_model=2)
    stats = statistics(config, None)
    # Steps by record counts only (not by the clock), so both runs step at the same records.
    worker = BatchPipeline(
        config, None, stats, options, Resource.get_empty, "default", flush_age_s=float("inf")
    )
    worker.spans_by_shape = by_shape
    spans = []
    pending: list[dict[Any, Any]] = []
    for start in range(0, len(records), batch):
        spans += worker.process(records[start : start + batch])
        pending.append(
            {
                key: (list(value), worker._failed[key], worker._gone[key])
                for key, value in worker._latency.items()
            }
        )
    assert len(spans) == (len(records) if traced else 0)
    assert not worker.errors  # every record processed, none given up
    worker.flush_pending()
    return (
        spans,
        pending,
        [(p.attributes, p.counts, p.count, p.sum, p.min, p.max) for p in stats.duration_points()],
        [
            (v.name, v.version, v.requests, v.errors, v.latency_count, v.latency_sum_s)
            for v in stats.model_views()
        ],
        stats.identities.live(),
        stats.identities.over_cap,
        [(name, version, served.answers) for name, version, served in stats.served.seen()],
    )


@settings(max_examples=150, deadline=None)
@given(timed_records(), st.sampled_from([1, 7, 256]), st.sampled_from([2, 256]))
def test_timed_records_are_filed_as_if_worked_out_one_by_one(
    records: list[RawRecord], batch: int, shapes_limit: int
) -> None:
    original = pipeline_module.SHAPES_LIMIT
    pipeline_module.SHAPES_LIMIT = shapes_limit  # 2: the remembered shapes are cleared often
    try:
        _, *untraced = run(records, traced=False, batch=batch)
        in_full = run(with_trace_ids(records), traced=True, batch=batch, by_shape=False)
        assert untraced == list(in_full[1:])
        assert run(with_trace_ids(records), traced=True, batch=batch) == in_full
    finally:
        pipeline_module.SHAPES_LIMIT = original


@settings(max_examples=60, deadline=None)
@given(timed_records(), st.sampled_from([2, 256]))
def test_spans_by_shape_are_the_spans_worked_out_in_full_with_captured_headers(
    records: list[RawRecord], shapes_limit: int
) -> None:
    """With request and response headers captured on spans (the configuration names them)."""
    options = SpanOptions(False, 0, ("x-tenant", "user-agent"), ("x-model-version", "ce-id"))
    original = span_wire._SHAPES_LIMIT
    span_wire._SHAPES_LIMIT = shapes_limit
    try:
        in_full = run(with_trace_ids(records), traced=True, batch=7, by_shape=False, options=options)
        assert run(with_trace_ids(records), traced=True, batch=7, options=options) == in_full
    finally:
        span_wire._SHAPES_LIMIT = original


def _counted(stats: Any) -> int:
    return sum(point.count for point in stats.duration_points())


def _payload_record() -> RawRecord:
    body = b'{"instances": [[1.0, 2.0]]}'
    answer = b'{"predictions": [0.5]}'
    return (
        make_http_scope("POST", "/v1/models/m:predict"), "", 0, 0.0, None, 0.001, 0.001, 200,
        [(b"content-type", b"application/json")], [body], len(body), [answer], len(answer),
        None, False, None, 1, 1, None,
    )  # fmt: skip


def _timed_record(path: str = "/v1/models/m:predict", status: int = 200) -> RawRecord:
    return (
        make_http_scope("POST", path), "", 0, 0.0, None, 0.001, 0.001, status,
        [], [], -1, [], 0, None, False, None, 1, 0, None,
    )  # fmt: skip


def test_shapes_remembered_are_bounded_whatever_paths_clients_send() -> None:
    config = ModelTapConfig(monitor="inline")
    stats = statistics(config, None)
    worker = BatchPipeline(config, None, stats, SpanOptions(False, 0, (), ()), Resource.get_empty, "default")
    worker.process([_timed_record(f"/v1/models/m{i}:predict", 404) for i in range(5000)])
    assert len(worker._shapes) <= pipeline_module.SHAPES_LIMIT
    worker.flush_pending()
    # Every one of them counted, under one identity (a 404 vouches for no name).
    assert _counted(stats) == 5000
    assert stats.identities.live() == {"unknown": ("unknown",)}


def test_the_monitor_steps_timed_records_in_large_batches_and_payloads_as_before() -> None:
    """In the monitor process the statistics step per MONITOR_FLUSH_RECORDS timed-only records
    (or a snapshot interval), decoded payloads per FLUSH_RECORDS; in the serving process
    (inline) everything per FLUSH_RECORDS, as a step holds the interpreter there."""
    # No snapshot interval ends while the test runs: the steps come from the record counts alone.
    config = ModelTapConfig(monitor="inline", model_name="m", snapshot_interval_s=3600.0)
    monitor = Analyzer(config, None, mode="process")
    timed = pipeline_module.FLUSH_RECORDS + 44
    monitor.process([_timed_record() for _ in range(timed)])
    assert _counted(monitor.stats) == 0  # waiting for a larger step
    monitor.process([_payload_record() for _ in range(pipeline_module.FLUSH_RECORDS)])
    assert _counted(monitor.stats) == timed + pipeline_module.FLUSH_RECORDS
    more = pipeline_module.MONITOR_FLUSH_RECORDS
    monitor.process([_timed_record() for _ in range(more)])
    assert _counted(monitor.stats) == timed + pipeline_module.FLUSH_RECORDS + more

    inline = Analyzer(config, None, mode="inline")
    inline.process([_timed_record() for _ in range(pipeline_module.FLUSH_RECORDS)])
    assert _counted(inline.stats) == pipeline_module.FLUSH_RECORDS


def through_the_hand_off(records: list[RawRecord], grouped: bool, batch: int) -> tuple[Any, ...]:
    """The records shipped in batches of `batch` and analysed as the monitor does: by group
    (`decode_grouped`, `process_timed`), or one by one (`decode_records`) in the order grouping
    files them; last, how many went one by one."""
    config = ModelTapConfig(monitor="inline", max_models=3, max_versions_per_model=2)
    stats = statistics(config, None)
    worker = BatchPipeline(
        config, None, stats, SpanOptions(False, 0, (), ()), Resource.get_empty, "default",
        flush_age_s=float("inf"),
    )  # fmt: skip
    encoder = framing.RecordEncoder({b"content-type"}, {b"content-type", b"x-model-version", b"ce-modelid"})
    one_at_a_time = 0
    for start in range(0, len(records), batch):
        out = [framing.COUNT.pack(len(records[start : start + batch]))]
        for raw in records[start : start + batch]:
            encoder.encode_into(raw, out)
        payload = memoryview(b"".join(out))
        if grouped:
            decoded, groups = framing.decode_grouped(payload)
        else:  # the same records one by one, in the order the monitor files them by group
            decoded, groups = in_filing_order(framing.decode_records(payload)), []
        worker.process(decoded)
        worker.process_timed(groups)
        one_at_a_time += len(decoded)
    assert not worker.errors
    worker.flush_pending()

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 9)  # sums added in another order

    return (
        sorted(
            (p.attributes, p.counts, p.count, rounded(p.sum), p.min, p.max) for p in stats.duration_points()
        ),
        [
            (v.name, v.version, v.requests, v.errors, v.latency_count, rounded(v.latency_sum_s))
            for v in stats.model_views()
        ],
        stats.identities.live(),
        stats.identities.over_cap,
        [(name, version, served.answers) for name, version, served in stats.served.seen()],
        one_at_a_time,
    )


@pytest.mark.skipif(not compiled.AVAILABLE, reason="the extension is not built here")
@settings(max_examples=150, deadline=None)
@given(timed_records(), st.sampled_from([1, 7, 256]))
def test_timed_records_by_group_are_counted_as_one_by_one(records: list[RawRecord], batch: int) -> None:
    *by_group, one_at_a_time = through_the_hand_off(records, grouped=True, batch=batch)
    *one_by_one, _ = through_the_hand_off(records, grouped=False, batch=batch)
    assert by_group == one_by_one
    assert one_at_a_time == 0  # every record went by group (fewer shapes than a batch keeps)


@pytest.mark.skipif(not compiled.AVAILABLE, reason="the extension is not built here")
def test_every_record_of_a_group_over_the_caps_is_counted() -> None:
    """Five model names answered four times each, three names allowed: the eight answers of the
    two names over the cap are each counted, as they are one by one; so are the served versions."""
    fields = dict(
        method="POST", path="/predict", scheme="http", http_version="1.1", route=None, template=None,
        root_path="", root_path_at_start="", proxy_error=None, cold=False, version=b"1", model_id=None,
        unanswered=False, status=200, exception=None, disconnected=False, weight=1, header_lists=False,
        user_agent=None, request_id=None, event_id=None, tenant=None, client=("127.0.0.1", 5000),
        server=("127.0.0.1", 8000), query=b"", sizes=(-1, 0), first_byte=False,
    )  # fmt: skip
    assert set(fields) == set(FIELDS)
    names = [b"m-1", b"m-2", b"m-3", b"m-4", b"m-5"]
    records = [timed_record({**fields, "model_id": names[i % 5]}, float(i), 0.01) for i in range(20)]
    *by_group, one_at_a_time = through_the_hand_off(records, grouped=True, batch=256)
    assert one_at_a_time == 0
    assert tuple(by_group) == through_the_hand_off(records, grouped=False, batch=256)[:-1]
    assert by_group[3] == 8  # identities over the caps
    assert sorted(answers for _, _, answers in by_group[4]) == [4, 4, 4]
