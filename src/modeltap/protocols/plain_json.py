"""Plain JSON: a record, a list of records, or a `{"features": ...}`-like wrapper."""

from __future__ import annotations

from typing import Any

from modeltap.protocols.payload import Column, DecodedPayload, ExchangeBytes, count
from modeltap.protocols.tabular import per_row_outputs, rows_to_columns

_WRAPPERS = ("features", "inputs", "data", "records", "rows", "instances")
_OUTPUT_KEYS = ("predictions", "prediction", "outputs", "output", "scores", "score", "result", "label")


def _rows(document: Any) -> list[Any] | None:
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
    rows = _rows(request)
    if rows is None:
        count(out.violations, "type", 1)
    else:
        out.features, out.rows = rows_to_columns(rows, exchange.feature_names, out.violations)
    if response is not None:
        out.outputs = _outputs(response, out)
