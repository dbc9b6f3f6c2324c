"""The reference-profile builder: edges and counts against independent numpy, bucket assignment
against the OpenTelemetry SDK, ids, category canonicalisation, kind inference and bad input."""

from __future__ import annotations

import decimal
import math
import re
import warnings
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from modeltap.errors import ReferenceProfileError
from modeltap.reference.builder import (
    NonNumericValuesWarning,
    SmallReferenceWarning,
    build_profile,
    parse_number,
)
from modeltap.reference.document import (
    canonical_category,
    load_reference,
    parse_reference,
    profile_id,
    write_profile,
)

# Most tests here profile a few rows on purpose; the small-reference warning is tested on its own.
pytestmark = pytest.mark.filterwarnings("ignore::modeltap.reference.builder.SmallReferenceWarning")


def _feature(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [f for f in document["features"] if f["name"] == name]
    assert len(found) == 1, name
    return found[0]


def _independent_edges(values: np.ndarray) -> tuple[list[float], list[float], list[int]]:
    """The documented recipe, written out separately from the builder."""
    finite = values[np.isfinite(values)]
    percentiles = np.percentile(finite, np.arange(1, 100), method="linear")
    lo = np.nextafter(finite.min(), -np.inf)
    fine = [float(lo), *sorted({float(p) for p in percentiles} | {float(finite.max())})]
    psi = [float(lo), *sorted({float(p) for p in percentiles[9::10]} | {float(finite.max())})]
    counts = [int(np.sum(np.searchsorted(fine, finite, side="left") == i)) for i in range(len(fine) + 1)]
    return fine, psi, counts


def _otel_bucket_counts(edges: list[float], values: np.ndarray) -> tuple[int, ...]:
    """Bucket counts from the OpenTelemetry SDK's explicit-bucket aggregation over `edges`.

    The SDK (1.45.2) drops negative values passed to `Histogram.record()` (with a warning), so
    callers record non-negative values only.
    """
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        views=[View(instrument_name="feature", aggregation=ExplicitBucketHistogramAggregation(edges))],
    )
    try:
        histogram = provider.get_meter("modeltap-test").create_histogram("feature")
        for value in values.tolist():
            histogram.record(value)
        data = reader.get_metrics_data()
        assert data is not None
        (point,) = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
        assert isinstance(point, HistogramDataPoint)
        assert list(point.explicit_bounds) == edges
        return tuple(point.bucket_counts)
    finally:
        provider.shutdown()


# ---- numeric edges and counts ------------------------------------------------------------


def test_edges_and_counts_equal_an_independent_numpy_computation() -> None:
    rng = np.random.default_rng(3)
    # Rounded values: many ties, so values land exactly on edges (the upper-inclusive rule matters).
    values = np.round(rng.normal(50.0, 10.0, 3000), 1)
    values[::97] = np.nan
    values[5] = np.inf
    values[6] = -np.inf
    document = build_profile({"x": values})
    feature = _feature(document, "x")
    fine, psi, counts = _independent_edges(values)
    assert feature["kind"] == "numeric"
    assert feature["fine_edges"] == fine
    assert feature["psi_edges"] == psi
    assert feature["counts"] == counts
    assert set(feature["psi_edges"]) <= set(feature["fine_edges"])
    assert feature["counts"][0] == feature["counts"][-1] == 0
    finite = values[np.isfinite(values)]
    assert feature["n"] == finite.size == sum(counts)
    assert feature["missing"] == values.size - finite.size
    assert feature["missing_rate"] == feature["missing"] / values.size
    assert feature["min"] == finite.min()
    assert feature["max"] == finite.max()
    assert feature["mean"] == pytest.approx(finite.mean(), rel=1e-12)
    assert feature["std"] == pytest.approx(finite.std(), rel=1e-12)
    assert feature["fine_edges"][0] == np.nextafter(finite.min(), -np.inf)


def test_bucket_assignment_equals_the_opentelemetry_sdk() -> None:
    rng = np.random.default_rng(11)
    values = np.round(rng.gamma(2.0, 10.0, 2000), 1)  # non-negative: the SDK records them all
    feature = _feature(build_profile({"tenure": values}), "tenure")
    assert _otel_bucket_counts(feature["fine_edges"], values) == tuple(feature["counts"])


def test_bucket_assignment_equals_the_sdk_on_the_non_negative_part_of_mixed_data() -> None:
    rng = np.random.default_rng(12)
    values = np.round(rng.normal(5.0, 10.0, 2000), 0)  # ties on integer edges, a third negative
    edges = _feature(build_profile({"v": values}, numeric=["v"]), "v")["fine_edges"]
    probe = np.concatenate([values[values >= 0], np.asarray(edges)[np.asarray(edges) >= 0], [1e9]])
    ours = np.bincount(np.searchsorted(edges, probe, side="left"), minlength=len(edges) + 1)
    assert _otel_bucket_counts(edges, probe) == tuple(int(c) for c in ours)


def test_constant_column_gets_two_edges_and_still_counts() -> None:
    document = build_profile({"c": np.full(50, 7.5), "x": np.arange(50.0)}, numeric=["c"])
    feature = _feature(document, "c")
    lo = float(np.nextafter(7.5, -np.inf))
    assert feature["fine_edges"] == [lo, 7.5]
    assert feature["psi_edges"] == [lo, 7.5]
    assert feature["counts"] == [0, 50, 0]
    assert feature["std"] == 0.0
    parse_reference(document)  # valid


def test_extreme_values_negative_zero_and_non_finite_values() -> None:
    values = np.array([-1.7e308, 1.7e308, 1.7e308, -0.0, 0.0, 1.0, np.nan, np.inf, -np.inf] * 5)
    feature = _feature(build_profile({"x": values}, numeric=["x"]), "x")
    edges = feature["fine_edges"]
    assert all(math.isfinite(e) for e in edges)
    assert edges == sorted(set(edges))
    assert all(math.copysign(1.0, e) > 0 for e in edges if e == 0.0)  # -0.0 is written as 0.0
    assert feature["missing"] == 15
    assert feature["n"] == 30
    assert sum(feature["counts"]) == 30
    assert math.isfinite(feature["mean"])
    assert math.isfinite(feature["std"])
    assert feature["max"] == 1.7e308
    parse_reference(build_profile({"x": values}, numeric=["x"]))


@pytest.mark.parametrize("zero", [0.0, -0.0])
def test_zero_minimum_gives_a_subnormal_lower_edge(zero: float) -> None:
    values = np.arange(100.0)
    values[0] = zero
    feature = _feature(build_profile({"x": values}), "x")
    assert feature["fine_edges"][0] == -5e-324
    assert math.copysign(1.0, feature["min"]) == 1.0
    assert feature["counts"][1] == 1  # the minimum is in range
    assert parse_reference(build_profile({"x": values})).features[0].fine_edges[0] == -5e-324


# ---- ids -----------------------------------------------------------------------------------


def test_id_is_stable_and_changes_with_the_data() -> None:
    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=500), "plan": rng.choice(["a", "b", "c"], 500)}
    first = build_profile(data)
    second = build_profile({k: v.copy() for k, v in data.items()}, model_name="other")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first["id"])
    assert first["id"] == second["id"]  # created time and model name are not part of it
    assert first["id"] == profile_id(first["features"])
    changed = {"x": data["x"].copy(), "plan": data["plan"]}
    changed["x"][0] += 1e-9
    assert build_profile(changed)["id"] != first["id"]
    relabelled = {"x": data["x"], "plan": np.where(data["plan"] == "a", "z", data["plan"])}
    assert build_profile(relabelled)["id"] != first["id"]
    assert build_profile(data, target="plan")["id"] != first["id"]  # the role is part of it


def test_document_shape() -> None:
    document = build_profile({"x": np.arange(30.0)}, model_name="churn", source_name="train.csv")
    assert document["format"] == "modeltap.reference"
    assert document["version"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", document["created"])
    assert document["source"] == {"rows": 30, "name": "train.csv"}
    assert document["model"] == {"name": "churn"}
    assert "model" not in build_profile({"x": np.arange(30.0)})


# ---- categories ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "1"),
        (1.0, "1"),
        ("1", "1"),
        (np.int64(1), "1"),
        (np.float32(1.0), "1"),
        (-0.0, "0"),
        (True, "true"),
        (np.bool_(False), "false"),
        (0.5, "0.5"),
        (np.float32(0.1), "0.1"),  # the float32's own shortest text, as a JSON payload carries it
        (decimal.Decimal("2.0"), "2"),
        (decimal.Decimal("2.5"), "2.5"),
        (decimal.Decimal("NaN"), None),
        (1e20, "100000000000000000000"),
        ("1.0", "1.0"),
        ("", ""),
        (b"pro", "pro"),
        (None, None),
        (float("nan"), None),
        (float("inf"), None),
    ],
)
def test_canonical_category(value: object, expected: str | None) -> None:
    assert canonical_category(value) == expected


def test_one_category_for_1_and_1_0_and_the_string_1() -> None:
    document = build_profile({"k": [1, 1.0, "1", True, "a", None, float("nan")]})
    feature = _feature(document, "k")
    assert feature["kind"] == "categorical"
    assert feature["vocabulary"] == ["1", "a", "true"]
    assert feature["counts"] == [3, 1, 1, 0]
    assert (feature["n"], feature["missing"]) == (5, 2)


def test_top_k_vocabulary_ties_broken_by_value_and_other_last() -> None:
    values = ["b"] * 3 + ["a"] * 3 + ["c"] * 2 + ["d", "e"] + [None]
    feature = _feature(build_profile({"plan": values}, top_k=3), "plan")
    assert feature["vocabulary"] == ["a", "b", "c"]
    assert feature["counts"] == [3, 3, 2, 2]
    assert feature["n"] == 10
    assert feature["missing"] == 1
    with pytest.raises(ReferenceProfileError, match=r"top_k must be an integer within 1\.\.50, got 51"):
        build_profile({"plan": values}, top_k=51)


def test_float32_categories_match_their_payload_text() -> None:
    values = np.array([0.1, 0.2, 0.1, 1.0], dtype=np.float32)
    assert _feature(build_profile({"f": values}), "f")["vocabulary"] == ["0.1", "0.2", "1"]


def test_numbers_profiled_as_categories_use_the_canonical_form() -> None:
    feature = _feature(build_profile({"n": np.array([1, 2, 2, 3, 3, 3], dtype=np.int64)}), "n")
    assert feature["kind"] == "categorical"
    assert feature["vocabulary"] == ["3", "2", "1"]
    halves = _feature(build_profile({"h": [0.5, 1.0, 0.5]}), "h")
    assert halves["vocabulary"] == ["0.5", "1"]


# ---- kind inference and overrides ----------------------------------------------------------


def test_kind_inference() -> None:
    rows = 200
    rng = np.random.default_rng(8)
    data = {
        "amount": rng.normal(size=rows),
        "calls": rng.integers(0, 5, rows).astype(np.float64),  # <= 20 distinct numbers
        "plan": rng.choice(["pro", "basic"], rows).astype(object),
        "active": rng.integers(0, 2, rows).astype(bool),
        "email": np.array([f"user{i}@example.org" for i in range(rows)], dtype=object),
        "user_id": np.arange(rows),
        "comment": np.array(["a long free text comment, " * 4 + str(i % 3) for i in range(rows)]),
        "when": np.arange(rows).astype("datetime64[s]"),
        "nested": [[i] for i in range(rows)],
    }
    document = build_profile(data)
    kinds = {f["name"]: f["kind"] for f in document["features"]}
    assert kinds == {
        "amount": "numeric",
        "calls": "categorical",
        "plan": "categorical",
        "active": "categorical",
    }
    assert set(_feature(document, "active")["vocabulary"]) == {"false", "true"}
    reasons = {i["name"]: i["reason"] for i in document["ignored"]}
    assert set(reasons) == {"email", "user_id", "comment", "when", "nested"}
    assert reasons["email"].startswith("id-like")
    assert reasons["user_id"].startswith("id-like")
    assert reasons["comment"].startswith("free text")
    assert "datetime64" in reasons["when"]
    assert "list" in reasons["nested"]
    assert "data row 1" in reasons["nested"]
    assert parse_reference(document).ignored == ("email", "user_id", "comment", "when", "nested")


def test_overrides_roles_and_output_kinds() -> None:
    rows = 100
    rng = np.random.default_rng(9)
    data = {
        "calls": rng.integers(0, 5, rows),
        "amount": rng.normal(size=rows),
        "code": np.array([str(i % 30) for i in range(rows)], dtype=object),
        "noise": rng.normal(size=rows),
        "churned": rng.integers(0, 2, rows),
        "p_yes": np.round(rng.random(rows), 1),  # few distinct, but scores stay numeric outputs
        "p_no": np.round(rng.random(rows), 1),
        "label_out": rng.integers(0, 3, rows),
    }
    document = build_profile(
        data,
        target="churned",
        prediction=["p_yes", "p_no", "label_out"],
        exclude=["noise"],
        categorical=["amount"],
        numeric=["calls", "code"],
    )
    got = {f["name"]: (f["role"], f["kind"]) for f in document["features"]}
    assert got == {
        "calls": ("input", "numeric"),
        "amount": ("input", "categorical"),
        "code": ("input", "numeric"),
        "churned": ("label", "categorical"),
        "p_yes": ("output", "numeric"),
        "p_no": ("output", "numeric"),
        "label_out": ("output", "categorical"),
    }
    assert document["ignored"] == [{"name": "noise", "reason": "excluded"}]
    assert _feature(document, "code")["max"] == 29.0
    profile = parse_reference(document)
    assert profile.input_names == ("calls", "amount", "code")


def test_numpy_matrix_with_and_without_names() -> None:
    matrix = np.column_stack([np.arange(40.0), np.arange(40.0) ** 2])
    assert [f["name"] for f in build_profile(matrix)["features"]] == ["f0", "f1"]
    document = build_profile(matrix, names=["a", "b"], source_name="matrix")
    assert [f["name"] for f in document["features"]] == ["a", "b"]
    assert document["source"] == {"rows": 40, "name": "matrix"}


def test_forced_numeric_reads_number_strings_and_booleans() -> None:
    feature = _feature(build_profile({"s": ["1", " 2.5", "", None, True]}, numeric=["s"]), "s")
    assert (feature["n"], feature["missing"], feature["max"]) == (3, 2, 2.5)


def test_forced_numeric_counts_values_that_are_not_numbers_as_missing_with_a_warning() -> None:
    with pytest.warns(NonNumericValuesWarning) as caught:
        document = build_profile({"a": ["1", "2", "x3", "NA", None]}, numeric=["a"], source_name="t.csv")
    feature = _feature(document, "a")
    assert (feature["kind"], feature["n"], feature["missing"]) == ("numeric", 2, 3)
    messages = [str(w.message) for w in caught if w.category is NonNumericValuesWarning]
    assert messages == [
        "t.csv: column 'a' is profiled as numeric: 2 values that are not numbers counted as missing "
        "(the first: data row 3, 'x3')"
    ]


# ---- numbers with stray values (at least 95 % numbers) -----------------------------------


def _integers_with_a_word(rows: int = 500, row: int = 123, word: object = "oops") -> list[object]:
    values: list[object] = [int(v) for v in np.random.default_rng(4).integers(0, 1000, rows)]
    values[row - 1] = word
    return values


@pytest.mark.parametrize(
    "column",
    [
        _integers_with_a_word(),  # a list of int objects and one str
        np.array(_integers_with_a_word(), dtype=object),  # an object array (a DataFrame's column)
        [str(v) for v in _integers_with_a_word()],  # all text, as pandas.read_csv gives it
        [None, *_integers_with_a_word()[1:]],  # missing values are not counted
    ],
    ids=["list", "object-array", "text", "with-missing"],
)
def test_one_word_among_500_integers_is_an_error_naming_the_column_and_row(column: Any) -> None:
    with pytest.raises(ReferenceProfileError) as error:
        build_profile({"x": np.arange(500.0), "calls": column}, source_name="train.csv")
    message = str(error.value)
    assert message.startswith("train.csv: column 'calls' is numeric (")
    assert "non-missing values are numbers), but data row 123 holds 'oops', which is not a number" in message
    assert "--categorical calls" in message
    assert "--numeric calls" in message
    assert "--exclude calls" in message
    assert "\n" not in message


def test_stray_words_with_categorical_profile_every_value_as_a_category() -> None:
    values = [str(v % 7) for v in range(500)]
    values[122] = "oops"
    feature = _feature(build_profile({"calls": values}, categorical=["calls"]), "calls")
    assert feature["kind"] == "categorical"
    assert "oops" in feature["vocabulary"]
    assert (feature["n"], feature["missing"]) == (500, 0)


def test_stray_words_with_numeric_are_missing_and_the_rest_is_profiled() -> None:
    values = _integers_with_a_word()
    with pytest.warns(NonNumericValuesWarning, match=r"column 'calls' .* data row 123, 'oops'"):
        feature = _feature(build_profile({"calls": values}, numeric=["calls"]), "calls")
    assert (feature["kind"], feature["n"], feature["missing"]) == ("numeric", 499, 1)
    finite = np.array([v for v in values if isinstance(v, int)], dtype=np.float64)
    assert feature["fine_edges"] == _independent_edges(finite)[0]


def test_stray_words_with_exclude_leave_the_column_out() -> None:
    document = build_profile({"x": np.arange(500.0), "calls": _integers_with_a_word()}, exclude=["calls"])
    assert document["ignored"] == [{"name": "calls", "reason": "excluded"}]


@pytest.mark.parametrize(
    ("numbers", "words", "error"),
    [(94, 6, False), (95, 5, True), (190, 10, True), (189, 11, False), (99, 1, True)],
)
def test_95_percent_numbers_is_the_boundary(numbers: int, words: int, error: bool) -> None:
    # Few distinct numbers, so the column is categorical (not id-like) below the boundary.
    values = [str(i % 10) for i in range(numbers)] + ["n/a"] * words
    if error:
        with pytest.raises(ReferenceProfileError, match=rf"column 'a' is numeric \({numbers} of its"):
            build_profile({"a": values})
        return
    feature = _feature(build_profile({"a": values}), "a")
    assert feature["kind"] == "categorical"
    assert "n/a" in feature["vocabulary"]
    assert feature["n"] == numbers + words


def test_stray_values_that_are_booleans_long_or_hostile_are_shown_safely() -> None:
    with pytest.raises(ReferenceProfileError, match=r"data row 7 holds True, which is not a number"):
        build_profile({"a": _integers_with_a_word(row=7, word=True)})
    hostile = "\x1b[2J\u202e" + "z" * 200 + "\n"
    with pytest.raises(ReferenceProfileError) as error:
        build_profile({"a": _integers_with_a_word(row=9, word=hostile)})
    message = str(error.value)
    assert message.isprintable()
    assert "data row 9 holds '\\x1b[2J\\u202ezzz" in message
    assert f"... ({len(hostile)} characters)" in message
    assert "z" * 50 not in message
    with pytest.raises(ReferenceProfileError) as error:
        build_profile({"a b\x1b": _integers_with_a_word()})
    assert str(error.value).isprintable()
    assert "--categorical 'a b\\x1b'" in str(error.value)
    with pytest.raises(ReferenceProfileError, match="--categorical 'monthly charges'"):
        build_profile({"monthly charges": _integers_with_a_word()})


def test_text_missing_markers_are_not_numbers_but_blank_and_nan_text_are_missing() -> None:
    values: list[object] = ["", " ", "nan", "inf", *[str(i) for i in range(96)], "NA"]
    with pytest.raises(ReferenceProfileError, match=r"\(96 of its 97 non-missing .* data row 101 holds 'NA'"):
        build_profile({"a": values})


def test_all_text_or_mixed_columns_under_95_percent_numbers_keep_todays_kinds() -> None:
    rows = 200
    document = build_profile(
        {
            "codes": [f"{i % 30:03d}" for i in range(rows)],  # number-like text only: categorical
            "mixed": [i % 5 if i % 2 else f"k{i % 5}" for i in range(rows)],  # half numbers
            "email": [f"user{i}@example.org" for i in range(rows)],
            "comment": ["a long free text comment, " * 4 + str(i) for i in range(rows)],
            "amount": list(np.linspace(0.0, 1.0, rows)),
        }
    )
    kinds = {f["name"]: f["kind"] for f in document["features"]}
    assert kinds == {"codes": "categorical", "mixed": "categorical", "amount": "numeric"}
    assert _feature(document, "codes")["vocabulary"][0] == "000"
    reasons = {i["name"]: i["reason"].split(":")[0] for i in document["ignored"]}
    assert reasons == {"email": "id-like", "comment": "free text"}


# ---- small references ----------------------------------------------------------------------


def test_fewer_than_100_rows_warns_and_still_builds_a_valid_profile() -> None:
    with pytest.warns(SmallReferenceWarning) as caught:
        document = build_profile({"x": np.arange(99.0), "plan": ["a", "b", "c"] * 33}, source_name="t.csv")
    (warning,) = [w for w in caught if w.category is SmallReferenceWarning]
    assert str(warning.message).startswith("t.csv: the profile has only 99 rows: drift scores")
    assert "noisy" in str(warning.message)
    assert warning.filename == __file__  # points at the caller
    assert parse_reference(document).source_rows == 99
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_profile({"x": np.arange(100.0)})  # no warning at 100 rows


def test_parse_number() -> None:
    assert parse_number(" 1e3 ") == 1000.0
    assert parse_number("  ") is None
    assert math.isnan(parse_number("nan") or 0.0)
    with pytest.raises(ValueError, match="not a number"):
        parse_number("1_000")
    with pytest.raises(ValueError, match="could not convert"):
        parse_number("abc")


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "options", "message"),
    [
        ({"a": [None, float("nan"), np.inf]}, {}, "no column left to profile; ignored: a (all missing"),
        ({"a": [None, None], "b": [1.0, 2.0]}, {"target": "a"}, "column 'a' is all missing"),
        ({"a": [None, None], "b": [1.0, 2.0]}, {"numeric": ["a"]}, "leave it out (--exclude a)"),
        ({"a": [1, 10**400]}, {"numeric": ["a"]}, "column 'a' is numeric, but data row 2 holds 1000"),
        ({"a": [*range(19), "x"]}, {}, "column 'a' is numeric (19 of its 20 non-missing values"),
        ({"a": [1.0, 2.0], "b": [1.0]}, {}, "column 'b' has 1 values, column 'a' has 2"),
        ({"a": []}, {}, "no data rows"),
        ({}, {}, "no columns"),
        ({"a": [1.0]}, {"target": "b"}, "target column 'b' is not in the data (columns: a)"),
        ({"a": [1.0]}, {"prediction": "b"}, "prediction column 'b' is not in the data"),
        ({"a": [1.0]}, {"exclude": ["b"]}, "exclude column 'b' is not in the data"),
        ({"a": [1.0]}, {"categorical": ["b"]}, "categorical column 'b' is not in the data"),
        ({"a": [1.0]}, {"numeric": ["b"]}, "numeric column 'b' is not in the data"),
        (
            {"a": [1.0]},
            {"numeric": ["a"], "categorical": ["a"]},
            "'a' is given as both categorical and numeric",
        ),
        ({"a": [1.0]}, {"target": "a", "prediction": "a"}, "'a' is given as both target and prediction"),
        ({"a": [1.0]}, {"target": "a", "exclude": ["a"]}, "'a' is given as both exclude and target"),
        (
            {"a": [1.0], "b": [2.0]},
            {"exclude": ["a", "b"]},
            "no column left to profile; ignored: a (excluded)",
        ),
        ({"a": [[1], [2]]}, {"target": "a"}, "column 'a': unsupported value type list (data row 1)"),
        ({"a": "text"}, {}, "column 'a': a sequence of values is needed"),
        ({"a": [1.0]}, {"names": ["x"]}, "names= is only for arrays"),
        ({"a": [1.0]}, {"top_k": 0}, "top_k must be an integer within 1..50, got 0"),
    ],
)
def test_bad_input_names_the_column_and_row(data: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ReferenceProfileError) as error:
        build_profile(data, **options)
    assert message in str(error.value)


def test_bad_arrays() -> None:
    with pytest.raises(ReferenceProfileError, match="a 2-D array"):
        build_profile(np.arange(5.0))
    with pytest.raises(ReferenceProfileError, match="duplicate column name 'a'"):
        build_profile(np.zeros((3, 2)), names=["a", "a"])
    with pytest.raises(ReferenceProfileError, match="3 names for 2 columns"):
        build_profile(np.zeros((3, 2)), names=["a", "b", "c"])
    with pytest.raises(ReferenceProfileError, match="column 2 has an empty name"):
        build_profile(np.zeros((3, 2)), names=["a", ""])
    with pytest.raises(ReferenceProfileError, match="data must be a 2-D numpy array"):
        build_profile([[1.0, 2.0]])
    with pytest.raises(ReferenceProfileError, match=r"^train\.csv: column 'x' is all missing"):
        build_profile({"x": [None], "y": [1.0]}, target="x", source_name="train.csv")


def test_an_input_column_with_no_value_is_left_out_and_said_so() -> None:
    """A column nobody filled (an unused export field) is no input to watch: listed as ignored,
    as an id is; the rest is profiled."""
    document = build_profile({"x": list(range(200)), "unused": [None] * 200})
    assert [f["name"] for f in document["features"]] == ["x"]
    assert document["ignored"] == [{"name": "unused", "reason": "all missing: no value in 200 rows"}]


# ---- pandas (optional) ---------------------------------------------------------------------


def test_pandas_dataframe() -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, 300),
            "plan": pd.Series(
                rng.choice(np.array(["pro", "basic", None], dtype=object), 300), dtype="string"
            ),
            "calls": pd.Series([1, None, 3] * 100, dtype="Int64"),
            "flag": pd.Series([True, False, None] * 100, dtype="boolean"),
            "cat": pd.Categorical(rng.choice(["x", "y"], 300)),
            "churn": rng.integers(0, 2, 300),
        }
    )
    document = build_profile(frame, target="churn", numeric=["calls"])
    got = {f["name"]: (f["role"], f["kind"], f["missing"]) for f in document["features"]}
    plan_missing = int(frame["plan"].isna().sum())
    assert got == {
        "age": ("input", "numeric", 0),
        "plan": ("input", "categorical", plan_missing),
        "calls": ("input", "numeric", 100),
        "flag": ("input", "categorical", 100),
        "cat": ("input", "categorical", 0),
        "churn": ("label", "categorical", 0),
    }
    as_dict = build_profile({name: frame[name].to_numpy() for name in ["age"]})
    assert _feature(document, "age")["fine_edges"] == _feature(as_dict, "age")["fine_edges"]
    assert _feature(document, "flag")["vocabulary"] == ["false", "true"]
    with pytest.raises(ReferenceProfileError, match="duplicate column name 'a'"):
        build_profile(pd.DataFrame([[1.0, 2.0]], columns=["a", "a"]))


def test_a_score_of_few_distinct_values_gives_a_profile_that_loads() -> None:
    """Equal-frequency bins of a score with two values leave bins empty: the calibration keeps one
    rate per bin (no means), and the profile parses."""
    rows = 200
    document = build_profile(
        {
            "x": [float(i % 7) for i in range(rows)],
            "outcome": [i % 2 for i in range(rows)],
            "prediction": [(i // 2) % 2 for i in range(rows)],
            "scores": [0.25 + 0.5 * ((i // 2) % 2) for i in range(rows)],
        },
        target="outcome",
        prediction=["prediction"],
        score="scores",
    )
    calibration = document["performance"]["score"]["calibration"]
    assert "centers" not in calibration
    assert len(calibration["rates"]) == len(calibration["edges"]) + 1
    reference = parse_reference(document)
    assert reference.performance is not None
    assert reference.performance.calibration_centers == ()


def test_a_score_tied_at_one_value_nearly_everywhere_gives_a_profile_that_writes_and_loads(
    tmp_path: Any,
) -> None:
    """A fraud model scoring most rows 0.0: the calibration has one inner edge (two bins), which
    the writer refused as it refuses a feature with one edge."""
    rows = 1000
    scores = [0.0] * rows
    scores[:30] = [0.1 + 0.8 * i / 29 for i in range(30)]
    document = build_profile(
        {
            "x": [float(i % 13) for i in range(rows)],
            "fraud": [1 if i < 15 else 0 for i in range(rows)],
            "flagged": [1 if s > 0.5 else 0 for s in scores],
            "p": scores,
        },
        target="fraud",
        prediction=["flagged"],
        score="p",
    )
    assert document["performance"]["score"]["calibration"]["edges"] == [0.0]
    write_profile(document, tmp_path / "reference.json")
    reference = load_reference(tmp_path / "reference.json")
    assert reference.performance is not None


def test_a_byte_order_mark_before_a_profile_is_no_part_of_it(tmp_path: Any) -> None:
    document = build_profile({"x": list(range(200))})
    plain, marked = tmp_path / "plain.json", tmp_path / "marked.json"
    write_profile(document, plain)
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert load_reference(marked) == load_reference(plain)


@pytest.mark.parametrize(("classes", "positive"), [((0, 1), "1"), (("no", "yes"), "yes"), ((1, 2), None)])
def test_the_positive_class_is_inferred_only_from_a_pair_that_says_it(
    classes: tuple[Any, Any], positive: str | None
) -> None:
    rows = 200
    data = {
        "x": [float(i % 7) for i in range(rows)],
        "label": [classes[i % 2] for i in range(rows)],
        "prediction": [classes[(i // 2) % 2] for i in range(rows)],
        "score": [0.2 + 0.6 * ((i // 2) % 2) for i in range(rows)],
    }
    options: dict[str, Any] = {"target": "label", "prediction": ["prediction"], "score": "score"}
    if positive is None:
        with pytest.raises(ReferenceProfileError, match="give positive_class"):
            build_profile(data, **options)
    else:
        assert build_profile(data, **options)["performance"]["score"]["positive_class"] == positive


def test_dates_in_text_are_left_out_unless_named() -> None:
    """A CSV's dates are text: as categories every later day would fall in `__other__` (drift on
    every window). Quarter labels are not dates; a date column named categorical is profiled."""
    rows = 400
    days = [f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in range(rows)]
    stamps = [f"2026-03-{1 + i % 28:02d}T{i % 24:02d}:15:00Z" for i in range(rows)]
    data = {
        "x": list(range(rows)),
        "signup": days,
        "seen": stamps,
        "quarter": [f"2026-Q{1 + i % 4}" for i in range(rows)],
    }

    document = build_profile(data)
    named = build_profile(data, categorical=["signup"])

    assert [f["name"] for f in document["features"]] == ["x", "quarter"]
    assert {i["name"]: i["reason"].split(":")[0] for i in document["ignored"]} == {
        "signup": "dates",
        "seen": "dates",
    }
    assert "signup" in [f["name"] for f in named["features"]]
