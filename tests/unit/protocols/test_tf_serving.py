"""TF Serving REST decoding beyond the row format: the fixtures (PROTOCOLS.md section 2,
api_rest.md) column by column, including api_rest.md's `:classify` and `:regress` examples; URL
parsing and matching; malformed bodies as counted violations; random JSON that never raises."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltap.protocols import kserve_v1, tf_serving
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes
from tests.support.decoding import assert_decoded_as_expected, document, materialize

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "protocols" / "tf_serving"
PREDICT = "/v1/models/m:predict"
CLASSIFY = "/v1/models/m:classify"
REGRESS = "/v1/models/m:regress"


def exchange(path: str = PREDICT, feature_names: tuple[str, ...] = ()) -> ExchangeBytes:
    return ExchangeBytes("POST", path, b"", b"", 200, feature_names=feature_names)


def run(request: Any, response: Any = None, path: str = PREDICT) -> DecodedPayload:
    out = DecodedPayload()
    tf_serving.decode(exchange(path), request, response, out)
    return out


def load(name: str) -> dict[str, Any]:
    case: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return case


# --- fixtures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_fixture(name: str) -> None:
    case = load(name)
    assert case["_source"]
    ex = exchange(case["path"], tuple(case.get("feature_names", ())))
    request, response = document(case, "request"), document(case, "response")
    assert tf_serving.matches(ex, request) is case.get("matches", True)
    assert not kserve_v1.is_request(request)  # never a body the row decoder takes
    out = DecodedPayload()
    tf_serving.decode(ex, request, response, out)
    assert out.protocol == "tf_serving"
    assert_decoded_as_expected(out, case["expected"])


def test_fixtures_exist() -> None:
    assert len(list(FIXTURES.glob("*.json"))) >= 10
    assert (FIXTURES / "_source.md").is_file()


def test_api_rest_regress_example_exactly() -> None:
    """api_rest.md 'Example': `curl -d '{"signature_name": "tensorflow/serving/regress", "examples":
    [{"x": 1.0}, {"x": 2.0}]}' .../v1/models/half_plus_three:regress` answers `{"results": [3.5, 4.0]}`."""
    case = load("regress_example.json")
    assert case["request"] == {
        "signature_name": "tensorflow/serving/regress",
        "examples": [{"x": 1.0}, {"x": 2.0}],
    }
    assert case["response"] == {"results": [3.5, 4.0]}
    out = run(case["request"], case["response"], "/v1/models/half_plus_three:regress")
    assert out.features == {"x": [1.0, 2.0]}
    assert materialize(out)[1] == {"prediction": [3.5, 4.0]}
    assert (out.rows, out.model_name, out.model_version, out.violations) == (2, "half_plus_three", None, {})


def test_api_rest_classify_example_exactly() -> None:
    """api_rest.md 'Encoding binary values': the classify request with an `image` (b64) and a
    `caption` per example; the response in the documented `result` format."""
    request = {
        "signature_name": "classify_objects",
        "examples": [
            {"image": {"b64": "aW1hZ2UgYnl0ZXM="}, "caption": "seaside"},
            {"image": {"b64": "YXdlc29tZSBpbWFnZSBieXRlcw=="}, "caption": "mountains"},
        ],
    }
    response = {"result": [[["sea", 0.6], ["sky", 0.4]], [["rock", 0.9], ["snow", 0.1]]]}
    out = run(request, response, "/v1/models/objects/versions/2:classify")
    assert out.features == {"caption": ["seaside", "mountains"]}
    assert out.outputs == {"class": ["sea", "rock"], "score": [0.6, 0.9]}
    assert (out.rows, out.model_version, out.violations) == (2, "2", {})


# --- URL and matching ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parsed"),
    [
        ("/v1/models/m:predict", ("m", None, "predict")),
        ("/v1/models/m/versions/12:classify", ("m", "12", "classify")),
        ("/v1/models/m/labels/canary:regress", ("m", "canary", "regress")),
        ("/tfs/v1/models/m/versions/3:predict", ("m", "3", "predict")),
        ("/v1/models/m", ("m", None, None)),
        ("/v2/models/m/infer", None),
        ("/v1/models/:predict", None),
    ],
)
def test_parse_path(path: str, parsed: tuple[str, str | None, str | None] | None) -> None:
    assert tf_serving.parse_path(path) == parsed


@pytest.mark.parametrize(
    ("path", "request_body", "expected"),
    [
        (PREDICT, {"inputs": {"a": [1]}}, True),
        (PREDICT, {"inputs": [[1, 2]]}, True),
        (PREDICT, {"inputs": 1.0, "signature_name": "s"}, True),
        (CLASSIFY, {"examples": [{"x": 1}]}, True),
        (REGRESS, {"examples": [], "context": {}}, True),
        (PREDICT, {"instances": [[1, 2]]}, False),  # the row format is kserve_v1's
        (PREDICT, {"instances": [[1, 2]], "inputs": [[1, 2]]}, False),
        (PREDICT, {"examples": {"x": 1}}, False),
        (PREDICT, {"data": [[1, 2]]}, False),
        ("/predict", {"inputs": {"a": [1]}}, False),
        ("/v2/models/m/infer", {"inputs": [{"name": "a", "data": [1]}]}, False),
        (PREDICT, [[1, 2]], False),
        (PREDICT, None, False),
    ],
)
def test_matches(path: str, request_body: Any, expected: bool) -> None:
    assert tf_serving.matches(exchange(path), request_body) is expected


# --- columnar ------------------------------------------------------------------------------------


def test_inputs_of_different_batch_sizes_pad_with_missing() -> None:
    out = run({"inputs": {"a": [1, 2, 3], "b": ["x"]}})
    assert out.features == {"a": [1.0, 2.0, 3.0], "b": ["x", None, None]}
    assert (out.rows, out.violations) == (3, {"missing": 2})


def test_rank_zero_inputs_alone_are_one_row() -> None:
    out = run({"inputs": {"a": 1, "b": "x"}})
    assert (out.features, out.rows) == ({"a": [1.0], "b": ["x"]}, 1)
    assert run({"inputs": {}}).rows == 0


def test_per_row_values_beyond_the_cap_keep_only_their_norm() -> None:
    """CLARIFICATIONS Issue 3: past 256 cells per row only the L2 norm is tracked, named and
    computed as oip_v2 does (`name.norm`, None for a row with a missing cell)."""
    wide = [[3.0] + [0.0] * 255 + [4.0], [1.0] * 256 + [None]]
    out = run({"inputs": {"v": wide}})
    assert out.features == {"v.norm": [5.0, None]}
    assert out.violations == {"missing": 1}
    matrix = [[[1.0] * 20 for _ in range(13)]]  # 260 values in one row
    out = run({"inputs": {"m": matrix}})
    assert (out.features, out.violations) == ({"m.norm": [math.sqrt(260)]}, {})
    out = run({"inputs": {"s": [["a"] * 300]}})
    assert (out.features, out.violations) == ({"s.norm": [None]}, {"type": 1})


def test_deeper_and_ragged_per_row_values() -> None:
    deep = [[[[1.0, 2.0]]], [[[3.0, 4.0]]]]
    out = run({"inputs": {"d": deep}})
    assert out.features == {"d[0,0,0]": [1.0, 3.0], "d[0,0,1]": [2.0, 4.0]}
    assert out.violations == {}
    out = run({"inputs": {"r": [[[1.0, 2.0], [3.0]]]}})
    assert (out.features, out.violations) == ({"r": [None]}, {"type": 1})


def test_single_tensor_of_records_and_binary_rows() -> None:
    out = run({"inputs": [{"b64": "eA=="}, {"b64": "eQ=="}]})
    assert (out.features, out.rows, out.violations) == ({}, 2, {})
    out = run({"inputs": [["a", 1], ["b", 2]]})
    assert materialize(out)[0] == {"f0": ["a", "b"], "f1": [1.0, 2.0]}


def test_output_forms() -> None:
    assert run({"inputs": [1]}, {"outputs": 0.5}).output_values == [0.5]
    assert run({"inputs": [1]}, {"outputs": [[1, 2]]}).outputs == {"prediction0": [1.0], "prediction1": [2.0]}
    assert run({"inputs": [1]}, {"outputs": {"a": [1], "b": [[0.5, 0.5]]}}).outputs == {
        "a": [1.0],
        "b[0]": [0.5],
        "b[1]": [0.5],
    }
    assert run({"inputs": [1]}, {"predictions": [{"a": 1}]}).outputs == {"a": [1.0]}
    assert run({"inputs": [1]}, {"error": "boom"}).outputs == {}


def test_request_without_inputs_or_examples_is_a_schema_violation() -> None:
    assert run({"signature_name": "s"}).violations == {"schema": 1}
    assert run([1, 2]).violations == {"type": 1}


# --- classify / regress --------------------------------------------------------------------------


def test_classify_without_a_verb_is_recognised_by_the_result_shape() -> None:
    response = {"results": [[["a", 0.2], ["b", 0.8]]]}
    out = run({"examples": [{"x": 1}]}, response, "/v1/models/m")
    assert out.outputs == {"class": ["b"], "score": [0.8]}
    out = run({"examples": [{"x": 1}]}, {"results": [1.5]}, "/v1/models/m")
    assert out.output_values == [1.5]


@pytest.mark.parametrize(
    ("classes", "top", "violations"),
    [
        ([["a", 0.1], ["b", 0.9]], ("b", 0.9), {}),
        ([["a", 0.5], ["b", 0.5]], ("a", 0.5), {}),  # ties: the first
        ([["a", float("nan")], ["b", 0.1]], ("b", 0.1), {"missing": 1}),
        ([["a", None], ["b", 0.1]], ("b", 0.1), {"missing": 1}),
        ([["a", "0.9"], ["b", 0.1]], ("b", 0.1), {"type": 1}),
        ([["a", True], ["b", 0.1]], ("b", 0.1), {"type": 1}),
        ([[1, 0.9], ["b", 0.1]], ("b", 0.1), {"type": 1}),
        ([["a"], ["b", 0.1, 3]], (None, None), {"type": 2, "missing": 2}),
        ([], (None, None), {"missing": 2}),
        ("a", (None, None), {"type": 1}),
    ],
)
def test_classify_top_class(classes: Any, top: tuple[Any, Any], violations: dict[str, int]) -> None:
    out = run({"examples": [{"x": 1}]}, {"result": [classes]}, CLASSIFY)
    assert out.outputs == {"class": [top[0]], "score": [top[1]]}
    assert out.violations == violations


def test_regress_with_malformed_values() -> None:
    out = run({"examples": [{"x": 1}, {"x": 2}]}, {"result": [[1.0], None]}, REGRESS)
    assert out.outputs == {"prediction": [None, None]}
    assert out.violations == {"type": 1, "missing": 1}
    assert run({"examples": [{"x": 1}]}, {"result": {"a": 1}}, REGRESS).violations == {"type": 1}
    assert run({"examples": [{"x": 1}]}, {"result": []}, REGRESS).outputs == {}


def test_examples_edge_cases() -> None:
    out = run({"examples": [{"x": 1}, {"x": 2}, "bad"]}, None, CLASSIFY)
    assert out.features == {"x": [1.0, 2.0, None]}
    assert out.violations == {"type": 1, "missing": 1}
    out = run({"context": {"x": 0, "c": [1, 2]}, "examples": [{"x": 1}]}, None, CLASSIFY)
    assert out.features == {"x": [1.0], "c[0]": [1.0], "c[1]": [2.0]}
    assert out.violations == {"schema": 1}  # x in both context and example
    out = run({"context": ["x"], "examples": [{"x": 1}]}, None, CLASSIFY)
    assert (out.features, out.violations) == ({"x": [1.0]}, {"type": 1})
    out = run({"examples": {"x": 1}}, None, CLASSIFY)
    assert (out.features, out.violations) == ({}, {"type": 1})
    out = run({"context": {"img": {"b64": "eA=="}}, "examples": [{"imgs": [{"b64": "eA=="}], "y": "z"}]})
    assert out.features == {"y": ["z"]}


# --- never raises --------------------------------------------------------------------------------

KEYS = st.sampled_from(
    ["inputs", "outputs", "examples", "context", "result", "results", "predictions", "instances", "error",
     "b64", "signature_name", "a", "b"]
) | st.text(max_size=4)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.just({"b64": "eA=="})
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)
PAIRS = st.lists(st.tuples(st.text(max_size=3), SCALARS).map(list) | JSON, max_size=4)
REQUESTS = (
    JSON
    | st.fixed_dictionaries({"inputs": JSON | st.dictionaries(st.text(max_size=3), JSON, max_size=4)})
    | st.fixed_dictionaries(
        {"examples": st.lists(st.dictionaries(st.text(max_size=3), JSON, max_size=4) | JSON, max_size=5)},
        optional={"context": JSON | st.dictionaries(st.text(max_size=3), JSON, max_size=3)},
    )
)
RESPONSES = (
    JSON
    | st.fixed_dictionaries({"outputs": JSON})
    | st.fixed_dictionaries({"result": st.lists(PAIRS, max_size=4) | JSON})
    | st.fixed_dictionaries({"results": JSON})
)
PATHS = st.sampled_from([PREDICT, CLASSIFY, REGRESS, "/v1/models/m/versions/1", "/other", ""])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=PATHS, request=REQUESTS, response=RESPONSES)
def test_random_json_never_raises(path: str, request: Any, response: Any) -> None:
    ex = exchange(path, ("a",))
    tf_serving.matches(ex, request)
    out = DecodedPayload()
    tf_serving.decode(ex, request, response, out)
    assert out.protocol == "tf_serving"
    assert set(out.violations) <= {"decode_error", "missing", "type", "schema"}
    features, outputs, _ = materialize(out)
    for column in (*features.values(), *outputs.values()):
        assert all(value is None or isinstance(value, (float, str, bool)) for value in column)
