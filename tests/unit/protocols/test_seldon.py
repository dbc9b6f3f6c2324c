"""Seldon Core v1 SeldonMessage decoding: the fixtures (PROTOCOLS.md section 4, prediction.proto)
column by column, path and body matching, malformed messages as counted violations, and random
JSON that never raises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltap.protocols import decode_exchange, seldon
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes
from tests.support.decoding import assert_decoded_as_expected, document, materialize

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "protocols" / "seldon"
PREDICTIONS = "/api/v1.0/predictions"


def exchange(path: str = PREDICTIONS, feature_names: tuple[str, ...] = ()) -> ExchangeBytes:
    return ExchangeBytes("POST", path, b"", b"", 200, feature_names=feature_names)


def run(request: Any, response: Any = None, path: str = PREDICTIONS) -> DecodedPayload:
    out = DecodedPayload()
    seldon.decode(exchange(path), request, response, out)
    return out


# --- fixtures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_fixture(name: str) -> None:
    case = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    assert case["_source"]
    ex = exchange(case["path"], tuple(case.get("feature_names", ())))
    request, response = document(case, "request"), document(case, "response")
    assert seldon.matches(ex, request) is case.get("matches", True)
    out = DecodedPayload()
    seldon.decode(ex, request, response, out)
    assert out.protocol == "seldon"
    assert_decoded_as_expected(out, case["expected"])


def test_fixtures_exist() -> None:
    assert len(list(FIXTURES.glob("*.json"))) >= 10
    assert (FIXTURES / "_source.md").is_file()


# --- matching ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1.0/predictions",
        "/api/v1.0/predictions/",
        "/seldon/default/iris/api/v1.0/predictions",
        "/seldon/ns-1/income-graph/api/v1.0/predictions",
    ],
)
def test_matches_the_predictions_path_whatever_the_body(path: str) -> None:
    assert seldon.matches(exchange(path), {"anything": 1})
    assert seldon.matches(exchange(path), None)


@pytest.mark.parametrize(
    "request_body",
    [
        {"data": {"ndarray": [[1, 2]]}},
        {"data": {"names": ["a"], "tensor": {"shape": [1, 1], "values": [1]}}},
        {"data": {"tftensor": {}}},
        {"jsonData": {"a": 1}},
        {"strData": "x"},
        {"binData": "eA=="},
    ],
)
def test_matches_a_seldon_message_on_any_path(request_body: Any) -> None:
    assert seldon.matches(exchange("/predict"), request_body)


@pytest.mark.parametrize(
    ("path", "request_body"),
    [
        ("/v1/models/iris:predict", {"instances": [[1, 2]]}),
        ("/v2/models/iris/infer", {"inputs": [{"name": "x", "data": [1]}]}),
        ("/predict", {"data": [[1, 2]]}),  # a plain wrapper, not DefaultData
        ("/predict", {"data": {"rows": [[1, 2]]}}),
        ("/api/v1.0/predictions/extra", {"x": 1}),
        ("/predict", [1, 2]),
        ("/predict", None),
    ],
)
def test_does_not_match_other_protocols(path: str, request_body: Any) -> None:
    assert not seldon.matches(exchange(path), request_body)


def test_parse_path() -> None:
    assert seldon.parse_path("/api/v1.0/predictions") == (True, None)
    assert seldon.parse_path("/seldon/prod/income/api/v1.0/predictions") == (True, "income")
    assert seldon.parse_path("/api/v0.1/predictions") == (False, None)
    assert seldon.parse_path("/api/v1.0/feedback") == (False, None)


# --- feedback ------------------------------------------------------------------------------------

FEEDBACK = {
    "request": {"data": {"names": ["a", "b"], "ndarray": [[1.0, 2.0]]}},
    "response": {"meta": {"puid": "p1", "requestPath": {"clf": "img:1"}}, "data": {"ndarray": [[0.2, 0.8]]}},
    "reward": 1.0,
    "truth": {"data": {"ndarray": [[0, 1]]}},
}


@pytest.mark.parametrize(
    ("path", "deployment"),
    [
        ("/api/v1.0/feedback", None),
        ("/api/v1.0/feedback/", None),
        ("/seldon/ns/iris/api/v1.0/feedback", "iris"),
    ],
)
def test_feedback_is_not_model_traffic(path: str, deployment: str | None) -> None:
    """A label for an earlier prediction: no rows, columns or violations (as a health probe),
    whatever the message holds, and never the labelled answer's version (PROTOCOLS.md section 4)."""
    body = json.dumps(FEEDBACK).encode()
    answer = json.dumps({"meta": {"puid": "p2"}, "data": {"ndarray": []}}).encode()
    out = decode_exchange(ExchangeBytes("POST", path, body, answer, 200))
    assert (out.protocol, out.rows, out.features, out.outputs) == ("seldon", 0, {}, {})
    assert (out.matrix_rows, out.output_values, out.violations) == (None, None, {})
    assert (out.model_name, out.model_version, out.answer_version) == (deployment, None, None)
    assert out.request_id is None  # the labelled prediction's puid is no id of this exchange
    assert seldon.is_feedback(path)
    assert seldon.matches(exchange(path), {"anything": 1})


def test_predictions_and_other_paths_are_not_feedback() -> None:
    assert not seldon.is_feedback("/api/v1.0/predictions")
    assert not seldon.is_feedback("/api/v1.0/feedback/extra")
    assert not seldon.is_feedback("/feedback")


# --- shapes --------------------------------------------------------------------------------------


def test_tensor_of_rank_three_is_flattened_per_row() -> None:
    out = run({"data": {"tensor": {"shape": [2, 2, 2], "values": [1, 2, 3, 4, 5, 6, 7, 8]}}})
    features, _, violations = materialize(out)
    assert out.rows == 2
    assert features == {
        "f0": [1.0, 5.0],
        "f1": [2.0, 6.0],
        "f2": [3.0, 7.0],
        "f3": [4.0, 8.0],
    }
    assert violations == {}


def test_tensor_of_rank_one_is_one_value_per_row() -> None:
    out = run({"data": {"names": ["x"], "tensor": {"shape": [3], "values": [1.0, 2.0, 3.0]}}})
    assert materialize(out)[0] == {"x": [1.0, 2.0, 3.0]}
    assert out.rows == 3


def test_empty_tensor_is_no_rows() -> None:
    out = run({"data": {"tensor": {"shape": [0, 4], "values": []}}})
    assert (out.rows, out.features, out.matrix_rows, out.violations) == (0, {}, None, {})


@pytest.mark.parametrize(
    "tensor",
    [
        {"shape": [2, 2], "values": [1, 2, 3, 4, 5]},
        {"shape": [2, -2], "values": [1, 2, 3, 4]},
        {"shape": [True, 2], "values": [1, 2]},
        {"shape": [2.0, 1], "values": [1, 2]},
        {"shape": [], "values": [1]},
        {"shape": "2,2", "values": [1, 2, 3, 4]},
        {"values": [1, 2]},
        {"shape": [2]},
        {"shape": [10**30, 10**30], "values": [1]},
        {"shape": [1] * 40, "values": [1]},
    ],
)
def test_malformed_tensor_is_a_schema_violation(tensor: Any) -> None:
    out = run({"data": {"tensor": tensor}})
    assert out.violations == {"schema": 1}
    assert (out.rows, out.features, out.matrix_rows) == (0, {}, None)


@pytest.mark.parametrize(
    ("request_body", "violations"),
    [
        ({"data": {"tensor": [1, 2]}}, {"type": 1}),
        ({"data": {"ndarray": {"a": 1}}}, {"type": 1}),
        ({"data": [[1, 2]]}, {"type": 1}),
        ({"data": {"names": ["a"]}}, {"schema": 1}),  # DefaultData without a payload
        ({"meta": {"puid": "x"}}, {"schema": 1}),  # a message without any payload
        ({"data": None}, {"schema": 1}),
        ([[1, 2]], {"type": 1}),
        ("text", {"type": 1}),
    ],
)
def test_malformed_messages_are_counted(request_body: Any, violations: dict[str, int]) -> None:
    out = run(request_body)
    assert out.violations == violations
    assert out.features == {}
    assert out.matrix_rows is None


def test_names_that_are_not_strings_are_a_type_violation_and_ignored() -> None:
    out = run({"data": {"names": ["a", 1], "ndarray": [[1, 2]]}})
    features, _, violations = materialize(out)
    assert features == {"f0": [1.0], "f1": [2.0]}
    assert violations == {"type": 1}


def test_reference_names_apply_when_the_message_has_none() -> None:
    out = DecodedPayload()
    seldon.decode(exchange(feature_names=("a", "b")), {"data": {"ndarray": [[1, 2]]}}, None, out)
    assert materialize(out)[0] == {"a": [1.0], "b": [2.0]}


def test_ndarray_of_records_and_strings() -> None:
    out = run({"data": {"ndarray": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}})
    assert out.features == {"a": [1.0, 2.0], "b": ["x", "y"]}
    out = run({"data": {"names": ["text"], "ndarray": ["hello", "world"]}})
    assert out.features == {"text": ["hello", "world"]}


def test_tftensor_is_not_decoded_and_not_a_violation() -> None:
    body = {"data": {"names": ["a"], "tftensor": {"dtype": "DT_FLOAT", "floatVal": [1.0]}}}
    out = run(body, body)
    assert (out.features, out.outputs, out.rows, out.violations) == ({}, {}, 0, {})


def test_failure_response_has_no_outputs() -> None:
    response = {
        "status": {"code": 500, "info": "boom", "reason": "MICROSERVICE_INTERNAL_ERROR", "status": "FAILURE"}
    }
    out = run({"data": {"ndarray": [[1.0]]}}, response)
    assert out.outputs == {}
    assert out.output_values is None
    assert out.violations == {}


def test_unnamed_multi_column_outputs_are_positional() -> None:
    out = run({"data": {"ndarray": [[1.0]]}}, {"data": {"ndarray": [[0.2, 0.8]]}})
    assert out.outputs == {"prediction0": [0.2], "prediction1": [0.8]}


# --- identity ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "version"),
    [
        ({"requestPath": {"model": "acme/m:1.0"}}, "acme/m:1.0"),
        ({"requestPath": {"b": "img-b:2", "a": "img-a:1"}}, "a=img-a:1,b=img-b:2"),
        ({"requestPath": {"a": 1, "b": "img-b:2"}}, "img-b:2"),
        ({"requestPath": {}}, None),
        ({"requestPath": ["model"]}, None),
        ({}, None),
        ("meta", None),
    ],
)
def test_model_version_from_request_path(meta: Any, version: str | None) -> None:
    assert seldon.model_version(meta) == version
    out = run({"data": {"ndarray": [[1.0]]}}, {"meta": meta, "data": {"ndarray": [[0.0]]}})
    # The answer carries it: it is the answer version too (served versions, version mismatch).
    assert (out.model_version, out.answer_version) == (version, version)


def test_answer_version_through_detection() -> None:
    request = json.dumps({"data": {"names": ["a", "b"], "ndarray": [[1.0, 2.0]]}}).encode()
    response = json.dumps(
        {"meta": {"puid": "p1", "requestPath": {"classifier": "seldonio/sklearn-iris:0.3"}},
         "data": {"names": ["t:0", "t:1"], "ndarray": [[0.2, 0.8]]}}
    ).encode()  # fmt: skip
    path = "/seldon/ns/iris/api/v1.0/predictions"
    out = decode_exchange(ExchangeBytes("POST", path, request, response, 200))
    assert (out.protocol, out.model_name, out.request_id) == ("seldon", "iris", "p1")
    image = "seldonio/sklearn-iris:0.3"
    assert (out.model_version, out.answer_version) == (image, image)
    # Without a request path in the answer, nothing is claimed; an error answer vouches for none.
    out = decode_exchange(ExchangeBytes("POST", PREDICTIONS, request, b'{"meta": {}}', 200))
    assert (out.model_version, out.answer_version) == (None, None)
    out = decode_exchange(ExchangeBytes("POST", PREDICTIONS, request, response, 500))
    assert (out.model_version, out.answer_version) == (None, None)


def test_request_id_prefers_the_response_puid_and_is_sanitised() -> None:
    request = {"meta": {"puid": "from-request"}, "data": {"ndarray": [[1.0]]}}
    assert run(request, {"meta": {"puid": "from-response"}}).request_id == "from-response"
    assert run(request, {"meta": {}}).request_id == "from-request"
    assert run(request, None).request_id == "from-request"
    assert (
        run(request, {"meta": {"puid": "a\x00b\nc" + "x" * 500}}).request_id == "abc" + "x" * 123
    )  # cut at 128, then cleaned (as detect.sanitize)
    assert run({"meta": {"puid": 42}, "strData": "s"}).request_id is None


# --- never raises --------------------------------------------------------------------------------

KEYS = st.sampled_from(
    ["data", "names", "ndarray", "tensor", "shape", "values", "tftensor", "jsonData", "strData", "binData",
     "meta", "puid", "requestPath", "status", "b64"]
) | st.text(max_size=4)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=6)
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)
TENSOR = st.fixed_dictionaries(
    {"shape": st.lists(st.integers(min_value=-1, max_value=4), max_size=4) | JSON, "values": JSON}
)
MESSAGES = (
    JSON
    | st.fixed_dictionaries(
        {"data": st.fixed_dictionaries({"names": JSON}, optional={"ndarray": JSON, "tensor": TENSOR | JSON})},
        optional={"meta": st.fixed_dictionaries({}, optional={"puid": JSON, "requestPath": JSON})},
    )
    | st.fixed_dictionaries({}, optional={"jsonData": JSON, "strData": JSON, "binData": JSON, "meta": JSON})
)
PATHS = st.sampled_from(
    [PREDICTIONS, "/seldon/a/b/api/v1.0/predictions", "/api/v1.0/feedback", "/", "", "/v1/models/x:predict"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=PATHS, request=MESSAGES, response=MESSAGES)
def test_random_json_never_raises(path: str, request: Any, response: Any) -> None:
    ex = exchange(path, ("a", "b"))
    seldon.matches(ex, request)
    out = DecodedPayload()
    seldon.decode(ex, request, response, out)
    assert out.protocol == "seldon"
    assert set(out.violations) <= {"decode_error", "missing", "type", "schema"}
    features, outputs, _ = materialize(out)
    for column in (*features.values(), *outputs.values()):
        assert all(value is None or isinstance(value, (float, str, bool)) for value in column)
