"""KServe V1 / TF Serving row format: `{"instances": [...]}` → `{"predictions": [...]}`.

What the model is fed follows KServe's `get_predict_input` (PROTOCOLS.md §1): `inputs` when the
body has it, else `instances`; a list of records, or a list of lists of records (DataFrames,
concatenated), gives one row per record. Row i's fields are named as in TF Serving's columnar form
(tabular.py): the same data gives the same feature names in either form.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from modeltap.protocols.payload import DecodedPayload, ExchangeBytes, count
from modeltap.protocols.tabular import (
    MAX_COLUMNS,
    dataframe_rows,
    per_row_outputs,
    positional_names,
    rows_to_columns,
)

# /v1/models/{name}[/versions/{v}|/labels/{l}]:predict (TF Serving puts the version in the URL)
_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/([^/:]+)|/labels/([^/:]+))?(?::\w+)?/?$")


@functools.lru_cache(maxsize=1024)
def parse_path(path: str) -> tuple[str | None, str | None]:
    match = _PATH.search(path)
    if match is None:
        return None, None
    return match.group(1), match.group(2) or match.group(3)


def is_request(document: Any) -> bool:
    """A body with an `instances` list, or with `instances` beside an `inputs` list (which KServe
    reads first)."""
    if not isinstance(document, dict) or "instances" not in document:
        return False
    return isinstance(document["instances"], list) or isinstance(document.get("inputs"), list)


def is_flat_row(row: Any) -> bool:
    """A row of scalars narrow enough for the worker's matrix path (a wider one is capped by
    rows_to_columns, so its names are never built beyond MAX_COLUMNS)."""
    if not isinstance(row, list) or not row or len(row) > MAX_COLUMNS:
        return False
    return not isinstance(row[0], (list, dict))


def _model_input(request: dict[str, Any], out: DecodedPayload) -> list[Any]:
    """What KServe feeds the model: `inputs` when present (its `get_predict_input` reads it before
    `instances`), else `instances`. An `inputs` that is not a list fails there: `schema`."""
    if "inputs" not in request:
        instances: list[Any] = request["instances"]
        return instances
    inputs = request["inputs"]
    if isinstance(inputs, list):
        return inputs
    count(out.violations, "schema")
    return []


def decode_rows(exchange: ExchangeBytes, instances: list[Any], out: DecodedPayload) -> None:
    """Row i = instances[i] (records of DataFrame instances flattened first)."""
    instances = dataframe_rows(instances, out.violations)
    if instances and is_flat_row(instances[0]):
        # Rows of scalars: leave them as parsed; the worker converts a whole batch at once.
        out.matrix_rows = instances
        out.matrix_names = positional_names(len(instances[0]), tuple(exchange.feature_names))
        out.rows = len(instances)
    else:
        out.features, out.rows = rows_to_columns(instances, exchange.feature_names, out.violations)


def decode(exchange: ExchangeBytes, request: Any, response: Any, out: DecodedPayload) -> None:
    out.protocol = "kserve_v1"
    out.model_name, out.model_version = parse_path(exchange.path)
    decode_rows(exchange, _model_input(request, out), out)
    if isinstance(response, dict):
        predictions = response.get("predictions")
        if isinstance(predictions, list):
            if predictions and not isinstance(predictions[0], (list, dict)):
                out.output_values = predictions
            else:
                out.outputs, _ = rows_to_columns(predictions, (), out.violations, prefix="prediction")
                if "prediction0" in out.outputs and len(out.outputs) == 1:
                    out.outputs = {"prediction": out.outputs.pop("prediction0")}
        if len(response) > 1:
            # Class probabilities, scores...: every per-row array the model answers is an output.
            out.outputs.update(per_row_outputs(response, out.rows, out.violations, skip=("predictions",)))
