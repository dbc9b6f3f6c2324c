"""KServe V1 rows as KServe's `get_predict_input` reads them (PROTOCOLS.md §1): `inputs` before
`instances`, a list of lists of records as DataFrames concatenated (one row per record)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modeltap.protocols import decode_exchange, kserve_v1
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes
from tests.support.decoding import materialize

PREDICT = "/v1/models/m:predict"


def decode(request: Any, response: Any = None) -> DecodedPayload:
    body = json.dumps(request).encode()
    answer = b"" if response is None else json.dumps(response).encode()
    return decode_exchange(ExchangeBytes("POST", PREDICT, body, answer, 200))


@pytest.mark.parametrize("key", ["instances", "inputs"])
def test_a_list_of_lists_of_records_is_one_row_per_record(key: str) -> None:
    out = decode({key: [[{"time": 1.0}, {"time": 2.0}]]}, {"predictions": [0, 1]})
    assert (out.features, out.rows, out.violations) == ({"time": [1.0, 2.0]}, 2, {})
    out = decode({key: [[{"a": 1, "b": "x"}], [{"a": 2}, {"a": 3, "b": "y"}]]})
    assert out.features == {"a": [1.0, 2.0, 3.0], "b": ["x", None, "y"]}
    assert (out.rows, out.violations) == (3, {"missing": 1})


def test_an_instance_that_is_not_a_list_of_records_there_is_a_schema_violation() -> None:
    out = decode({"instances": [[{"a": 1}], {"a": 2}, [{"a": 3}]]})
    assert (out.features, out.rows, out.violations) == ({"a": [1.0, 3.0]}, 2, {"schema": 1})


def test_inputs_wins_over_instances() -> None:
    """KServe feeds the model `inputs` when both are present."""
    both = {"inputs": [[1.0, 2.0]], "instances": [[9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]}
    out = decode(both, {"predictions": [1]})
    assert out.protocol == "kserve_v1"
    assert out.rows == 1
    assert materialize(out)[0] == {"f0": [1.0], "f1": [2.0]}
    out = decode({"inputs": [{"a": 1}], "instances": "ignored"})
    assert (out.protocol, out.features, out.rows) == ("kserve_v1", {"a": [1.0]}, 1)


def test_inputs_that_kserve_cannot_read_as_rows_is_a_schema_violation() -> None:
    out = decode({"inputs": {"a": [1]}, "instances": [[1.0]]})
    assert (out.protocol, out.features, out.matrix_rows, out.rows) == ("kserve_v1", {}, None, 0)
    assert out.violations == {"schema": 1}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"instances": [[1]]}, True),
        ({"instances": [], "inputs": [[1]]}, True),
        ({"instances": None, "inputs": [[1]]}, True),
        ({"instances": None}, False),
        ({"inputs": [[1]]}, False),  # TF Serving columnar (tf_serving.py)
        ([{"instances": [1]}], False),
    ],
)
def test_is_request(document: Any, expected: bool) -> None:
    assert kserve_v1.is_request(document) is expected


def test_lists_of_strings_and_records_stay_as_they_were() -> None:
    out = decode({"instances": ["a b", "c"]})
    assert (out.features, out.rows) == ({"f0": ["a b", "c"]}, 2)
    out = decode({"instances": [{"a": 1}, {"a": 2}]})
    assert (out.features, out.rows) == ({"a": [1.0, 2.0]}, 2)
    out = decode({"instances": [[[{"b64": "aGk="}]]]})  # binary values, not records
    assert (out.features, out.rows, out.violations) == ({}, 1, {})
