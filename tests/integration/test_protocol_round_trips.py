"""Every payload protocol modeltap decodes, round-tripped through a real uvicorn on loopback.

One server runs for the module: a Starlette app imitating the model servers (KServe V1, Open
Inference Protocol V2 with the binary extension and `infer_stream` SSE, Seldon Core v1, TF Serving
columnar / classify / regress, OpenAI-style chat, completions and embeddings, plain JSON and a route
pinned to a user field mapping) answers canned bodies from tests/fixtures/protocols/, wrapped in
`ModelTapMiddleware`. The same app is reachable without the middleware (header `x-bare`), so each
answer is checked byte for byte against the unmonitored one and against the canned body.

Then `/modeltap/status` must show what the payloads hold (PROTOCOLS.md §1-§8): the model name and
version, the input and output columns with exact counts, missing counts, means and categories, and
the violation counts. Every check compares the status before and after its own requests, so the
tests share the server and do not depend on their order. A property test feeds random JSON to
`decode_exchange` on every protocol's path.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from modeltap import ModelTapConfig, ModelTapMiddleware
from modeltap.protocols.detect import DecodeOptions, decode_exchange
from modeltap.protocols.mapping import FieldMapping
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes
from tests.support.asgi_driver import ASGIApp, Receive, Scope, Send
from tests.support.servers import serve

pytestmark = pytest.mark.timeout(120)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "protocols"
SCENARIO_HEADER = "x-scenario"  # which canned reply the fake model server sends
BARE_HEADER = "x-bare"  # served by the same app, without modeltap
UNKNOWN = "unknown"
JSON = "application/json"
SSE = "text/event-stream"
# Streamed replies: the first chunk after a pause (time to first token), then a gap per chunk.
FIRST_CHUNK_DELAY_S = 0.02
CHUNK_GAP_S = 0.005
# A path pinned to the field mapping; without the pin it would be detected as Seldon by its path.
ODD_PATH = "/odd/api/v1.0/predictions"
PROTOCOL_ROUTES = {"/odd": "mapping"}
PAYLOAD_MAPPING = {
    "features": "payload.rows[*]",
    "outputs": "result.scores[*]",
    "model_name": "meta.model",
    "model_version": "meta.version",
    "request_id": "meta.id",
}
REASONS = {"decode_error", "missing", "type", "schema", "out_of_range"}
TIMING_OUTPUTS = ("time_to_first_token_s", "response_duration_s", "tokens_per_second")
BIG_INT = b"1" + b"0" * 400  # valid JSON, beyond the float range


# ---- what the fake model server answers, and what the status must show ---------------------------


@dataclass(frozen=True)
class Reply:
    """A canned answer: one body, or chunks streamed with pauses between them."""

    status: int = 200
    content_type: str = JSON
    chunks: tuple[bytes, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    streamed: bool = False
    delay_s: float = 0.0  # before answering at all (a model that takes its time)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True)
class Call:
    path: str
    body: bytes
    reply: Reply
    headers: tuple[tuple[str, str], ...] = (("content-type", JSON),)


@dataclass(frozen=True)
class Expected:
    """What one scenario's calls add to the status: decoded columns (numbers as floats, None for
    missing) of one model identity, and the violations counted by reason."""

    model: tuple[str, str]
    rows: int
    features: Mapping[str, list[Any]]
    outputs: Mapping[str, list[Any]]
    violations: Mapping[str, int]


@dataclass(frozen=True)
class Scenario:
    id: str
    calls: tuple[Call, ...]
    expected: Expected
    generative: bool = False  # OpenAI-style: timing outputs besides the decoded ones
    streamed: bool = False


@dataclass(frozen=True)
class Stat:
    """One column's share of a status feature row (`mean` may be `pytest.approx` or `ANY`)."""

    count: int
    missing: int
    mean: Any
    categories: dict[str, int]


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def sse(events: list[Any], tail: str = "") -> tuple[bytes, ...]:
    """Frame events as `data: {json}\\n\\n` (MLServer `_as_sse`, OpenAI); `[DONE]` stays text."""
    chunks = [
        b"data: " + (event.encode() if isinstance(event, str) else dumps(event)) + b"\n\n" for event in events
    ]
    if tail:
        chunks.append(tail.encode())  # a stream cut mid-event
    return tuple(chunks)


def identity(expected: Mapping[str, Any]) -> tuple[str, str]:
    return expected.get("model_name") or UNKNOWN, expected.get("model_version") or UNKNOWN


def load(protocol: str, name: str) -> dict[str, Any]:
    case: dict[str, Any] = json.loads((FIXTURES / protocol / f"{name}.json").read_text())
    return case


def expected_stat(values: list[Any]) -> Stat:
    present = [value for value in values if value is not None]
    numbers = [float(v) for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
    categories = Counter(
        ("true" if value else "false") if isinstance(value, bool) else str(value)
        for value in present
        if isinstance(value, (bool, str))
    )
    mean = pytest.approx(sum(numbers) / len(numbers), rel=1e-6, abs=1e-9) if numbers else None
    return Stat(len(present), len(values) - len(present), mean, dict(categories))


# ---- scenarios from the fixtures ------------------------------------------------------------------


def _tensor_bytes(tensor: Mapping[str, Any]) -> bytes:
    """A binary-extension tensor: BYTES elements as a 4-byte little-endian length and the bytes,
    other types as numpy writes them ("nan" as a string in the fixture is the float)."""
    if tensor["dtype"] == "bytes":
        items = [value.encode() for value in tensor["values"]]
        return b"".join(len(item).to_bytes(4, "little") + item for item in items)
    values = [float(v) if isinstance(v, str) else v for v in tensor["values"]]
    return np.asarray(values, dtype=tensor["dtype"]).tobytes()


def binary_call(path: str, header: Any, raw: bytes, reply: Reply, header_length: int | None = None) -> Call:
    """An Open Inference Protocol binary-extension request: the JSON header, then raw tensors."""
    head = dumps(header)
    length = len(head) if header_length is None else header_length
    headers = (("content-type", "application/octet-stream"), ("inference-header-content-length", str(length)))
    return Call(path, head + raw, reply, headers)


def oip_scenario(name: str, path: str | None = None, model: tuple[str, str] | None = None) -> Scenario:
    case = load("oip_v2", name)
    spec, expected = case["exchange"], case["expected"]
    if "response_events" in spec:
        reply = Reply(spec["status"], SSE, sse(spec["response_events"]), streamed=True)
    else:
        reply = Reply(spec["status"], JSON, (dumps(spec["response"]),))
    path = path or spec["path"]
    if "header" in spec:
        # The binary extension: the JSON header, then each binary tensor's raw bytes in input order.
        raw = b"".join(_tensor_bytes(tensor) for tensor in spec["tensors"])
        call = binary_call(path, spec["header"], raw, reply)
    else:
        call = Call(path, dumps(spec["request"]), reply)
    return Scenario(
        f"oip_v2-{name}",
        (call,),
        Expected(
            model or identity(expected),
            expected["rows"],
            expected["features"],
            expected["outputs"],
            expected["violations"],
        ),
    )


def _raw(case: Mapping[str, Any], key: str) -> bytes:
    """A fixture body: `<key>_text` verbatim (NaN tokens), else `<key>` as JSON, else empty."""
    if f"{key}_text" in case:
        text: str = case[f"{key}_text"]
        return text.encode()
    value = case.get(key)
    return b"" if value is None else dumps(value)


def tabular_scenario(
    protocol: str, name: str, path: str | None = None, model: tuple[str, str] | None = None, status: int = 200
) -> Scenario:
    """Seldon and TF Serving fixtures (layout in tests/fixtures/protocols/seldon/_source.md)."""
    case = load(protocol, name)
    expected = case["expected"]
    return Scenario(
        f"{protocol}-{name}",
        (Call(path or case["path"], _raw(case, "request"), Reply(status, JSON, (_raw(case, "response"),))),),
        Expected(
            model or identity(expected),
            expected["rows"],
            expected["features"],
            expected.get("outputs", {}),
            expected["violations"],
        ),
    )


def openai_scenario(name: str) -> Scenario:
    case = load("openai", name)
    expected = case["expected"]
    if "response_events" in case:
        reply = Reply(
            200,
            case["response_content_type"],
            sse(case["response_events"], case.get("response_tail", "")),
            streamed=True,
        )
    else:
        reply = Reply(200, case["response_content_type"], (dumps(case["response"]),))
    return Scenario(
        f"openai-{name}",
        (Call(case["path"], dumps(case["request"]), reply),),
        Expected(
            identity(expected),
            expected["rows"],
            expected["features"],
            expected["outputs"],
            expected["violations"],
        ),
        generative=True,
        streamed=reply.streamed,
    )


# Fixtures with `feature_names` need a reference profile, which this server does not configure.
OIP_SCENARIOS = [
    # PROTOCOLS.md §3 example at a versioned URL: the URL's version wins over the payload's "v2".
    oip_scenario("spec_example", "/v2/models/m/versions/2/infer", ("m", "2")),
    oip_scenario("binary_request", "/v2/models/m/versions/2/infer", ("m", "2")),
    # No version in the URL: it comes from the first event's `model_version`.
    oip_scenario("sse_infer_stream", "/v2/models/m/infer_stream", ("m", "3")),
    oip_scenario("pd_request"),
    oip_scenario("fp32_matrix"),
    oip_scenario("rank3"),
    oip_scenario("bytes_str"),
    oip_scenario("error_400"),
]
SELDON_SCENARIOS = [
    tabular_scenario("seldon", name)
    for name in (
        "ndarray_names",
        "ndarray_nan",
        "tensor",
        "tensor_shape_mismatch",
        "names_width_mismatch",
        "json_data",
        "json_data_records",
        "str_data",
        "bin_data",
        "graph_request_path",
    )
]
TF_SCENARIOS = [
    tabular_scenario("tf_serving", "columnar_named", "/v1/models/tf/versions/3:predict", ("tf", "3")),
    tabular_scenario("tf_serving", "classify_context", "/v1/models/tf/versions/3:classify", ("tf", "3")),
    tabular_scenario("tf_serving", "columnar_b64_nan"),
    tabular_scenario("tf_serving", "columnar_scalars"),
    tabular_scenario("tf_serving", "classify_b64"),
    tabular_scenario("tf_serving", "classify_nan_scores"),
    tabular_scenario("tf_serving", "regress_example"),
    tabular_scenario("tf_serving", "regress_result"),
    tabular_scenario("tf_serving", "error", status=404),
]
OPENAI_SCENARIOS = [
    openai_scenario(name)
    for name in (
        "chat_nonstream",
        "chat_stream_usage",
        "chat_stream_interrupted",
        "chat_stream_tool_calls",
        "chat_tool_calls",
        "chat_content_parts",
        "completions_list_prompt",
        "embeddings_list_input",
    )
]

# ---- hand-written scenarios -------------------------------------------------------------------------

KSERVE_V1 = Scenario(
    "kserve_v1-rows",
    (
        # PROTOCOLS.md §1 verbatim; the version comes from the `x-model-version` response header.
        Call(
            "/v1/models/m:predict",
            b'{"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}',
            Reply(chunks=(b'{"predictions": [1, 1]}',), headers=(("x-model-version", "kv1-2024"),)),
        ),
        Call(
            "/v1/models/m:predict",
            b'{"instances": [[5.0, null, 1.0, 0.2]]}',
            Reply(chunks=(b'{"predictions": [0]}',), headers=(("x-model-version", "kv1-2024"),)),
        ),
    ),
    Expected(
        ("m", "kv1-2024"),
        3,
        {"f0": [6.8, 6.0, 5.0], "f1": [2.8, 3.4, None], "f2": [4.8, 4.5, 1.0], "f3": [1.4, 1.6, 0.2]},
        {"prediction": [1.0, 1.0, 0.0]},
        {"missing": 1},
    ),
)
# Plain JSON records in a wrapper; name and version from the MLServer / version headers (§7).
PLAIN_JSON = Scenario(
    "json-records",
    (
        Call(
            "/score",
            b'{"records": [{"age": 41, "plan": "pro"}, {"age": null, "plan": "free"}, {"plan": "pro"}]}',
            Reply(
                chunks=(b'{"predictions": [0.12, 0.87, 0.45]}',),
                headers=(("ce-modelid", "scorer"), ("x-model-version", "5")),
            ),
        ),
    ),
    Expected(
        ("scorer", "5"),
        3,
        {"age": [41.0, None, None], "plan": ["pro", "free", "pro"]},
        {"prediction": [0.12, 0.87, 0.45]},
        {"missing": 2},
    ),
)
# An odd shape only the user's mapping knows, on a path pinned to it by protocol_routes.
MAPPED = Scenario(
    "mapping-pinned",
    (
        Call(
            ODD_PATH,
            dumps(
                {
                    "payload": {
                        "rows": [{"x": 1.5, "kind": "a"}, {"x": None, "kind": "b"}, {"x": 4.5, "kind": "a"}]
                    },
                    "meta": {"id": "odd-req-1"},
                }
            ),
            Reply(
                chunks=(
                    dumps(
                        {
                            "result": {"scores": [0.25, 0.5, 0.75]},
                            "meta": {"model": "oddity", "version": "odd-7"},
                        }
                    ),
                )
            ),
        ),
    ),
    Expected(
        ("oddity", "odd-7"),
        3,
        {"x": [1.5, None, 4.5], "kind": ["a", "b", "a"]},
        {"prediction": [0.25, 0.5, 0.75]},
        {"missing": 1},
    ),
)

ROUND_TRIPS = [
    KSERVE_V1,
    *OIP_SCENARIOS,
    *SELDON_SCENARIOS,
    *TF_SCENARIOS,
    *OPENAI_SCENARIOS,
    PLAIN_JSON,
    MAPPED,
]


# ---- the fake model server and the real uvicorn -------------------------------------------------------


async def _paced(chunks: tuple[bytes, ...]) -> AsyncIterator[bytes]:
    await asyncio.sleep(FIRST_CHUNK_DELAY_S)
    for i, chunk in enumerate(chunks):
        if i:
            await asyncio.sleep(CHUNK_GAP_S)
        yield chunk


def model_server(replies: Mapping[str, Reply]) -> Starlette:
    """Reads the whole request like a model server, then answers the reply the test registered."""

    async def answer(request: Request) -> Response:
        await request.body()
        reply = replies[request.headers[SCENARIO_HEADER]]
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.streamed:
            return StreamingResponse(
                _paced(reply.chunks),
                status_code=reply.status,
                media_type=reply.content_type,
                headers=dict(reply.headers),
            )
        return Response(
            reply.body, status_code=reply.status, media_type=reply.content_type, headers=dict(reply.headers)
        )

    return Starlette(routes=[Route("/{path:path}", answer, methods=["POST"])])


def dispatch(tapped: ASGIApp, bare: ASGIApp) -> ASGIApp:
    """One server for both: requests carrying `x-bare` skip the middleware."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(key == BARE_HEADER.encode() for key, _ in scope["headers"]):
            await bare(scope, receive, send)
        else:
            await tapped(scope, receive, send)

    return app


FeatureKey = tuple[str, str, str, str]  # model name, model version, role, feature name


@dataclass(frozen=True)
class Change:
    """What the status gained between two documents (only what changed)."""

    requests: dict[tuple[str, str], int]
    decoded_rows: dict[tuple[str, str], int]
    features: dict[FeatureKey, Stat]
    violations: dict[str, int]
    internal_errors: dict[str, int]

    def columns(self, model: tuple[str, str], role: str) -> dict[str, Stat]:
        return {
            name: stat for (n, v, r, name), stat in self.features.items() if (n, v) == model and r == role
        }


def _gained(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}


def _categories(row: Mapping[str, Any]) -> dict[str, int]:
    """Counts by category: the vocabulary's and, exposed, those outside it."""
    unlisted = row["unlisted"] or {"top": {}}
    return {**row["top_categories"], **unlisted["top"]}


def _total(row: Mapping[str, Any] | None) -> float:
    if row is None or row["mean"] is None:
        return 0.0
    return float(row["mean"]) * int(row["count"])


def change(before: Mapping[str, Any], after: Mapping[str, Any]) -> Change:
    old_models = {(m["name"], m["version"]): m for m in before["models"]}
    requests: dict[tuple[str, str], int] = {}
    rows: dict[tuple[str, str], int] = {}
    features: dict[FeatureKey, Stat] = {}
    for model in after["models"]:
        key = (model["name"], model["version"])
        old = old_models.get(key)
        gained = model["requests"] - (old["requests"] if old else 0)
        if gained:
            requests[key] = gained
        gained_rows = model["decoded_rows"] - (old["decoded_rows"] if old else 0)
        if gained_rows:
            rows[key] = gained_rows
        old_rows = {(f["role"], f["name"]): f for f in old["features"]} if old else {}
        for row in model["features"]:
            was = old_rows.get((row["role"], row["name"]))
            count = row["count"] - (was["count"] if was else 0)
            missing = row["missing"] - (was["missing"] if was else 0)
            if not count and not missing:
                continue
            mean = (_total(row) - _total(was)) / count if count and row["mean"] is not None else None
            categories = _gained(_categories(row), _categories(was) if was else {})
            features[(key[0], key[1], row["role"], row["name"])] = Stat(count, missing, mean, categories)
    return Change(
        requests,
        rows,
        features,
        _gained(after["violations"], before["violations"]),
        _gained(after["monitoring"]["internal_errors"], before["monitoring"]["internal_errors"]),
    )


def answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    # `date` is the only header allowed to differ: it is the wall clock.
    return (
        response.status_code,
        [(k, v) for k, v in response.headers.multi_items() if k != "date"],
        response.content,
    )


@dataclass
class RoundTrip:
    client: httpx.Client
    middleware: ModelTapMiddleware
    replies: dict[str, Reply]
    sent: int = 0
    keys: Iterator[int] = field(default_factory=itertools.count)

    def send(self, call: Call) -> httpx.Response:
        """POST through modeltap and around it: the client must get the canned bytes both times."""
        key = str(next(self.keys))
        self.replies[key] = call.reply
        headers = [*call.headers, (SCENARIO_HEADER, key)]
        bare = self.client.post(call.path, content=call.body, headers=[*headers, (BARE_HEADER, "1")])
        tapped = self.client.post(call.path, content=call.body, headers=headers)
        self.sent += 1
        assert tapped.status_code == call.reply.status
        assert tapped.content == call.reply.body
        assert answer(tapped) == answer(bare)
        return tapped

    def status(self) -> dict[str, Any]:
        response = self.client.get("/modeltap/status")
        assert response.status_code == 200
        document: dict[str, Any] = response.json()
        return document

    def settle(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Flush until the status counts every request sent through modeltap (the record is
        queued when the app returns, which can be just after the client has the last byte)."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.middleware.tap.flush(timeout_s)
            document = self.status()
            if document["requests"]["total"] >= self.sent:
                assert document["requests"]["total"] == self.sent
                return document
            assert time.monotonic() < deadline, (
                f"status counts {document['requests']['total']} of {self.sent}"
            )
            time.sleep(0.01)

    def run(self, *calls: Call) -> Change:
        before = self.settle()
        for call in calls:
            self.send(call)
        return change(before, self.settle())


@pytest.fixture(scope="module")
def server() -> Iterator[RoundTrip]:
    replies: dict[str, Reply] = {}
    app = model_server(replies)
    middleware = ModelTapMiddleware(
        app,
        config=ModelTapConfig.from_env(
            {}, monitor="inline"
        ),  # the runner's MODELTAP_*/OTEL_* variables stay out
        protocol_routes=PROTOCOL_ROUTES,
        payload_mapping=PAYLOAD_MAPPING,
        worker_cpu_budget=0,
        # No reference vouches for any category here: the values are shown only when exposed.
        expose_values=True,
        # One server answers for every scenario's model: more names than the default cap.
        max_models=256,
        max_versions_per_model=64,
    )
    try:
        with serve(dispatch(middleware, app)) as url, httpx.Client(base_url=url, timeout=10.0) as client:
            yield RoundTrip(client, middleware, replies)
    finally:
        middleware.tap.shutdown()


# ---- round trips ---------------------------------------------------------------------------------------


def filed_under(claimed: tuple[str, str], live: Mapping[str, set[str]]) -> tuple[str, str]:
    """Where a rejected exchange (not a 2xx) is filed: a name nobody vouched for is `unknown`;
    else the version it names if vouched, else the model's only live version, else `unknown`."""
    name, version = claimed
    if name not in live:
        return UNKNOWN, UNKNOWN
    if version in live[name]:
        return name, version
    versions = [v for v in live[name] if v != UNKNOWN]
    return (name, versions[0]) if len(versions) == 1 else (name, UNKNOWN)


def accepted(scenario: Scenario) -> bool:
    return all(200 <= call.reply.status < 300 for call in scenario.calls)


def run_scenario(server: RoundTrip, scenario: Scenario) -> None:
    """Send a scenario's calls and check what they added; a rejected scenario's identity is
    where the live identities before it say it is filed."""
    model = scenario.expected.model
    if not accepted(scenario):
        live: dict[str, set[str]] = {}
        for row in server.settle()["models"]:
            live.setdefault(row["name"], set()).add(row["version"])
        model = filed_under(model, live)
    assert_recorded(server.run(*scenario.calls), scenario, model)


def assert_recorded(got: Change, scenario: Scenario, model: tuple[str, str] | None = None) -> None:
    expected = scenario.expected
    model = model or expected.model
    assert got.requests == {model: len(scenario.calls)}, "exchanges counted under another model identity"
    if not accepted(scenario):
        # The model refused these inputs: their violations count, their values feed nothing.
        assert got.decoded_rows.get(model, 0) == 0
        assert got.features == {}
        assert got.violations == dict(expected.violations)
        assert got.internal_errors == {}
        return
    assert got.decoded_rows.get(model, 0) == expected.rows
    assert {key[:2] for key in got.features} <= {model}
    inputs = got.columns(model, "input")
    outputs = got.columns(model, "output")
    if scenario.generative and expected.rows == 1:
        # Timing outputs of one generated response (their values: test_openai_stream_timings).
        timings = {name: outputs.pop(name, None) for name in TIMING_OUTPUTS}
        first, duration, rate = timings.values()
        assert first == Stat(1, 0, ANY, {})
        assert duration == Stat(1, 0, ANY, {})
        assert first.mean <= duration.mean
        assert rate is not None
        if expected.outputs["completion_tokens"] == [None]:
            assert rate == Stat(0, 1, None, {})  # no usage, no rate
        elif scenario.streamed:
            assert rate == Stat(1, 0, ANY, {})
        else:  # see test_openai_non_stream_tokens_per_second_is_not_a_write_time
            assert rate.count + rate.missing == 1
    assert inputs == {name: expected_stat(column) for name, column in expected.features.items()}
    assert outputs == {name: expected_stat(column) for name, column in expected.outputs.items()}
    assert got.violations == dict(expected.violations)
    assert got.internal_errors == {}


@pytest.mark.parametrize("scenario", ROUND_TRIPS, ids=lambda s: s.id)
def test_round_trip(server: RoundTrip, scenario: Scenario) -> None:
    run_scenario(server, scenario)


def test_tf_serving_predict_and_classify_share_the_url_version(server: RoundTrip) -> None:
    """`/v1/models/tf/versions/3:predict` and `:classify` are one model version (PROTOCOLS.md §2, §7)."""
    predict, classify = TF_SCENARIOS[0], TF_SCENARIOS[1]
    got = server.run(*predict.calls, *classify.calls)
    assert got.requests == {("tf", "3"): 2}
    assert got.decoded_rows == {("tf", "3"): 5}
    assert set(got.columns(("tf", "3"), "output")) == {"score", "embedding[0]", "embedding[1]", "class"}
    # `score` is in both: 2 regression scores, then the 3 top-class scores.
    assert got.columns(("tf", "3"), "output")["score"] == expected_stat([0.25, 0.75, 0.6, 0.7, 0.5])
    assert got.violations == {"missing": 2}


def test_status_names_every_model_version_seen(server: RoundTrip) -> None:
    for scenario in (KSERVE_V1, OIP_SCENARIOS[0], OIP_SCENARIOS[2], MAPPED):
        server.run(*scenario.calls)
    status = server.settle()
    seen = {(m["name"], m["version"]) for m in status["models"]}
    assert {("m", "kv1-2024"), ("m", "2"), ("m", "3"), ("oddity", "odd-7")} <= seen
    assert {"kv1-2024", "2", "3", "odd-7"} <= set(status["model"]["versions"])


# ---- OpenAI-style timing outputs ------------------------------------------------------------------------


def _timings(got: Change, model: tuple[str, str]) -> tuple[float, float, float | None]:
    outputs = got.columns(model, "output")
    first, duration, rate = (outputs[name] for name in TIMING_OUTPUTS)
    assert (first.count, duration.count) == (1, 1)
    assert isinstance(first.mean, float)
    assert isinstance(duration.mean, float)
    return first.mean, duration.mean, rate.mean if rate.count else None


def test_openai_stream_timings(server: RoundTrip) -> None:
    """A streamed chat completion with `include_usage`: time to first token, the whole response
    duration and completion tokens per second of streaming, all measured (PROTOCOLS.md §6)."""
    scenario = next(s for s in OPENAI_SCENARIOS if s.id == "openai-chat_stream_usage")
    (call,) = scenario.calls
    got = server.run(call)
    first, duration, rate = _timings(got, scenario.expected.model)
    assert first >= 0.9 * FIRST_CHUNK_DELAY_S
    assert first <= duration
    assert duration - first >= 0.9 * CHUNK_GAP_S * (len(call.reply.chunks) - 1)
    assert rate is not None
    assert rate > 0
    # Three completion tokens (usage) over the time from the first chunk to the last.
    assert rate == pytest.approx(3.0 / (duration - first), rel=1e-6)


def test_openai_non_stream_tokens_per_second_is_not_a_write_time(server: RoundTrip) -> None:
    """A non-streamed completion is generated before its first byte: whatever the rate is, no
    honest one exceeds completion_tokens / time_to_first_token_s (here 12 tokens in >= 50 ms).
    A rate over the microseconds between writing the first and the last byte of a one-chunk body
    is not a tokens-per-second figure."""
    scenario = next(s for s in OPENAI_SCENARIOS if s.id == "openai-chat_nonstream")
    (call,) = scenario.calls
    (tokens,) = scenario.expected.outputs["completion_tokens"]
    slow = Call(call.path, call.body, Reply(chunks=call.reply.chunks, delay_s=0.05))
    got = server.run(slow)
    first, duration, rate = _timings(got, scenario.expected.model)
    assert 0.045 <= first <= duration
    assert rate is None or rate <= tokens / first, (
        f"tokens_per_second {rate:.3g} for {tokens:g} tokens generated in {first:.3f} s"
    )


# ---- malformed bodies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Malformed:
    id: str
    call: Call
    violations: dict[str, int]


CHAT_REQUEST = dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}], "stream": True}
)
V2_TENSOR = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
MALFORMED = [
    Malformed(
        "kserve_v1-request-not-json",
        Call("/v1/models/m:predict", b'{"instances": [[1, 2', Reply(400, chunks=(b'{"error": "bad json"}',))),
        {"decode_error": 1},
    ),
    Malformed(
        "kserve_v1-response-not-json",
        Call(
            "/v1/models/m:predict", b'{"instances": [[1.0, 2.0]]}', Reply(chunks=(b'{"predictions": [0.5',))
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "oip_v2-request-not-json",
        Call(
            "/v2/models/m/versions/2/infer", b'{"inputs": [{"name"', Reply(400, chunks=(b'{"error": "x"}',))
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "oip_v2-data-does-not-fill-shape",
        Call(
            "/v2/models/m/versions/2/infer",
            dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}]}),
            Reply(chunks=(dumps({"outputs": [V2_TENSOR]}),)),
        ),
        {"schema": 1},
    ),
    Malformed(
        "oip_v2-binary-header-longer-than-body",
        binary_call(
            "/v2/models/m/versions/2/infer",
            {"inputs": [V2_TENSOR]},
            b"",
            Reply(chunks=(dumps({"outputs": [V2_TENSOR]}),)),
            header_length=4096,
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "oip_v2-binary-tensor-truncated",
        binary_call(
            "/v2/models/m/versions/2/infer",
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}
                ]
            },
            b"\x00" * 8,
            Reply(chunks=(dumps({"outputs": [V2_TENSOR]}),)),
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "oip_v2-stream-event-not-json",
        Call(
            "/v2/models/m/infer_stream",
            dumps({"inputs": [V2_TENSOR]}),
            Reply(
                content_type=SSE,
                chunks=(*sse([{"model_version": "9", "outputs": [V2_TENSOR]}]), b"data: {broken\n\n"),
                streamed=True,
            ),
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "seldon-request-not-json",
        Call(
            "/api/v1.0/predictions", b'{"data": {"ndarray": [[1, 2]]', Reply(400, chunks=(b'{"status": {}}',))
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "seldon-tensor-shape-mismatch",
        Call(
            "/api/v1.0/predictions",
            dumps({"data": {"tensor": {"shape": [2, 2], "values": [1.0, 2.0, 3.0]}}}),
            Reply(chunks=(dumps({"meta": {}, "data": {"ndarray": []}}),)),
        ),
        {"schema": 1},
    ),
    Malformed(
        "tf_serving-request-not-json",
        Call(
            "/v1/models/tf/versions/3:predict",
            b'{"inputs": {"x": [1, 2',
            Reply(400, chunks=(b'{"error": "x"}',)),
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "tf_serving-classify-response-not-json",
        Call(
            "/v1/models/tf/versions/3:classify",
            dumps({"examples": [{"x": 1.0}]}),
            Reply(chunks=(b'{"result": [[["a", 0.5]',)),
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "openai-response-not-json",
        Call(
            "/v1/chat/completions",
            dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}),
            Reply(chunks=(b'{"id": "chatcmpl-1", "choices": [',)),
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "openai-stream-chunk-not-json",
        Call(
            "/v1/chat/completions",
            CHAT_REQUEST,
            Reply(
                content_type=SSE,
                chunks=(
                    *sse([{"id": "c", "model": "v", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}]),
                    b'data: {"id": "c", "choices": [\n\n',
                    b"data: [DONE]\n\n",
                ),
                streamed=True,
            ),
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "json-request-not-json",
        Call("/score", b"age=41&plan=pro", Reply(422, chunks=(b'{"detail": "not json"}',))),
        {"decode_error": 1},
    ),
    Malformed(
        "json-request-not-gzip",
        Call(
            "/score",
            b'{"age": 41}',
            Reply(chunks=(b'{"score": 0.5}',)),
            (("content-type", JSON), ("content-encoding", "gzip")),
        ),
        {"decode_error": 1},
    ),
    Malformed(
        "mapping-rows-not-a-list",
        Call(
            ODD_PATH,
            dumps({"payload": {"rows": "none"}, "meta": {"id": "odd-req-2"}}),
            Reply(
                chunks=(
                    dumps({"result": {"scores": [0.5]}, "meta": {"model": "oddity", "version": "odd-8"}}),
                )
            ),
        ),
        {"schema": 1},
    ),
]


@pytest.mark.parametrize("case", MALFORMED, ids=lambda c: c.id)
def test_malformed_body_is_counted_and_the_response_unchanged(server: RoundTrip, case: Malformed) -> None:
    got = server.run(case.call)  # `send` checks the bytes against the canned body and the bare app
    assert sum(got.requests.values()) == 1
    assert got.violations == case.violations
    assert got.internal_errors == {}


def test_gzip_request_is_inflated(server: RoundTrip) -> None:
    """A gzip request body (`content-encoding: gzip`) is decoded after inflating it."""
    call = Call(
        "/v1/models/gz:predict",
        gzip.compress(b'{"instances": [[30.0], [50.0]]}'),
        Reply(chunks=(b'{"predictions": [0.1, 0.9]}',)),
        (("content-type", JSON), ("content-encoding", "gzip")),
    )
    expected = Expected(("gz", UNKNOWN), 2, {"f0": [30.0, 50.0]}, {"prediction": [0.1, 0.9]}, {})
    assert_recorded(server.run(call), Scenario("kserve_v1-gzip", (call,), expected))


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/models/m:predict", ("m", UNKNOWN)),
        ("/v2/models/m/versions/2/infer", ("m", "2")),
        ("/v1/models/tf/versions/3:predict", ("tf", "3")),
    ],
)
def test_malformed_body_counts_under_the_model_its_url_names(
    server: RoundTrip, path: str, model: tuple[str, str]
) -> None:
    """The URL names the model whatever the body holds (PROTOCOLS.md §7): once the model has
    answered for that URL, a request that is not JSON is that model's violation and request."""
    if path.startswith("/v2"):
        valid = b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}'
        answer = b'{"model_name": "m", "outputs": []}'
    else:
        valid, answer = b'{"instances": [[1.0]]}', b'{"predictions": [1.0]}'
    server.run(Call(path, valid, Reply(chunks=(answer,))))
    got = server.run(Call(path, b'{"inputs": [1, 2', Reply(400, chunks=(b'{"error": "bad json"}',))))
    assert got.violations == {"decode_error": 1}
    assert got.requests == {model: 1}


def test_a_model_name_nobody_answered_is_unknown(server: RoundTrip) -> None:
    """A name only the request claims (the server answered 404) creates no state of its own."""
    got = server.run(
        *(
            Call(f"/v2/models/nobody-{i}/infer", b'{"inputs": [1, 2', Reply(404, chunks=(b"{}",)))
            for i in range(5)
        )
    )
    assert got.requests == {(UNKNOWN, UNKNOWN): 5}
    assert got.violations == {"decode_error": 5}
    assert not any(m["name"].startswith("nobody-") for m in server.settle()["models"])


# ---- numbers beyond the float range ------------------------------------------------------------------------

BIG_INT_SCENARIOS = [
    # Rows of scalars take the worker's batch-matrix path.
    Scenario(
        "kserve_v1-big-int-in-rows",
        (
            Call(
                "/v1/models/bigrows:predict",
                b'{"instances": [[' + BIG_INT + b", 2.0], [3.0, 4.0]]}",
                Reply(chunks=(b'{"predictions": [0.5, 0.25]}',)),
            ),
        ),
        Expected(
            ("bigrows", UNKNOWN),
            2,
            {"f0": [None, 3.0], "f1": [2.0, 4.0]},
            {"prediction": [0.5, 0.25]},
            {"missing": 1},
        ),
    ),
    # Records take the per-exchange column path.
    Scenario(
        "kserve_v1-big-int-in-records",
        (
            Call(
                "/v1/models/bigrecords:predict",
                b'{"instances": [{"a": ' + BIG_INT + b', "b": 2.0}]}',
                Reply(chunks=(b'{"predictions": [0.5]}',)),
            ),
        ),
        Expected(
            ("bigrecords", UNKNOWN), 1, {"a": [None], "b": [2.0]}, {"prediction": [0.5]}, {"missing": 1}
        ),
    ),
]


@pytest.mark.parametrize("scenario", BIG_INT_SCENARIOS, ids=lambda s: s.id)
def test_integer_beyond_float_range_is_missing(server: RoundTrip, scenario: Scenario) -> None:
    """PROTOCOLS.md §8: a number that is not a finite float counts as missing, not decode_error,
    and the rest of the payload (and of the worker's batch) is still used. Python's json parses
    such an integer exactly; float() of it overflows."""
    assert_recorded(server.run(*scenario.calls), scenario)


# ---- decode_exchange never raises, whatever JSON arrives ---------------------------------------------------

KEYS = (
    "instances", "inputs", "outputs", "predictions", "data", "ndarray", "tensor", "names", "shape",
    "values", "datatype", "name", "parameters", "content_type", "binary_data_size", "examples",
    "context", "result", "results", "jsonData", "strData", "binData", "meta", "requestPath", "puid",
    "model", "messages", "role", "content", "prompt", "input", "choices", "delta", "message", "text",
    "usage", "finish_reason", "tool_calls", "index", "embedding", "stream", "id", "model_name",
    "model_version", "payload", "rows", "scores", "records", "b64", "error",
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    # Past int64 (orjson refuses those, the tolerant parse reads them) but within the float range:
    # larger integers are test_integer_beyond_float_range_is_missing's.
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["pd", "str", "datetime", "base64", "FP32", "INT64", "BYTES", "BOOL", "text", "[DONE]"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=24,
)
PATHS = {
    "kserve_v1": "/v1/models/m:predict",
    "tf_predict": "/v1/models/tf/versions/3:predict",
    "tf_classify": "/v1/models/tf/versions/3:classify",
    "oip_v2": "/v2/models/m/versions/2/infer",
    "oip_v2_stream": "/v2/models/m/infer_stream",
    "oip_v2_binary": "/v2/models/m/versions/2/infer",
    "seldon": "/api/v1.0/predictions",
    "openai_chat": "/v1/chat/completions",
    "openai_completions": "/openai/v1/completions",
    "openai_embeddings": "/v1/embeddings",
    "json": "/score",
    "mapping": ODD_PATH,
}
OPTIONS = DecodeOptions(routes=PROTOCOL_ROUTES, mapping=FieldMapping.parse(PAYLOAD_MAPPING))


def _json(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN/Infinity tokens too (PROTOCOLS.md §8)


def assert_well_formed(out: DecodedPayload) -> None:
    assert set(out.violations) <= REASONS
    assert all(type(n) is int and n > 0 for n in out.violations.values())
    for text in (out.model_name, out.model_version, out.request_id):
        assert text is None or (0 < len(text) <= 128 and text.isprintable())
    assert out.rows >= 0
    for column in out.features.values():
        assert len(column) == out.rows
    for column in (*out.features.values(), *out.outputs.values()):
        for value in column:
            assert (
                value is None
                or isinstance(value, (bool, str))
                or (type(value) is float and math.isfinite(value))
            )


@pytest.mark.parametrize("kind", list(PATHS))
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=JSON_VALUES,
    response=JSON_VALUES,
    events=st.lists(JSON_VALUES, max_size=4),
    status=st.sampled_from([200, 200, 200, 400, 500]),
    tail=st.binary(max_size=24),
)
def test_decode_exchange_never_raises(
    kind: str, request: Any, response: Any, events: list[Any], status: int, tail: bytes
) -> None:
    """Random JSON on each protocol's path: never an exception, and never the catch-all
    `decode_error` either, since both bodies are valid JSON (the exceptions: raw binary tensors,
    base64 embeddings that random strings are not, and a `null` request, which is no payload)."""
    header_length = None
    request_type = JSON
    response_type = JSON
    request_body = _json(request)
    response_body = _json(response)
    if kind == "oip_v2_binary":
        header_length = len(request_body)
        request_body += tail
        request_type = "application/octet-stream"
    elif kind in ("oip_v2_stream", "openai_chat"):
        response_type = SSE
        response_body = b"".join(b"data: " + _json(event) + b"\n\n" for event in events) + b"data: [DONE]\n\n"
    exchange = ExchangeBytes(
        "POST",
        PATHS[kind],
        request_body,
        response_body,
        status,
        request_content_type=request_type,
        response_content_type=response_type,
        inference_header_length=header_length,
    )
    out = decode_exchange(exchange, options=OPTIONS)
    assert_well_formed(out)
    if request is None and kind not in ("oip_v2_binary", "json"):
        # A `null` request on an inference route carries no payload: README, "Bad payloads"
        # (`/score` is no protocol's route: a `null` there may be what the app expects).
        assert out.violations == {"decode_error": 1}, (out.protocol, request_body, response_body)
    elif kind not in ("oip_v2_binary", "openai_embeddings"):
        assert "decode_error" not in out.violations, (out.protocol, request_body, response_body)
