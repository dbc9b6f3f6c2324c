"""Plain JSON decoding: records, lists of records and wrappers, and the flat vector (one record
sent as a list of scalars) told apart from a batch of one-feature rows by the answer; random JSON
never raises."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltap.protocols import decode_exchange, plain_json
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes

IRIS = [5.1, 3.5, 1.4, 0.2]
IRIS_COLUMNS = {"f0": [5.1], "f1": [3.5], "f2": [1.4], "f3": [0.2]}


def run(request: Any, response: Any = None, names: tuple[str, ...] = ()) -> DecodedPayload:
    out = DecodedPayload()
    plain_json.decode(
        ExchangeBytes("POST", "/predict", b"", b"", 200, feature_names=names), request, response, out
    )
    return out


def test_flat_vector_answered_by_one_prediction_is_one_row() -> None:
    """`{"features": [5.1, 3.5, 1.4, 0.2]}` is one iris flower, not four rows of `f0`."""
    out = run({"features": IRIS}, {"prediction": 0})
    assert (out.rows, out.features, out.violations) == (1, IRIS_COLUMNS, {})
    assert out.outputs == {"prediction": [0.0]}
    # The same columns as its batch-of-one form.
    batch_of_one = run({"features": [IRIS]}, {"prediction": [0]})
    assert (batch_of_one.rows, batch_of_one.features) == (1, IRIS_COLUMNS)


def test_flat_vector_through_detection() -> None:
    body = b'{"features": [5.1, 3.5, 1.4, 0.2]}'
    exchange = ExchangeBytes("POST", "/predict", body, b'{"prediction": 0}', 200)
    out = decode_exchange(exchange)
    assert (out.protocol, out.rows, out.features) == ("json", 1, IRIS_COLUMNS)
    assert out.outputs == {"prediction": [0.0]}


@pytest.mark.parametrize(
    "response",
    [{"prediction": 0}, {"predictions": [0]}, {"predictions": [[0.1, 0.9]]}, 0, [0], "a", {"label": "a"}],
)
def test_flat_vector_with_any_single_answer_is_one_row(response: Any) -> None:
    out = run({"features": IRIS}, response)
    assert (out.rows, out.features) == (1, IRIS_COLUMNS)
    assert run({"inputs": IRIS}, response).features == IRIS_COLUMNS


def test_flat_vector_takes_the_reference_names() -> None:
    out = run({"data": IRIS}, {"prediction": 0}, names=("sl", "sw", "pl", "pw"))
    assert out.features == {"sl": [5.1], "sw": [3.5], "pl": [1.4], "pw": [0.2]}


def test_top_level_flat_vector_is_one_row_too() -> None:
    out = run(IRIS, {"prediction": 1})
    assert (out.rows, out.features) == (1, IRIS_COLUMNS)


def test_flat_list_answered_row_by_row_is_a_batch() -> None:
    out = run({"inputs": [1.0, 2.0, 3.0]}, {"predictions": [0.1, 0.2, 0.3]})
    assert (out.rows, out.features) == (3, {"f0": [1.0, 2.0, 3.0]})
    assert out.outputs == {"prediction": [0.1, 0.2, 0.3]}
    out = run([1.0, 2.0], [0, 1])
    assert (out.rows, out.features) == (2, {"f0": [1.0, 2.0]})


def test_flat_vector_without_an_answer_follows_the_reference_width() -> None:
    # An error answer (not decoded) says nothing: a record, unless the reference has one feature.
    assert (run({"features": IRIS}).rows, run({"features": IRIS}).features) == (1, IRIS_COLUMNS)
    out = run({"features": [1.0, 2.0]}, names=("x",))
    assert (out.rows, out.features) == (2, {"x": [1.0, 2.0]})
    # An answer without a recognised prediction key says nothing either.
    assert run({"features": IRIS}, {"probabilities": [0.2, 0.8]}).rows == 1


def test_mixed_scalars_in_a_vector_are_one_row() -> None:
    out = run({"features": [1, "red", None, True]}, {"prediction": 0})
    assert out.features == {"f0": [1.0], "f1": ["red"], "f2": [None], "f3": [True]}
    assert (out.rows, out.violations) == (1, {"missing": 1})


def test_records_and_batches_are_unchanged() -> None:
    out = run({"a": 1, "b": "x"}, {"score": 0.5})
    assert (out.rows, out.features, out.outputs) == (1, {"a": [1.0], "b": ["x"]}, {"prediction": [0.5]})
    out = run([{"a": 1}, {"a": 2}], {"predictions": [0, 1], "probabilities": [0.2, 0.7]})
    assert (out.rows, out.features) == (2, {"a": [1.0, 2.0]})
    assert out.outputs == {"prediction": [0.0, 1.0], "probabilities": [0.2, 0.7]}
    out = run({"rows": [[1, 2], [3, 4]]}, {"predictions": [0, 1]})
    assert (out.rows, out.features) == (2, {"f0": [1.0, 3.0], "f1": [2.0, 4.0]})
    out = run({"features": [7.0]}, {"prediction": 1})  # one item: one row either way
    assert (out.rows, out.features) == (1, {"f0": [7.0]})


def test_request_that_is_no_record_is_a_type_violation() -> None:
    out = run("text", {"prediction": 0})
    assert (out.rows, out.features, out.violations) == (0, {}, {"type": 1})


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=4)
NAMES = st.text(max_size=3)
KEYS = st.sampled_from(["features", "inputs", "data", "prediction", "predictions", "score", "label"])
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(KEYS | NAMES, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=JSON, response=JSON, names=st.sampled_from([(), ("x",), ("a", "b")]))
def test_random_json_never_raises(request: Any, response: Any, names: tuple[str, ...]) -> None:
    out = run(request, response, names)
    assert set(out.violations) <= {"missing", "type", "schema"}
    for column in out.features.values():
        assert len(column) == out.rows
    body = json.dumps(request).encode()
    decode_exchange(ExchangeBytes("POST", "/predict", body, json.dumps(response).encode(), 200))
