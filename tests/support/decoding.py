"""Helpers for decoder tests: the worker's view of a decoded payload, fixture documents."""

from __future__ import annotations

from typing import Any

from modeltap.protocols.json_body import loads
from modeltap.protocols.payload import Column, DecodedPayload
from modeltap.protocols.tabular import rows_to_columns, scalar


def materialize(out: DecodedPayload) -> tuple[dict[str, Column], dict[str, Column], dict[str, int]]:
    """Features, outputs and violations as the worker ends up with them: the fast-path rows
    (`matrix_rows`, `output_values`) go through the same general conversion the worker falls back to."""
    violations = dict(out.violations)
    features = dict(out.features)
    if out.matrix_rows is not None:
        columns, _ = rows_to_columns(out.matrix_rows, out.matrix_names, violations)
        features.update(columns)
    outputs = dict(out.outputs)
    if out.output_values is not None:
        outputs["prediction"] = [scalar(value, violations) for value in out.output_values]
    return features, outputs, violations


def document(case: dict[str, Any], key: str) -> Any:
    """A fixture's request or response: the JSON value, or `<key>_text` parsed (for NaN tokens)."""
    if f"{key}_text" in case:
        return loads(case[f"{key}_text"].encode())
    return case.get(key)


def assert_decoded_as_expected(out: DecodedPayload, expected: dict[str, Any]) -> None:
    """A decoded fixture against its `expected` block: columns, rows, violations, identity."""
    features, outputs, violations = materialize(out)
    assert features == expected["features"]
    assert outputs == expected.get("outputs", {})
    assert out.rows == expected["rows"]
    assert violations == expected["violations"]
    for field in ("model_name", "model_version", "request_id"):
        if field in expected:
            assert getattr(out, field) == expected[field], field
