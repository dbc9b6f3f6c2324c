"""The Open Inference Protocol V2 decoder (PROTOCOLS.md §3, §7, §8; CLARIFICATIONS.md Issues 3-4).

Fixtures under tests/fixtures/protocols/oip_v2/ are written from the spec documents each one names
in `_source`, with their exact expected columns. Property tests check that nested and flat `data`
decode alike and that no input, however malformed, makes the decoder raise."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltap.protocols.json_body import loads
from modeltap.protocols.oip_v2 import PATH, decode, matches, parse_path
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "protocols" / "oip_v2"
LIMIT = 16 * 1024 * 1024


def _sse(events: list[Any]) -> bytes:
    """Frame events like MLServer's ServerSentEvent.encode(): `data: {json}\\n\\n` each."""
    return b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)


def _tensor_bytes(spec: dict[str, Any]) -> bytes:
    if spec["dtype"] == "bytes":
        items = [value.encode() for value in spec["values"]]
        return b"".join(len(item).to_bytes(4, "little") + item for item in items)
    values = [float(v) if isinstance(v, str) else v for v in spec["values"]]
    return np.asarray(values, dtype=spec["dtype"]).tobytes()


def _binary_body(header: dict[str, Any], tensors: list[bytes]) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(tensors), len(head)


def run(
    path: str = "/v2/models/m/infer",
    request: Any = None,
    response: Any = None,
    *,
    status: int = 200,
    request_body: bytes | None = None,
    response_body: bytes | None = None,
    header_length: int | None = None,
    feature_names: tuple[str, ...] = (),
    response_content_type: str = "",
    response_content_encoding: str = "",
) -> DecodedPayload:
    if request_body is None:
        request_body = b"" if request is None else json.dumps(request).encode()
    if response_body is None:
        response_body = b"" if response is None else json.dumps(response).encode()
    exchange = ExchangeBytes(
        method="POST",
        path=path,
        request_body=request_body,
        response_body=response_body,
        status=status,
        response_content_encoding=response_content_encoding,
        feature_names=feature_names,
        response_content_type=response_content_type,
        inference_header_length=header_length,
    )
    out = DecodedPayload()
    decode(exchange, request, out, LIMIT)
    return out


def same(actual: dict[str, list[Any]], expected: dict[str, list[Any]]) -> None:
    """Exact names and order; values equal (floats to float32 round-off for FP32 tensors)."""
    assert list(actual) == list(expected)
    for name, column in expected.items():
        got = actual[name]
        assert len(got) == len(column), name
        for a, e in zip(got, column, strict=True):
            if isinstance(e, float) and not isinstance(a, bool):
                assert isinstance(a, float), (name, a)
                assert a == pytest.approx(e, rel=1e-6), name
            else:
                assert type(a) is type(e), (name, a, e)
                assert a == e, (name, a, e)


# --- fixtures -------------------------------------------------------------------------------------


def _fixture_exchange(case: dict[str, Any]) -> ExchangeBytes:
    spec = case["exchange"]
    request = spec.get("request")
    request_body = b"" if request is None else json.dumps(request).encode()
    header_length = None
    if "header" in spec:
        tensors = [_tensor_bytes(t) for t in spec["tensors"]]
        binary_inputs = [i for i in spec["header"]["inputs"] if "binary_data_size" in i.get("parameters", {})]
        assert [i["parameters"]["binary_data_size"] for i in binary_inputs] == [len(t) for t in tensors]
        request_body, header_length = _binary_body(spec["header"], tensors)
    if "response_events" in spec:
        response_body = _sse(spec["response_events"])
    else:
        response = spec.get("response")
        response_body = b"" if response is None else json.dumps(response).encode()
    return ExchangeBytes(
        method="POST",
        path=spec["path"],
        request_body=request_body,
        response_body=response_body,
        status=spec["status"],
        feature_names=tuple(spec.get("feature_names", ())),
        response_content_type=spec.get("response_content_type", "application/json"),
        inference_header_length=header_length,
    )


FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))


def test_fixtures_exist_and_name_their_source() -> None:
    assert len(FIXTURE_FILES) >= 9
    for path in FIXTURE_FILES:
        assert "PROTOCOLS.md" in json.loads(path.read_text())["_source"], path.name


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture(path: Path) -> None:
    case = json.loads(path.read_text())
    exchange = _fixture_exchange(case)
    # A binary-extension body is not JSON: the decoder gets no parsed request for it.
    request = None if exchange.inference_header_length is not None else case["exchange"].get("request")
    assert matches(exchange, request)
    out = DecodedPayload()
    decode(exchange, request, out, LIMIT)
    expected = case["expected"]
    assert out.protocol == "oip_v2"
    assert out.rows == expected["rows"]
    assert (out.model_name, out.model_version, out.request_id) == (
        expected["model_name"],
        expected["model_version"],
        expected["request_id"],
    )
    same(out.features, expected["features"])
    same(out.outputs, expected["outputs"])
    assert out.violations == expected["violations"]
    assert out.skipped is None


# --- path and detection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/models/iris/infer", ("iris", None)),
        ("/v2/models/iris/versions/3/infer", ("iris", "3")),
        ("/v2/models/llm/versions/v1.2/generate_stream", ("llm", "v1.2")),
        ("/v2/models/llm/generate", ("llm", None)),
        ("/v2/models/llm/infer_stream/", ("llm", None)),
        ("/prefix/v2/models/a-b_c/infer", ("a-b_c", None)),
        ("/v2/models/iris", (None, None)),  # metadata
        ("/v2/models/iris/ready", (None, None)),
        ("/v1/models/iris:predict", (None, None)),
        ("/v2/models//infer", (None, None)),
    ],
)
def test_parse_path(path: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_path(path) == expected
    assert (PATH.search(path) is not None) == (expected[0] is not None)


def test_matches() -> None:
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    other = ExchangeBytes("POST", "/predict", b"", b"", 200)
    assert matches(ExchangeBytes("POST", "/v2/models/m/infer", b"", b"", 200), None)
    assert matches(other, {"inputs": [tensor]})
    assert matches(other._replace(inference_header_length=10), None)
    assert not matches(other, {"inputs": [{"name": "x", "shape": [1]}]})
    assert not matches(other, {"inputs": {"x": [1.0]}})  # TF Serving columnar format
    assert not matches(other, {"inputs": []})
    assert not matches(other, {"instances": [[1.0]]})
    assert not matches(other, [tensor])


# --- shapes and names -----------------------------------------------------------------------------


def test_nested_and_flat_data_give_the_same_columns_for_the_spec_output() -> None:
    nested = run(
        response={
            "outputs": [{"name": "o", "shape": [3, 2], "datatype": "FP32", "data": [[1, 2], [3, 4], [5, 6]]}]
        }
    )
    flat = run(
        response={"outputs": [{"name": "o", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    )
    assert nested.outputs == flat.outputs == {"o[0]": [1.0, 3.0, 5.0], "o[1]": [2.0, 4.0, 6.0]}


def test_non_pd_width_one_tensor_keeps_its_index() -> None:
    """Without pd, an [N, 1] input is an [N, F] tensor with F = 1; with pd it is one column."""
    spec = {"name": "x", "shape": [2, 1], "datatype": "FP64", "data": [[1.0], [2.0]]}
    assert run(request={"inputs": [spec]}).features == {"x[0]": [1.0, 2.0]}
    assert run(request={"parameters": {"content_type": "pd"}, "inputs": [spec]}).features == {"x": [1.0, 2.0]}
    named = run(request={"inputs": [spec]}, feature_names=("age",))
    assert named.features == {"age": [1.0, 2.0]}


def test_feature_names_apply_only_to_a_lone_input_of_matching_width() -> None:
    spec = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
    assert list(run(request={"inputs": [spec]}, feature_names=("a", "b")).features) == [
        "x[0]",
        "x[1]",
        "x[2]",
    ]
    two = {"inputs": [spec, {**spec, "name": "y"}]}
    assert list(run(request=two, feature_names=("a", "b", "c")).features)[:3] == ["x[0]", "x[1]", "x[2]"]
    pd = {"parameters": {"content_type": "pd"}, "inputs": [{**spec, "shape": [3], "data": [1, 2, 3]}]}
    assert list(run(request=pd, feature_names=("a",)).features) == ["x"]


def test_wide_tensors_keep_only_the_row_norm() -> None:
    rng = np.random.default_rng(7)
    wide = rng.normal(size=(3, 16, 17))  # 272 cells per row > 256
    out = run(
        request={"inputs": [{"name": "img", "shape": [3, 16, 17], "datatype": "FP64", "data": wide.tolist()}]}
    )
    assert list(out.features) == ["img.norm"]
    assert out.features["img.norm"] == pytest.approx(np.linalg.norm(wide.reshape(3, -1), axis=1).tolist())
    vector = rng.normal(size=(2, 300))
    vector[1, 5] = np.nan
    out = run(
        request={
            "inputs": [
                {"name": "emb", "shape": [2, 300], "datatype": "FP32", "data": vector.ravel().tolist()}
            ]
        }
    )
    assert out.features["emb.norm"][0] == pytest.approx(float(np.linalg.norm(vector[0])))
    assert out.features["emb.norm"][1] is None
    assert out.violations == {"missing": 1}
    # At exactly 256 cells the columns are still tracked one by one.
    out = run(
        request={"inputs": [{"name": "t", "shape": [1, 16, 16], "datatype": "INT8", "data": [0] * 256}]}
    )
    assert len(out.features) == 256
    assert list(out.features)[-1] == "t[15,15]"


def test_non_finite_values_are_missing_not_decode_errors() -> None:
    """PROTOCOLS.md §8: NaN/Infinity tokens parse tolerantly and count as missing."""
    body = (
        b'{"inputs": [{"name": "x", "shape": [4], "datatype": "FP64",'
        b' "data": [1.0, NaN, Infinity, -Infinity]}]}'
    )
    out = run(request=loads(body), request_body=body)
    assert out.features == {"x": [1.0, None, None, None]}
    assert out.violations == {"missing": 3}


def test_strings_and_objects_in_numeric_tensors_are_type_violations() -> None:
    out = run(
        request={
            "inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, "a", {"b": 1}, None]}]
        }
    )
    assert out.features == {"x": [1.0, None, None, None]}
    assert out.violations == {"type": 2, "missing": 1}


def test_ragged_nesting_is_reshaped_by_shape() -> None:
    out = run(
        request={"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1], [2, 3, 4]]}]}
    )
    assert out.features == {"x[0]": [1.0, 3.0], "x[1]": [2.0, 4.0]}
    assert out.violations == {}


def test_request_id_and_version_precedence() -> None:
    out = run(
        "/v2/models/a/versions/9/infer",
        request={"id": "req", "inputs": []},
        response={"model_name": "b", "model_version": "1", "id": 17, "outputs": []},
    )
    assert (out.model_name, out.model_version, out.request_id) == ("a", "9", "17")
    out = run("/predict", request={"id": "req", "inputs": []}, response={"model_name": "b", "outputs": []})
    assert (out.model_name, out.model_version, out.request_id) == ("b", None, "req")


# --- binary extension -----------------------------------------------------------------------------


def test_binary_request_of_every_numeric_datatype() -> None:
    values = [0, 1, 2, 3, 100, 7]
    cases = {
        "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
        "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
        "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
    }  # fmt: skip
    for datatype, dtype in cases.items():
        raw = np.asarray(values, dtype=dtype).reshape(3, 2).tobytes()
        header = {
            "inputs": [
                {
                    "name": "x",
                    "shape": [3, 2],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
        body, length = _binary_body(header, [raw])
        out = run(request_body=body, header_length=length)
        assert out.features == {"x[0]": [0.0, 2.0, 100.0], "x[1]": [1.0, 3.0, 7.0]}, datatype
        assert out.violations == {}
        assert out.rows == 3


def test_binary_bf16_is_the_high_half_of_a_float32() -> None:
    floats = np.asarray([1.0, -2.5, 0.15625], dtype="<f4")
    raw = (floats.view("<u4") >> 16).astype("<u2").tobytes()
    header = {
        "inputs": [{"name": "x", "shape": [3], "datatype": "BF16", "parameters": {"binary_data_size": 6}}]
    }
    body, length = _binary_body(header, [raw])
    assert run(request_body=body, header_length=length).features == {"x": [1.0, -2.5, 0.15625]}


def test_gzip_binary_request() -> None:
    raw = np.asarray([1.5, 2.5], dtype="<f8").tobytes()
    header = {
        "inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": 16}}]
    }
    body, length = _binary_body(header, [raw])
    exchange = ExchangeBytes(
        "POST",
        "/v2/models/m/infer",
        gzip.compress(body),
        b"",
        200,
        request_content_encoding="gzip",
        inference_header_length=length,
    )
    out = DecodedPayload()
    decode(exchange, None, out, LIMIT)
    assert out.features == {"x": [1.5, 2.5]}


def test_binary_response_without_a_header_length() -> None:
    """Triton answers binary outputs with a JSON header and raw bytes; decoders are not told the
    header length for responses, so the decoder finds where the JSON object ends."""
    raw = np.asarray([[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]], dtype="<f4").tobytes()
    header = {
        "model_name": "tri",
        "model_version": "1",
        "outputs": [
            {
                "name": "probs",
                "shape": [3, 2],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 24, "note": "é"},
            }
        ],
    }
    body, _ = _binary_body(header, [raw])
    out = run("/v2/models/tri/infer", response_body=body, response_content_type="application/octet-stream")
    assert out.outputs["probs[0]"] == pytest.approx([0.1, 0.7, 0.5])
    assert out.outputs["probs[1]"] == pytest.approx([0.9, 0.3, 0.5])
    assert out.violations == {}
    assert out.model_version == "1"


def test_truncated_binary_body_is_a_decode_error_and_the_rest_still_decodes() -> None:
    raw = np.arange(4, dtype="<f4").tobytes()
    header = {
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            {"name": "b", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
        ]
    }
    body, length = _binary_body(header, [raw[:8], raw[8:12]])  # 4 bytes of b are missing
    out = run(request_body=body, header_length=length)
    assert out.features == {"a": [0.0, 1.0]}
    assert out.violations == {"decode_error": 1}


@pytest.mark.parametrize(
    ("header_inputs", "tensor", "length_delta", "violations"),
    [
        # binary_data_size disagrees with shape x itemsize
        (
            [{"name": "a", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 8}}],
            b"\0" * 8,
            0,
            {"schema": 1},
        ),
        # a size that is not a non-negative int: later tensors cannot be located
        (
            [
                {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": -8}},
                {"name": "b", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            ],
            b"\0" * 16,
            0,
            {"schema": 2},
        ),
        # bytes left over after the last tensor
        (
            [{"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}],
            b"\0" * 12,
            0,
            {"schema": 1},
        ),
        # a BYTES element whose length prefix runs past its tensor
        (
            [{"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}],
            b"\x09\0\0\0ab",
            0,
            {"decode_error": 1},
        ),
        # a header length beyond the body
        (
            [{"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}],
            b"\0" * 8,
            10_000,
            {"decode_error": 1},
        ),
        # a header length that cuts the JSON
        (
            [{"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}],
            b"\0" * 8,
            -3,
            {"decode_error": 1},
        ),
    ],
)
def test_malformed_binary_requests_are_counted(
    header_inputs: list[dict[str, Any]], tensor: bytes, length_delta: int, violations: dict[str, int]
) -> None:
    body, length = _binary_body({"inputs": header_inputs}, [tensor])
    out = run(request_body=body, header_length=length + length_delta)
    assert out.violations == violations


# --- malformed JSON tensors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "violations"),
    [
        ({"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}, {"schema": 1}),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": [[1, 2], [3]]}, {"schema": 1}),
        ({"name": "x", "shape": [2], "datatype": "FLOAT32", "data": [1, 2]}, {"type": 1}),
        ({"name": "x", "shape": [2], "datatype": "fp32", "data": [1, 2]}, {"type": 1}),
        ({"name": "x", "shape": [2], "datatype": None, "data": [1, 2]}, {"type": 1}),
        ({"name": "x", "shape": [-2], "datatype": "FP32", "data": [1, 2]}, {"schema": 1}),
        ({"name": "x", "shape": [2**40, 2**40], "datatype": "FP32", "data": [1, 2]}, {"schema": 1}),
        ({"name": "x", "shape": [2**64], "datatype": "FP32", "data": [1]}, {"schema": 1}),
        ({"name": "x", "shape": [2.0], "datatype": "FP32", "data": [1, 2]}, {"schema": 1}),
        ({"name": "x", "shape": [True], "datatype": "FP32", "data": [1]}, {"schema": 1}),
        ({"name": "x", "shape": [], "datatype": "FP32", "data": [1]}, {"schema": 1}),
        ({"name": "x", "shape": "2", "datatype": "FP32", "data": [1, 2]}, {"schema": 1}),
        ({"name": "x", "shape": [10**12, 0], "datatype": "FP32", "data": []}, {"schema": 1}),
        ({"name": "x", "shape": [2], "datatype": "FP32"}, {"schema": 1}),
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": {"a": 1}}, {"type": 1}),
        ({"name": 3, "shape": [2], "datatype": "FP32", "data": [1, 2]}, {"schema": 1}),
        ({"shape": [2], "datatype": "FP32", "data": [1, 2]}, {"schema": 1}),
        ({"name": "x", "shape": [2], "datatype": "BOOL", "data": [True, "yes"]}, {"type": 1}),
        ({"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", 5]}, {"type": 1}),
        ([1, 2], {"type": 1}),
    ],
)
def test_malformed_tensors_are_violations_not_exceptions(spec: Any, violations: dict[str, int]) -> None:
    good = {"name": "ok", "shape": [2], "datatype": "INT32", "data": [1, 2]}
    out = run(request={"inputs": [good, spec]})
    assert out.violations == violations
    assert out.features["ok"] == [1.0, 2.0]
    assert out.rows == 2


@pytest.mark.parametrize(
    ("spec", "column", "violations"),
    [
        ({"shape": [3], "datatype": "BOOL", "data": [1, 0, None]}, [True, False, None], {"missing": 1}),
        ({"shape": [2], "datatype": "INT64", "data": [1, 10**400]}, [1.0, None], {"missing": 1}),
        (
            {
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"content_type": "datetime"},
                "data": ["2024-01-01T00:00:00", "x"],
            },
            [1704067200.0, None],
            {"type": 1},
        ),
    ],
)
def test_value_conversions(spec: dict[str, Any], column: list[Any], violations: dict[str, int]) -> None:
    out = run(request={"inputs": [{"name": "x", **spec}]})
    assert out.features == {"x": column}
    assert out.violations == violations


def test_wide_bool_and_text_tensors() -> None:
    bools = run(
        request={"inputs": [{"name": "b", "shape": [2, 300], "datatype": "BOOL", "data": [True] * 600}]}
    )
    assert bools.features["b.norm"] == pytest.approx([math.sqrt(300)] * 2)
    text = run(
        request={"inputs": [{"name": "t", "shape": [1, 300], "datatype": "BYTES", "data": ["a"] * 300}]}
    )
    assert text.features == {}
    assert text.violations == {"type": 1}


@pytest.mark.parametrize(
    ("spec", "tensor", "violations"),
    [
        (
            {"shape": [1], "datatype": "BYTES", "parameters": {"content_type": "str"}},
            b"\x02\0\0\0\xff\xfe",
            {"type": 1},
        ),
        ({"shape": [2], "datatype": "BYTES"}, b"\x01\0\0\0a", {"schema": 1}),
        ({"shape": [1], "datatype": "BYTES"}, b"\x01\0\0\0a\0\0", {"decode_error": 1}),
    ],
)
def test_binary_bytes_elements(spec: dict[str, Any], tensor: bytes, violations: dict[str, int]) -> None:
    header = {
        "inputs": [
            {
                "name": "s",
                **spec,
                "parameters": {**spec.get("parameters", {}), "binary_data_size": len(tensor)},
            }
        ]
    }
    body, length = _binary_body(header, [tensor])
    assert run(request_body=body, header_length=length).violations == violations


def test_inputs_that_disagree_on_the_batch() -> None:
    out = run(
        request={
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                {"name": "b", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]},
                {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
            ]
        }
    )
    assert out.features == {"a": [1.0, 2.0]}
    assert out.rows == 2
    assert out.violations == {"schema": 2}


def test_column_cap_across_inputs() -> None:
    """At most MAX_COLUMNS (2048) columns per exchange: an input that would pass it is skipped."""
    inputs = [{"name": f"v{i}", "shape": [1, 256], "datatype": "UINT8", "data": [1] * 256} for i in range(9)]
    out = run(request={"inputs": inputs})
    assert len(out.features) == 2048
    assert "v8[0]" not in out.features
    assert out.violations == {"schema": 1}


def test_tensor_names_too_long_to_track_are_refused_before_their_cells_are_named() -> None:
    """A `name[j]` column longer than the statistics ever track (128 characters) is refused as
    `schema` before the names are built: a client's long name would be copied into every cell's."""
    long = "t" * 200
    inputs = [
        {"name": long, "shape": [2, 3], "datatype": "FP32", "data": [1] * 6},
        {"name": "ok", "shape": [2], "datatype": "FP32", "data": [1, 2]},
    ]
    out = run(request={"inputs": inputs})
    assert (out.features, out.rows, out.violations) == ({"ok": [1.0, 2.0]}, 2, {"schema": 1})
    # A rank-1 input keeps its own name, and a wide one its norm: one string each, as sent.
    one = {"name": long, "shape": [2], "datatype": "FP32", "data": [1, 2]}
    wide = {"name": long, "shape": [1, 300], "datatype": "FP32", "data": [0.0] * 300}
    assert list(run(request={"inputs": [one]}).features) == [long]
    assert list(run(request={"inputs": [wide]}).features) == [f"{long}.norm"]


def test_document_level_problems() -> None:
    assert run(request={"inputs": {"x": [1]}}).violations == {"type": 1}
    assert run(request={"instances": [[1]]}).violations == {"schema": 1}
    assert run(request=[1, 2]).violations == {"type": 1}
    assert run(response={"model_name": "m"}).violations == {"schema": 1}
    assert run(response=[1]).violations == {"type": 1}
    assert run(response_body=b"{not json").violations == {"decode_error": 1}
    assert run(response_body=b"{}", response_content_encoding="br").violations == {"decode_error": 1}
    assert run(request={"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES"}]}).violations == {
        "schema": 1
    }
    wrong_count = {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}
    assert run(request=wrong_count).violations == {"schema": 1}
    assert run(response_body=b"\x1f\x8b", response_content_encoding="gzip").violations == {"decode_error": 1}
    # The generate extension (`text_input` / `text_output`) carries no tensors: nothing is wrong.
    generate = run("/v2/models/llm/generate", request={"text_input": "hi"}, response={"text_output": "yo"})
    assert generate.violations == {}
    assert generate.features == {}
    assert generate.outputs == {}


def test_base64_bytes_are_skipped_but_carry_the_batch() -> None:
    out = run(
        request={
            "inputs": [
                {
                    "name": "img",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"content_type": "base64"},
                    "data": ["aGk=", "aGk="],
                }
            ]
        }
    )
    assert out.features == {}
    assert out.rows == 2
    assert out.violations == {}


def test_gzip_response_and_body_too_large() -> None:
    response = {"outputs": [{"name": "y", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
    body = gzip.compress(json.dumps(response).encode())
    assert run(response_body=body, response_content_encoding="gzip").outputs == {"y": [1.0, 2.0]}
    exchange = ExchangeBytes("POST", "/v2/models/m/infer", b"", body, 200, response_content_encoding="gzip")
    out = DecodedPayload()
    decode(exchange, None, out, 8)
    assert out.skipped == "body_too_large"
    assert out.outputs == {}


# --- streaming ------------------------------------------------------------------------------------


def test_sse_framing_variants() -> None:
    event = {"id": "s", "outputs": [{"name": "tok", "shape": [1], "datatype": "INT64", "data": [5]}]}
    body = (
        b": keep-alive\r\n\r\n"
        b"event: message\r\ndata: " + json.dumps(event).encode() + b"\r\n\r\n"
        b'data: {"outputs": [{"name": "tok", "shape": [2],\n'
        b'data: "datatype": "INT64", "data": [6, 7]}]}\n\n'
        b'data: {"error": "model overloaded"}\n\n'
        b"data: [DONE]\n\n"
        b'data: {"outputs": [{"name": "tok", "shape": [1], "datatype": "INT64", "data": [8]}]}'
    )  # the last event lost its blank line: the stream was cut
    out = run("/v2/models/m/generate_stream", response_body=body, response_content_type="text/event-stream")
    assert out.outputs == {"tok": [5.0, 6.0, 7.0, 8.0]}
    assert out.request_id == "s"
    assert out.violations == {}
    broken = run(
        "/v2/models/m/infer_stream",
        response_body=b"data: {oops\n\n",
        response_content_type="text/event-stream",
    )
    assert broken.violations == {"decode_error": 1}


# --- properties -----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    datatype=st.sampled_from(["FP32", "FP64", "INT64"]),
    seed=st.integers(0, 2**32 - 1),
    with_missing=st.booleans(),
    pandas=st.booleans(),
)
def test_nested_and_flat_data_decode_to_the_same_columns(
    shape: list[int], datatype: str, seed: int, with_missing: bool, pandas: bool
) -> None:
    rng = np.random.default_rng(seed)
    cells = rng.integers(-1000, 1000, size=shape).astype(np.float64)
    if datatype != "INT64":
        cells = cells / 8
    nested: Any = cells.tolist()
    flat: list[Any] = cells.ravel().tolist()
    if with_missing:
        flat[0] = None
        inner = nested
        while isinstance(inner[0], list):
            inner = inner[0]
        inner[0] = None
    parameters = {"content_type": "pd"} if pandas else {}

    def document(data: Any) -> dict[str, Any]:
        return {
            "parameters": parameters,
            "inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}],
        }

    nested_out = run(request=document(nested), response={"outputs": document(nested)["inputs"]})
    flat_out = run(request=document(flat), response={"outputs": document(flat)["inputs"]})
    assert nested_out.features == flat_out.features
    assert nested_out.outputs == flat_out.outputs
    assert nested_out.violations == flat_out.violations == ({"missing": 2} if with_missing else {})
    assert nested_out.rows == shape[0]
    # Independently: column j of the features is cells.reshape(N, -1)[:, j].
    matrix = cells.reshape(shape[0], -1)
    columns = list(nested_out.features.values())
    if matrix.shape[1] > 256:
        return
    assert len(columns) == matrix.shape[1]
    for j, column in enumerate(columns):
        expected = [
            None if (with_missing and i == 0 and j == 0) else v for i, v in enumerate(matrix[:, j].tolist())
        ]
        assert column == expected


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)
DATATYPES = st.sampled_from(
    ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES", "STRING", ""]
)
TENSOR = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=4), JSON), "datatype": DATATYPES | JSON},
    optional={
        "shape": st.lists(st.integers(-2, 5), max_size=4) | JSON,
        "data": st.lists(st.integers(-3, 3) | st.floats() | st.text(max_size=3) | st.none(), max_size=12)
        | st.lists(st.lists(st.floats() | st.booleans(), max_size=4), max_size=4)
        | JSON,
        "parameters": st.fixed_dictionaries(
            {},
            optional={
                "content_type": st.sampled_from(["str", "base64", "datetime", "pd", "np"]) | JSON,
                "binary_data_size": st.integers(-4, 40) | JSON,
            },
        )
        | JSON,
    },
)
DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(TENSOR, max_size=4) | JSON,
        "outputs": st.lists(TENSOR, max_size=4) | JSON,
        "parameters": st.fixed_dictionaries({}, optional={"content_type": st.just("pd") | JSON}) | JSON,
        "id": JSON,
        "model_name": JSON,
        "model_version": JSON,
        "error": JSON,
    },
)
PATHS = st.sampled_from(
    [
        "/v2/models/m/infer",
        "/v2/models/m/versions/1/infer_stream",
        "/v2/models/m/generate",
        "/v2/models/m/generate_stream",
        "/other",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=PATHS,
    request=DOCUMENT | JSON,
    response=DOCUMENT | JSON,
    status=st.sampled_from([200, 400, 500]),
    sse=st.booleans(),
    feature_names=st.lists(st.text(max_size=3), max_size=3),
)
def test_random_json_never_raises(
    path: str, request: Any, response: Any, status: int, sse: bool, feature_names: list[str]
) -> None:
    response_body = _sse([response, response]) if sse else json.dumps(response).encode()
    out = run(
        path,
        request=request,
        response_body=response_body,
        status=status,
        feature_names=tuple(feature_names),
        response_content_type="text/event-stream" if sse else "",
    )
    _check_invariants(out)


@settings(max_examples=200, deadline=None)
@given(header=DOCUMENT, tail=st.binary(max_size=64), delta=st.integers(-8, 8))
def test_random_binary_bodies_never_raise(header: dict[str, Any], tail: bytes, delta: int) -> None:
    head = json.dumps(header).encode()
    out = run(request_body=head + tail, header_length=len(head) + delta, response_body=head + tail)
    _check_invariants(out)


def _check_invariants(out: DecodedPayload) -> None:
    assert out.protocol == "oip_v2"
    assert set(out.violations) <= {"decode_error", "missing", "type", "schema"}
    assert all(n > 0 for n in out.violations.values())
    for column in out.features.values():
        assert len(column) == out.rows  # every input column has one value per row
    for column in [*out.features.values(), *out.outputs.values()]:
        for value in column:
            assert (
                value is None
                or isinstance(value, (str, bool))
                or (isinstance(value, float) and math.isfinite(value))
            )
    for value in (out.model_name, out.model_version, out.request_id):
        assert value is None or isinstance(value, str)
