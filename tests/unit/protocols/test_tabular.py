"""Rows and tensors to columns (tabular.py), through the decoders that use it: TF Serving's row
format (kserve_v1) and columnar form (tf_serving) name the same data alike (PROTOCOLS.md §2), wide
values keep only their norm as oip_v2 does (CLARIFICATIONS Issue 3), binary values are skipped,
literal keys that collide with expanded names keep rows aligned, and what a decode may add to a
body (padding, names) stays bounded."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from modeltap.protocols import decode_exchange, tabular
from modeltap.protocols.payload import Column, DecodedPayload, ExchangeBytes
from modeltap.protocols.tabular import MAX_COLUMNS, rows_to_columns
from tests.support.decoding import materialize

# Module attributes read in the tests (not imported by name), so that each test stands alone.
MAX_NAME_CHARS = 128  # StateCaps.max_name_chars

PREDICT = "/v1/models/m:predict"


def decode(request: Any, response: Any = None, path: str = PREDICT) -> DecodedPayload:
    body = json.dumps(request).encode()
    answer = b"" if response is None else json.dumps(response).encode()
    return decode_exchange(ExchangeBytes("POST", path, body, answer, 200))


def aligned(columns: dict[str, Column], rows: int) -> bool:
    return all(len(column) == rows for column in columns.values())


# --- the same names in either form ---------------------------------------------------------------

ROWS = [
    {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
    {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
]
EXPECTED = {
    "tag": ["foo", "bar"],
    "signal[0]": [1.0, 3.0],
    "signal[1]": [2.0, 4.0],
    "signal[2]": [3.0, 1.0],
    "signal[3]": [4.0, 2.0],
    "signal[4]": [5.0, 5.0],
    "sensor[0,0]": [1.0, 4.0],
    "sensor[0,1]": [2.0, 5.0],
    "sensor[1,0]": [3.0, 6.0],
    "sensor[1,1]": [4.0, 8.0],
}


def test_row_format_expands_per_row_matrices_like_the_columnar_form() -> None:
    """api_rest.md's row-format example: `sensor` is a 2x2 matrix per instance."""
    rows = decode({"signature_name": "serving_default", "instances": ROWS}, {"predictions": [1, 0]})
    assert (rows.protocol, rows.rows, rows.features, rows.violations) == ("kserve_v1", 2, EXPECTED, {})
    columnar = {name: [row[name] for row in ROWS] for name in ROWS[0]}
    cols = decode({"inputs": columnar}, {"outputs": [1, 0]})
    assert (cols.protocol, cols.rows, cols.features, cols.violations) == ("tf_serving", 2, EXPECTED, {})


def test_rank_three_values_and_ragged_values_alike_in_both_forms() -> None:
    cube = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    rows = decode({"instances": [{"c": cube}, {"c": [[[1, 2]], [[3]]]}]})
    cols = decode({"inputs": {"c": [cube, [[[1, 2]], [[3]]]]}})
    assert rows.features == cols.features
    assert rows.features["c[1,1,0]"] == [7.0, None]
    assert rows.features["c"] == [None, None]  # the ragged row: a `type`
    assert rows.violations == cols.violations == {"type": 1, "missing": 9}


# --- wide values: the norm ------------------------------------------------------------------------


def test_wide_vectors_keep_only_their_norm_named_as_oip_v2_names_it() -> None:
    vec = [1.0] * 300
    rows = decode({"instances": [{"age": 3, "emb": vec}, {"age": 4, "emb": [*vec[:-1], None]}]})
    assert rows.features == {"age": [3.0, 4.0], "emb.norm": [math.sqrt(300), None]}
    assert rows.violations == {"missing": 1}
    cols = decode({"inputs": {"age": [3, 4], "emb": [vec, [*vec[:-1], None]]}})
    assert (cols.features, cols.violations) == (rows.features, rows.violations)
    oip = decode(
        {"inputs": [{"name": "emb", "datatype": "FP32", "shape": [2, 300], "data": [vec, vec]}]},
        path="/v2/models/m/infer",
    )
    assert list(oip.features) == ["emb.norm"]
    assert oip.features["emb.norm"] == pytest.approx([math.sqrt(300)] * 2)


def test_wide_values_of_text_are_one_type_violation_per_row() -> None:
    out = decode({"instances": [{"tokens": ["a"] * 300}, {"tokens": [1.0] * 299 + [float("inf")]}]})
    assert out.features == {"tokens.norm": [None, None]}
    assert out.violations == {"type": 1, "missing": 1}


def test_exactly_the_cap_is_still_tracked_cell_by_cell() -> None:
    out = decode({"instances": [{"m": [[0] * 16 for _ in range(16)]}]})
    assert len(out.features) == 256
    assert list(out.features)[-1] == "m[15,15]"


# --- binary values ---------------------------------------------------------------------------------


def test_binary_instances_and_fields_are_skipped_in_row_format() -> None:
    """api_rest.md 'Encoding binary values': `{"b64": ...}` is binary, not a feature."""
    images = [{"b64": "aGk="}, {"b64": "aGk="}, {"b64": "aGk="}]
    out = decode({"instances": images}, {"predictions": [1, 0, 1]})
    assert (out.features, out.rows, out.violations) == ({}, 3, {})
    frames = {"instances": [{"id": 1, "frames": [{"b64": "aGk="}, {"b64": "aGk="}]}]}
    out = decode(frames, {"predictions": [1]})
    assert (out.features, out.rows, out.violations) == ({"id": [1.0]}, 1, {})
    columnar = decode({"inputs": {"id": [1], "frames": [[{"b64": "aGk="}, {"b64": "aGk="}]]}})
    assert (columnar.features, columnar.violations) == (out.features, out.violations)


def test_only_a_single_b64_string_member_is_binary() -> None:
    """TF Serving's IsValBase64Object: exactly one member, `b64`, holding a string."""
    assert tabular.is_binary_field({"b64": "aGk="})
    assert tabular.is_binary_field([[{"b64": "aGk="}]])
    assert not tabular.is_binary_field({"b64": "aGk=", "x": 1})
    assert not tabular.is_binary_field({"b64": 3})
    out = decode({"instances": [{"b64": "aGk=", "x": 1}]})
    assert out.features == {"b64": ["aGk="], "x": [1.0]}


# --- collisions keep rows aligned -------------------------------------------------------------------


def test_a_literal_key_colliding_with_an_expanded_name_keeps_the_first() -> None:
    out = decode({"instances": [{"x": [1, 2], "x[0]": 100}, {"x": [3, 4], "x[0]": 300}]})
    assert out.features == {"x[0]": [1.0, 3.0], "x[1]": [2.0, 4.0]}
    assert (out.rows, out.violations) == (2, {"schema": 2})
    # The literal key first: the whole vector of that row is refused, never half of it.
    out = decode({"instances": [{"x[0]": 100, "x": [1, 2]}, {"x": [3, 4]}]})
    assert out.features == {"x[0]": [100.0, 3.0], "x[1]": [None, 4.0]}
    assert out.violations == {"schema": 1, "missing": 1}
    assert aligned(out.features, 2)


def test_columnar_inputs_colliding_with_matrix_cells_do_not_overwrite() -> None:
    out = decode({"inputs": {"s": [[[1, 2]], [[3, 4]]], "s[0,0]": [7, 8]}}, {"outputs": [0, 1]})
    assert out.features == {"s[0,0]": [1.0, 3.0], "s[0,1]": [2.0, 4.0]}
    assert (out.rows, out.violations) == (2, {"schema": 2})
    out = decode({"inputs": {"s": [[1, 2], [3, 4]], "s[1]": 5}})
    assert (out.features, out.violations) == ({"s[0]": [1.0, 3.0], "s[1]": [2.0, 4.0]}, {"schema": 1})


# --- bounds ---------------------------------------------------------------------------------------


def test_sparse_keys_drop_the_sparsest_columns_past_the_fill_budget() -> None:
    """A key in one row of many is padded with missing cells in all the others: past the fill
    budget the sparsest columns are dropped (`schema`), the rest stay aligned."""
    n = tabular.FILL_FLOOR
    rows: list[Any] = [{"a": 1.0} for _ in range(n)] + [{f"k{i}": 1.0} for i in range(8)]
    violations: dict[str, int] = {}
    columns, count = rows_to_columns(rows, (), violations)
    assert count == n + 8
    assert aligned(columns, n + 8)
    assert columns["a"] == [1.0] * n + [None] * 8
    # k5..k7 find no room to pad their first n rows; to pad the rest, k0 (the most missing
    # cells) goes; every kept k has n + 7 missing cells.
    assert [name for name in columns if name.startswith("k")] == ["k1", "k2", "k3", "k4"]
    assert columns["k1"][n + 1] == 1.0
    assert violations == {"schema": 4, "missing": 8 + 4 * (n + 7)}


def test_rank_zero_inputs_repeat_within_the_fill_budget() -> None:
    n = 10_000
    out = decode({"inputs": {"a": [0] * n, **{f"s{i}": i for i in range(6)}}})
    assert out.rows == n
    # Budget: FILL_FLOOR + 2 x 10_007 values: two copies of 9_999 cells, not a third.
    assert [name for name in out.features if name != "a"] == ["s0", "s1"]
    assert out.features["s1"] == [1.0] * n
    assert out.violations == {"schema": 4}
    small = decode({"inputs": {"a": [1, 2], "t": None, "u": "x"}})
    assert small.features == {"a": [1.0, 2.0], "t": [None, None], "u": ["x", "x"]}
    assert small.violations == {"missing": 2}


def test_rows_wider_than_the_column_cap_keep_the_first_columns() -> None:
    out = decode({"instances": [[0.5] * (MAX_COLUMNS + 5), [1.5] * (MAX_COLUMNS + 5)]})
    features, _, violations = materialize(out)
    assert len(features) == MAX_COLUMNS
    assert features[f"f{MAX_COLUMNS - 1}"] == [0.5, 1.5]
    assert violations == {"schema": 2}


def test_names_too_long_to_track_are_refused_before_expanding() -> None:
    long = "n" * MAX_NAME_CHARS
    out = decode({"instances": [{long: [1, 2], "ok": 1}, {long: [3, 4], "ok": 2}]})
    assert out.features == {"ok": [1.0, 2.0]}
    assert out.violations == {"schema": 1}  # once per name, not per row
    out = decode({"inputs": {long: [[1, 2], [3, 4]]}})
    assert (out.features, out.violations) == ({}, {"schema": 1})
    edge = "e" * (MAX_NAME_CHARS - 3)  # e...e[9] is 128 characters, e...e[10] would be 129
    assert tabular.index_names(edge, (10,)) is not None
    assert tabular.index_names(edge, (11,)) is None
    # A scalar keeps its name: it is the body's own string, and the statistics judge it.
    assert decode({"instances": [{long: 1}]}).features == {long: [1.0]}


def test_the_name_cache_is_bounded_in_characters() -> None:
    name = "c" * (MAX_NAME_CHARS - 20)
    for i in range(tabular.NAME_CACHE_CHARS // (256 * MAX_NAME_CHARS) + 50):
        assert tabular.index_names(f"{i:06d}{name}", (16, 16)) is not None
    assert tabular.NAMES.chars <= tabular.NAME_CACHE_CHARS


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        ([1, 2, 3], ((3,), [1, 2, 3])),
        ([[1, 2], [3, 4]], ((2, 2), [1, 2, 3, 4])),
        ([[[1], [2]]], ((1, 2, 1), [1, 2])),
        ([[1, 2], [3]], None),
        ([[1, 2], 3], None),
        ([1, [2]], None),
        ([], None),
        ([[]], None),
        ([[{"a": 1}]], ((1, 1), [{"a": 1}])),
    ],
)
def test_cells(value: list[Any], shape: Any) -> None:
    assert tabular.cells(value) == shape


def test_deep_nesting_never_recurses() -> None:
    deep: Any = [1.0]
    for _ in range(5000):
        deep = [deep]
    shape = tabular.cells(deep)
    assert shape is not None
    assert shape[1] == [1.0]
    violations: dict[str, int] = {}
    columns, _ = rows_to_columns([{"d": deep}], (), violations)
    assert (columns, violations) == ({}, {"schema": 1})  # its one cell's name is too long


def test_dataframe_rows() -> None:
    violations: dict[str, int] = {}
    records = [[{"a": 1}, {"a": 2}], [{"a": 3}], 5]
    assert tabular.dataframe_rows(records, violations) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert violations == {"schema": 1}
    plain: list[list[Any]] = [[{"a": 1}], [[1, 2]], [[{"b64": "aGk="}]], [[]], []]
    for instances in plain:
        assert tabular.dataframe_rows(instances, violations) is instances
