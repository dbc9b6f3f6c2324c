"""Plain JSON: a record, a list of records, or a `{"features": ...}`-like wrapper.

A flat list of scalars (top level or under a wrapper) is ambiguous: one record given as a vector
(`{"features": [5.1, 3.5, 1.4, 0.2]}`) or a batch of one-feature rows. It is a batch only when the
answer holds as many predictions as the list has items, or, with no readable answer, when the
reference profile has a single feature; otherwise it is one row of positional columns (the
reference's names, else `f0, f1, ...`), the same columns as its batch-of-one form
`{"features": [[5.1, 3.5, 1.4, 0.2]]}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modeltap.protocols.payload import Column, DecodedPayload, ExchangeBytes, count
from modeltap.protocols.tabular import per_row_outputs, rows_to_columns

_WRAPPERS = ("features", "inputs", "data", "records", "rows", "instances")
_OUTPUT_KEYS = ("predictions", "prediction", "outputs", "output", "scores", "score", "result", "label")


def _listed(document: Any) -> list[Any] | None:
    """The request's list of rows as sent (before the flat-vector question), or None."""
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        for key in _WRAPPERS:
            inner = document.get(key)
            if isinstance(inner, list):
                return inner
            if isinstance(inner, dict):
                return [inner]
        return [document]
    return None


def _answered(response: Any) -> int | None:
    """How many predictions the answer holds (its primary output), None when it does not say."""
    if isinstance(response, dict):
        primary = next((key for key in _OUTPUT_KEYS if key in response), None)
        if primary is None:
            return None
        value = response[primary]
        return len(value) if isinstance(value, list) else 1
    if isinstance(response, list):
        return len(response)
    return None if response is None else 1


def _rows(document: Any, response: Any, names: Sequence[str]) -> list[Any] | None:
    rows = _listed(document)
    if rows is None or len(rows) < 2 or any(isinstance(item, (list, dict)) for item in rows):
        return rows
    # A flat vector: the answer's prediction count says batch or record; without one, a
    # reference of one feature does. A record is what a user sends by far the most often.
    answered = _answered(response)
    batch = answered == len(rows) if answered is not None else len(names) == 1
    return rows if batch else [rows]


def _outputs(document: Any, out: DecodedPayload) -> dict[str, Column]:
    if isinstance(document, dict):
        columns: dict[str, Column] = {}
        primary = next((key for key in _OUTPUT_KEYS if key in document), None)
        if primary is not None:
            value = document[primary]
            rows = value if isinstance(value, list) else [value]
            columns, _ = rows_to_columns(rows, (), out.violations, prefix="prediction")
            if list(columns) == ["prediction0"]:
                columns = {"prediction": columns["prediction0"]}
        # Every other per-row array of the answer is an output too (probabilities, scores...).
        skip = (primary,) if primary is not None else ()
        columns.update(per_row_outputs(document, out.rows, out.violations, skip=skip))
        return columns
    rows = document if isinstance(document, list) else [document]
    columns, _ = rows_to_columns(rows, (), out.violations, prefix="prediction")
    if list(columns) == ["prediction0"]:
        return {"prediction": columns["prediction0"]}
    return columns


def decode(exchange: ExchangeBytes, request: Any, response: Any, out: DecodedPayload) -> None:
    out.protocol = "json"
    rows = _rows(request, response, exchange.feature_names)
    if rows is None:
        count(out.violations, "type", 1)
    else:
        out.features, out.rows = rows_to_columns(rows, exchange.feature_names, out.violations)
    if response is not None:
        out.outputs = _outputs(response, out)
