"""Values counted as the reference counts them, whichever path a payload takes; summaries and ids
that hold for any data.

- A KServe V1 batch of rows goes to the statistics as one float matrix when its cells are numbers
  and nulls; a boolean or a string there is read the general way (a boolean is the category
  `true`/`false`, as in the profile; a string in a numeric feature is a `type` violation).
- A CSV's boolean column is profiled as the categories `true`/`false` (pandas writes `True`).
- The running std holds for values far from 0 (epoch seconds).
- ±inf is missing, never also out of range.
- A profile's id changes with what the scores read, the missing counts included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from opentelemetry.sdk.resources import Resource

from modeltap.config import DEFAULT_DURATION_BUCKETS_S, ModelTapConfig
from modeltap.export.spans import SpanOptions
from modeltap.records import RawRecord
from modeltap.reference.builder import build_profile
from modeltap.reference.document import ReferenceProfile, parse_reference, profile_id
from modeltap.reference.tables import profile_table
from modeltap.snapshot import FeatureView, ModelView
from modeltap.stats import StatsAggregator
from modeltap.stats.scores import Level, psi_noise_floor
from modeltap.worker.pipeline import BatchPipeline
from tests.support.asgi_driver import make_http_scope

ROWS = 2000
TRUE_SHARE = 0.3


def _reference() -> ReferenceProfile:
    rng = np.random.default_rng(5)
    columns = {
        "x": rng.normal(0.0, 1.0, 20_000),
        "member": (rng.random(20_000) < TRUE_SHARE).tolist(),
        "prediction": (rng.random(20_000) < 0.6).tolist(),
    }
    return parse_reference(build_profile(columns, prediction=["prediction"]))


def _record(instances: list[list[Any]], predictions: list[Any]) -> RawRecord:
    body = orjson.dumps({"instances": instances})
    answer = orjson.dumps({"predictions": predictions})
    scope = make_http_scope("POST", "/v1/models/m:predict")
    return (
        scope, "", 0, 0.0, 0.001, 0.002, 0.002, 200,
        [(b"content-type", b"application/json")],
        [body], len(body), [answer], len(answer), None, False, None, 1, 1, None,
    )  # fmt: skip


def _run(reference: ReferenceProfile, records: list[RawRecord]) -> tuple[ModelView, dict[str, float]]:
    config = ModelTapConfig(monitor="inline", model_name="m")
    stats = StatsAggregator(config.series_limit, DEFAULT_DURATION_BUCKETS_S, reference=reference)
    worker = BatchPipeline(config, reference, stats, SpanOptions(False, 0, (), ()), Resource.get_empty, "m")
    worker.process(records)
    worker.flush_pending()
    (view,) = stats.model_views()
    violations = {
        str(dict(point.attributes)["modeltap.violation.reason"]): point.value
        for point in stats.violation_points()
    }
    return view, violations


def _feature(view: ModelView, role: str, name: str) -> FeatureView:
    (found,) = [f for f in view.features if (f.role, f.name) == (role, name)]
    return found


def test_booleans_in_rows_of_numbers_count_as_the_reference_counts_them() -> None:
    """Rows `[x, member]` with `member` a JSON boolean, predictions booleans: the same shares as
    the reference's, so OK, with every value in the vocabulary (numpy alone made them 1.0 and
    0.0: the categories "1" and "0", all `__other__`, PSI 17.8 and CRITICAL)."""
    reference = _reference()
    rng = np.random.default_rng(6)
    records = []
    for _ in range(ROWS // 4):
        rows = [[float(rng.normal()), bool(rng.random() < TRUE_SHARE)] for _ in range(4)]
        records.append(_record(rows, [bool(rng.random() < 0.6) for _ in range(4)]))

    view, violations = _run(reference, records)

    member = _feature(view, "input", "member")
    assert member.kind == "categorical"
    assert member.unlisted_values == 0
    assert sum(count for _, count in member.top_categories) == ROWS
    assert {name for name, _ in member.top_categories} == {"true", "false"}
    assert member.level == int(Level.OK), member
    # Its level compared PSI with the window's noise floor too: 4 buckets (true, false, other,
    # missing), the 20 000-row reference, the 2000-row window.
    assert member.psi_noise_floor == pytest.approx(psi_noise_floor(4, 20_000, ROWS))
    prediction = _feature(view, "output", "prediction")
    assert prediction.unlisted_values == 0
    assert prediction.level == int(Level.OK), prediction
    x = _feature(view, "input", "x")
    assert x.count == ROWS
    assert violations == {}


def test_a_batch_mixing_plain_and_other_rows_reads_each_its_way() -> None:
    """One exchange with a number sent as a string, others plain: the plain ones are counted as
    a matrix, the odd one the general way (its string a `type` violation, not read as 0.5)."""
    reference = _reference()
    plain = [_record([[0.25, True]], [True]) for _ in range(3)]
    odd = _record([["0.5", False]], [False])

    view, violations = _run(reference, [*plain, odd])

    x = _feature(view, "input", "x")
    assert x.count == 3
    assert x.mean == pytest.approx(0.25)
    assert violations == {"type": 1.0}
    member = _feature(view, "input", "member")
    assert dict(member.top_categories) == {"true": 3, "false": 1}


def test_a_csv_boolean_column_is_profiled_as_true_and_false(tmp_path: Path) -> None:
    """pandas' `to_csv` writes True/False; other writers true/false or TRUE/FALSE. Each is the
    categories `true`/`false`, as a JSON payload's booleans are at run time; a blank is missing."""
    path = tmp_path / "train.csv"
    rows = ["x,member,shout,word"]
    for i in range(200):
        member = ("True" if i % 3 == 0 else "False") if i % 50 else ""
        shout = "TRUE" if i % 2 else "false"
        rows.append(f"{i * 0.5},{member},{shout},{'yes' if i % 2 else 'no'}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")

    document = profile_table(path, categorical=["word"])

    features = {feature["name"]: feature for feature in document["features"]}
    assert features["member"]["kind"] == "categorical"
    assert sorted(features["member"]["vocabulary"]) == ["false", "true"]
    assert features["member"]["missing"] == 4
    assert sorted(features["shout"]["vocabulary"]) == ["false", "true"]
    assert sorted(features["word"]["vocabulary"]) == ["no", "yes"]  # other text stays text


@pytest.mark.parametrize("offset", [0.0, 1e6, 1e8, 1.7e9])
def test_the_running_std_holds_far_from_zero(offset: float) -> None:
    """100 000 values of std 30 around `offset` (epoch seconds at 1.7e9), in 100 batches through
    the matrix path and 50 values through the general path: mean and std as numpy's within
    1e-9 relative (the sum of squares gave std 0 at 1e8 and beyond)."""
    rng = np.random.default_rng(7)
    values = offset + rng.normal(0.0, 30.0, 100_000)
    stats = StatsAggregator(100, DEFAULT_DURATION_BUCKETS_S)
    model = (("model.name", "m"), ("model.version", "1"))
    for batch in np.array_split(values, 100):
        stats.observe_matrix(model, "input", ("t",), batch.reshape(-1, 1), 1)
    tail = offset + rng.normal(0.0, 30.0, 50)
    stats.observe_columns(model, "input", {"t": [float(v) for v in tail]}, 2)
    everything = np.concatenate((values, tail, tail))

    (view,) = stats.model_views()
    (t,) = view.features
    assert t.count == len(everything)
    assert t.mean == pytest.approx(float(everything.mean()), rel=1e-12, abs=1e-9)
    assert t.std == pytest.approx(float(everything.std()), rel=1e-9)


def test_infinity_is_missing_and_never_out_of_range() -> None:
    rng = np.random.default_rng(8)
    reference = parse_reference(build_profile({"x": rng.normal(0.0, 1.0, 5000)}))
    stats = StatsAggregator(100, DEFAULT_DURATION_BUCKETS_S, reference=reference)
    model = (("model.name", "m"), ("model.version", "1"))
    matrix = np.array([[np.inf], [-np.inf], [np.nan], [0.1], [1e9]])

    stats.observe_matrix(model, "input", ("x",), matrix, 1)

    violations = {
        str(dict(p.attributes)["modeltap.violation.reason"]): p.value for p in stats.violation_points()
    }
    assert violations == {"missing": 3.0, "out_of_range": 1.0}


def test_a_profile_id_changes_with_the_missing_counts() -> None:
    """Two references alike but for their missing values score one window differently (a
    categorical feature's `__missing__` share, the missing-rate test): their ids differ."""
    rng = np.random.default_rng(9)
    plan = rng.choice(np.array(["a", "b", "c"], dtype=object), 1000).tolist()
    with_gaps = [None if i % 4 == 0 else value for i, value in enumerate(plan)] + plan[:250]
    first = build_profile({"plan": plan[:750] + plan[:250]})
    second = build_profile({"plan": with_gaps[:1000]})
    (one,), (two,) = first["features"], second["features"]
    assert one["counts"] != two["counts"] or one["missing"] != two["missing"]
    assert first["id"] != second["id"]
    # Same features but the missing count: still different ids.
    changed = [{**one, "missing": one["missing"] + 5, "n": one["n"]}]
    assert profile_id(changed) != profile_id([one])
