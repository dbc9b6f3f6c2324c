"""Reading, validating and writing reference profiles (format "modeltap.reference", version 1)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modeltap.errors import ReferenceProfileError
from modeltap.reference.builder import build_profile, numeric_profile_document
from modeltap.reference.document import (
    load_reference,
    parse_reference,
    profile_id,
    write_profile,
)

OLD_MINIMAL = {
    "format": "modeltap.reference",
    "version": 1,
    "id": "sha256:0123456789abcdef",
    "model": {"name": "churn"},
    "features": [
        {
            "name": "age",
            "role": "input",
            "kind": "numeric",
            "min": 18.0,
            "max": 90.0,
            "mean": 45.0,
            "std": 12.0,
        },
        {"name": "plan", "kind": "categorical"},
    ],
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    values = rng.normal(40.0, 10.0, 400)
    values[::50] = np.nan
    return build_profile(
        {
            "age": values,
            "plan": rng.choice(["pro", "basic", "free"], 400).astype(object),
            "score": rng.random(400),
            "churn": rng.integers(0, 2, 400),
        },
        target="churn",
        prediction="score",
        model_name="churn",
        source_name="train.csv",
    )


def test_round_trip_through_a_file(document: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "reference.json"
    write_profile(document, path)
    assert orjson.loads(path.read_bytes()) == document
    assert path.stat().st_mode & 0o777 == 0o644
    profile = load_reference(path)
    assert profile.id == document["id"] == profile_id(document["features"])
    assert profile.model_name == "churn"
    assert (profile.source_rows, profile.source_name, profile.created) == (
        400,
        "train.csv",
        document["created"],
    )
    assert profile.input_names == ("age", "plan")
    for raw in document["features"]:
        feature = profile.feature(raw["role"], raw["name"])
        assert feature is not None
        assert feature.kind == raw["kind"]
        assert (feature.n, feature.missing, feature.missing_rate) == (
            raw["n"],
            raw["missing"],
            raw["missing_rate"],
        )
        assert list(feature.counts) == raw["counts"]
        assert list(feature.fine_edges) == raw.get("fine_edges", [])
        assert list(feature.psi_edges) == raw.get("psi_edges", [])
        assert list(feature.vocabulary) == raw.get("vocabulary", [])
        assert feature.has_distribution
    age = profile.feature("input", "age")
    assert age is not None
    assert age.missing == 8
    assert age.mean == document["features"][0]["mean"]
    assert profile.feature("label", "churn") is not None
    assert profile.feature("input", "churn") is None


def test_psi_index_folds_fine_counts_into_the_psi_buckets(document: dict[str, Any]) -> None:
    profile = parse_reference(document)
    feature = profile.feature("input", "age")
    assert feature is not None
    index = np.asarray(feature.psi_index)
    assert len(index) == len(feature.counts)
    folded = np.bincount(index, weights=feature.counts, minlength=len(feature.psi_edges) + 1)
    values = np.asarray(document["features"][0]["fine_edges"][1:])  # one value per fine edge ...
    rng = np.random.default_rng(4)
    sample = np.concatenate([values, rng.uniform(values[0] - 5, values[-1] + 5, 1000)])
    fine_of = np.searchsorted(feature.fine_edges, sample, side="left")
    psi_of = np.searchsorted(feature.psi_edges, sample, side="left")
    assert np.array_equal(index[fine_of], psi_of)  # ... and anywhere between, and out of range
    direct = np.bincount(np.searchsorted(feature.psi_edges, _finite_age(document), side="left"), minlength=12)
    assert np.array_equal(folded, direct)


def _finite_age(document: dict[str, Any]) -> np.ndarray:
    rng = np.random.default_rng(1)
    values = rng.normal(40.0, 10.0, 400)
    values[::50] = np.nan
    return values[np.isfinite(values)]


def test_old_minimal_documents_still_load() -> None:
    profile = parse_reference(OLD_MINIMAL, "old.json")
    age = profile.feature("input", "age")
    assert age is not None
    assert (age.min, age.max, age.mean, age.std) == (18.0, 90.0, 45.0, 12.0)
    assert age.fine_edges == ()
    assert age.counts == ()
    assert age.psi_index == ()
    assert not age.has_distribution
    plan = profile.feature("input", "plan")
    assert plan is not None
    assert plan.vocabulary == ()
    assert not plan.has_distribution
    assert profile.ignored == ()
    assert profile.created is None


def test_numeric_profile_document_keeps_every_column_numeric() -> None:
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(size=300), rng.poisson(1.5, 300).astype(np.float64)])
    document = numeric_profile_document(["a", "calls"], data, model_name="m")
    profile = parse_reference(document)
    assert [(f.name, f.role, f.kind) for f in profile.features] == [
        ("a", "input", "numeric"),
        ("calls", "input", "numeric"),
    ]
    calls = profile.feature("input", "calls")
    assert calls is not None
    assert calls.mean == pytest.approx(data[:, 1].mean())
    assert profile.model_name == "m"
    assert profile.id.startswith("sha256:")


def _mutate(document: dict[str, Any], where: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    target: Any = changed
    for key in where[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[where[-1]]
    elif callable(value):
        target[where[-1]] = value(target)
    else:
        target[where[-1]] = value
    return changed


_DELETE = object()


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (("format",), "other", "\"format\" must be 'modeltap.reference'"),
        (("version",), 2, '"version" 2 is not one of (1,)'),
        (("version",), True, '"version" True is not one of (1,)'),
        (("id",), "", '"id" must be a non-empty string'),
        (("created",), 5, '"created" must be an ISO-8601 string'),
        (("source", "rows"), -1, "source.rows must be a non-negative integer, got -1"),
        (("features",), [], '"features" must be a non-empty list'),
        (("features", 0, "kind"), "ignored", "features[0] (age): kind must be one of"),
        (("features", 0, "n"), True, "features[0] (age).n must be a non-negative integer, got True"),
        (("features", 0, "missing"), 1.5, "features[0] (age).missing must be a non-negative integer"),
        (("features", 0, "missing_rate"), 1.5, "features[0] (age).missing_rate must be within [0, 1]"),
        (("features", 0, "mean"), "x", "features[0] (age).mean must be a finite number, got 'x'"),
        (("features", 0, "fine_edges"), "x", "features[0] (age).fine_edges must be a list, got str"),
        (("features", 0, "fine_edges", 3), None, "features[0] (age).fine_edges[3] must be a finite number"),
        (("features", 0, "fine_edges", 3), -1e9, "features[0] (age).fine_edges must be strictly increasing"),
        (("features", 0, "fine_edges"), [1.0], "features[0] (age).fine_edges needs at least 2 edges"),
        (("features", 0, "psi_edges"), _DELETE, "fine_edges and psi_edges go together"),
        (
            ("features", 0, "psi_edges"),
            lambda f: [f["fine_edges"][0], (f["fine_edges"][0] + f["fine_edges"][1]) / 2, f["max"]],
            "features[0] (age).psi_edges must be a subset of fine_edges",
        ),
        (("features", 0, "counts"), [1, 2], "features[0] (age).counts must have len(fine_edges) + 1"),
        (("features", 0, "counts", 1), -1, "features[0] (age).counts[1] must be a non-negative integer"),
        (("features", 0, "counts", 0), 1, "features[0] (age): counts add up to 393, but n is 392"),
        (("features", 0, "max"), 1e6, "the last fine edge"),
        (("features", 0, "min"), 1e6, "min 1000000.0 is greater than max"),
        (("features", 0, "vocabulary"), ["a"], "features[0] (age): a numeric feature has no vocabulary"),
        (("features", 1, "vocabulary", 0), 3, "features[1] (plan).vocabulary[0] must be a string, got 3"),
        (
            ("features", 1, "vocabulary"),
            ["a", "a", "b"],
            "features[1] (plan).vocabulary has duplicate entries",
        ),
        (("features", 1, "counts"), [1], "features[1] (plan).counts must have len(vocabulary) + 1 = 4"),
        (("features", 1, "counts"), _DELETE, "features[1] (plan): a vocabulary needs counts"),
        (("features", 1, "fine_edges"), [0.0, 1.0], "a categorical feature has no fine_edges"),
        (("features", 1, "vocabulary"), [str(i) for i in range(51)], "51 entries, at most 50 allowed"),
        (("features", 1, "role"), "target", "features[1] (plan): role must be one of"),
        (("features", 1, "name"), "age", "features[1]: duplicate input feature 'age'"),
        (("ignored",), [{"reason": "x"}], "ignored[0] needs a string 'name'"),
    ],
)
def test_validation_names_the_file_and_field(
    document: dict[str, Any], where: tuple[Any, ...], value: Any, message: str, tmp_path: Path
) -> None:
    bad = _mutate(document, where, value)
    path = tmp_path / "bad.json"
    path.write_bytes(orjson.dumps(bad))
    with pytest.raises(ReferenceProfileError) as error:
        load_reference(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_duplicate_features_and_unreadable_files(document: dict[str, Any], tmp_path: Path) -> None:
    twice = copy.deepcopy(document)
    twice["features"].append(copy.deepcopy(twice["features"][0]))
    with pytest.raises(ReferenceProfileError, match=r"features\[4\]: duplicate input feature 'age'"):
        parse_reference(twice, "r.json")
    with pytest.raises(ReferenceProfileError, match="cannot read the reference profile"):
        load_reference(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ReferenceProfileError, match="not valid JSON"):
        load_reference(tmp_path / "broken.json")


def test_write_profile_validates_and_reports_unwritable_paths(
    document: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(ReferenceProfileError, match='"features" must be a non-empty list'):
        write_profile({**document, "features": []}, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(ReferenceProfileError, match="cannot write the reference profile"):
        write_profile(document, tmp_path / "no-such-dir" / "r.json")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
