"""KServe V1 / TF Serving row format: `{"instances": [...]}` → `{"predictions": [...]}`."""

from __future__ import annotations

import functools
import re
from typing import Any

from modeltap.protocols.payload import DecodedPayload, ExchangeBytes
from modeltap.protocols.tabular import per_row_outputs, positional_names, rows_to_columns

# /v1/models/{name}[/versions/{v}|/labels/{l}]:predict (TF Serving puts the version in the URL)
_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/([^/:]+)|/labels/([^/:]+))?(?::\w+)?/?$")


@functools.lru_cache(maxsize=1024)
def parse_path(path: str) -> tuple[str | None, str | None]:
    match = _PATH.search(path)
    if match is None:
        return None, None
    return match.group(1), match.group(2) or match.group(3)


def is_request(document: Any) -> bool:
    return isinstance(document, dict) and isinstance(document.get("instances"), list)


def _is_flat_row(row: Any) -> bool:
    return isinstance(row, list) and bool(row) and not isinstance(row[0], (list, dict))


def decode(exchange: ExchangeBytes, request: Any, response: Any, out: DecodedPayload) -> None:
    out.protocol = "kserve_v1"
    out.model_name, out.model_version = parse_path(exchange.path)
    instances = request["instances"]
    if instances and _is_flat_row(instances[0]):
        # Rows of scalars: leave them as parsed; the worker converts a whole batch at once.
        out.matrix_rows = instances
        out.matrix_names = positional_names(len(instances[0]), tuple(exchange.feature_names))
        out.rows = len(instances)
    else:
        out.features, out.rows = rows_to_columns(instances, exchange.feature_names, out.violations)
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
