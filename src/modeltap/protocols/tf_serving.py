"""TF Serving REST beyond the row format (PROTOCOLS.md section 2, tensorflow/serving `g3doc/api_rest.md`).

The row format (`{"instances": ...}` -> `{"predictions": ...}`) is kserve_v1's. This module reads

- columnar predict: `{"inputs": {name: tensor, ...}}` or `{"inputs": <tensor>}` -> `{"outputs": ...}`
  (an object when the model has several named outputs, else the single tensor);
- `:classify` / `:regress`: `{"context": {...}, "examples": [{...}, ...]}` ->
  `{"result": [[[label, score], ...], ...]}` / `{"result": [v1, v2, ...]}`.

Rules:
- A named tensor's 0-th dimension is the batch: row i holds `tensor[i]`, named exactly as the row
  format names a record's field (tabular.py): a per-row vector becomes `name[j]` columns, a per-row
  matrix `name[j,k]` (any rank), up to 256 cells per row; a wider value only its L2 norm
  `name.norm`; a ragged one counts `type`. A scalar (rank-0) input applies to every row (within
  tabular's fill budget). Inputs may differ in their 0-th dimension; rows beyond a shorter input
  are missing there (counted `missing`). A cell name that two inputs produce (`s` expands to
  `s[0,0]`, and an input is named `s[0,0]`) keeps the first and counts `schema`.
- A single unnamed tensor reads like kserve_v1's `instances`: rows of `f{j}` (or the reference
  profile's names), a list of lists of records as KServe's DataFrames; an unnamed output tensor is
  `prediction` (or `prediction{j}` per column).
- Examples: each example is a row; `context` features apply to every example (an example's own
  value wins and the overlap counts as `schema`: the API forbids it). A one-element list is the same
  feature as its scalar (tf.Example features are lists), so `{"x": [1.0]}` and `{"x": 1.0}` are both
  column `x`.
- Classify: output columns `class` (the label with the highest score, categorical; an empty label,
  which the API allows for models without labels, is replaced by the class's position as text) and
  `score` (that score). Regress: output `prediction`.
- The results key is `result` in the API document's format section and `results` in its example and
  in the server (`kClassifyRegressResponseKey` in `util/json_tensor.cc`): both are read.
- `{"b64": ...}` values (and lists of them) are binary and not features. `signature_name` is
  ignored. An `{"error": ...}` response has no outputs. Version: `/versions/{v}` or `/labels/{l}`
  in the URL.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from modeltap.protocols.kserve_v1 import decode_rows
from modeltap.protocols.payload import Column, DecodedPayload, ExchangeBytes, count
from modeltap.protocols.tabular import (
    Table,
    fill_budget,
    is_binary,
    is_binary_field,
    rows_to_columns,
    scalar,
)

# /v1/models/{name}[/versions/{v}|/labels/{l}][:verb]
_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/([^/:]+)|/labels/([^/:]+))?(?::(\w+))?/?$")


@functools.lru_cache(maxsize=1024)
def parse_path(path: str) -> tuple[str, str | None, str | None] | None:
    """(model name, version or label, verb) from a TF Serving URL, None for any other path."""
    match = _PATH.search(path)
    if match is None:
        return None
    return match.group(1), match.group(2) or match.group(3), match.group(4)


def matches(exchange: ExchangeBytes, request: Any) -> bool:
    """A `/v1/models/...` request in columnar (`inputs`) or classify/regress (`examples`) form.

    Requests with `instances` are left to kserve_v1 (the API forbids `instances` with `inputs`).
    """
    if not isinstance(request, dict) or "instances" in request:
        return False
    if "inputs" not in request and not isinstance(request.get("examples"), list):
        return False
    return parse_path(exchange.path) is not None


def _named_tensors(tensors: dict[str, Any], violations: dict[str, int]) -> tuple[dict[str, Column], int]:
    """`{name: tensor}` (0-th dimension = batch) to columns, written tensor by tensor (no per-row
    records: a client's names are not copied once per row)."""
    if not tensors:
        return {}, 0
    lengths = [len(value) for value in tensors.values() if isinstance(value, list)]
    n = max(lengths, default=1)
    # The batch is the longest input, so the values alone bound what the other inputs may fill.
    table = Table(n, violations, fill_budget(0, sum(lengths) + len(tensors)))
    for name, value in tensors.items():
        if isinstance(value, list):
            for i, item in enumerate(value):
                table.put_field(name, i, item)
        else:
            table.repeat(name, value)  # a rank-0 tensor: one value for the whole request
    return table.finish(), n


def _inputs(exchange: ExchangeBytes, inputs: Any, out: DecodedPayload) -> None:
    if isinstance(inputs, dict) and not is_binary(inputs):
        out.features, out.rows = _named_tensors(inputs, out.violations)
        return
    # A single unnamed tensor: rows as kserve_v1 reads `instances` (a binary row gives no feature).
    decode_rows(exchange, inputs if isinstance(inputs, list) else [inputs], out)


def _unwrap(value: Any) -> Any:
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _examples(request: dict[str, Any], out: DecodedPayload) -> None:
    examples = request["examples"]
    if not isinstance(examples, list):
        count(out.violations, "type")
        return
    context = request.get("context")
    if context is None:
        context = {}
    elif not isinstance(context, dict):
        count(out.violations, "type")
        context = {}
    shared = {name: _unwrap(value) for name, value in context.items() if not is_binary_field(value)}
    rows: list[dict[str, Any]] = []
    for example in examples:
        if not isinstance(example, dict):
            count(out.violations, "type")
            rows.append({})
            continue
        row = dict(shared)
        for name, value in example.items():
            if name in context:
                count(out.violations, "schema")
            if not is_binary_field(value):
                row[name] = _unwrap(value)
            else:
                row.pop(name, None)
        rows.append(row)
    out.features, out.rows = rows_to_columns(rows, (), out.violations)


def _single_output(columns: dict[str, Column]) -> dict[str, Column]:
    if list(columns) == ["prediction0"]:
        return {"prediction": columns["prediction0"]}
    return columns


def _outputs(value: Any, out: DecodedPayload) -> None:
    if isinstance(value, dict) and not is_binary(value):
        out.outputs, _ = _named_tensors(value, out.violations)
        return
    rows = value if isinstance(value, list) else [value]
    if rows and not isinstance(rows[0], (list, dict)):
        out.output_values = rows
        return
    columns, _ = rows_to_columns(rows, (), out.violations, prefix="prediction")
    out.outputs = _single_output(columns)


def _top_class(classes: Any, violations: dict[str, int]) -> tuple[str | None, float | None]:
    """The label with the highest finite score among `[[label, score], ...]`, and that score."""
    if not isinstance(classes, list):
        count(violations, "type")
        return None, None
    best: tuple[str, float] | None = None
    for position, pair in enumerate(classes):
        if not isinstance(pair, list) or len(pair) != 2:
            count(violations, "type")
            continue
        label, score = pair
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            count(violations, "type" if score is not None else "missing")
            continue
        if not math.isfinite(score):
            count(violations, "missing")
            continue
        if not isinstance(label, str):
            count(violations, "type")
            continue
        if best is None or score > best[1]:
            best = (label or str(position), float(score))
    if best is None:
        count(violations, "missing", 2)
        return None, None
    return best


def _results(verb: str | None, response: dict[str, Any], out: DecodedPayload) -> None:
    results = response["result"] if "result" in response else response["results"]
    if not isinstance(results, list):
        count(out.violations, "type")
        return
    if not results:
        return
    classify = verb == "classify" or (verb != "regress" and isinstance(results[0], list))
    if not classify:
        if results and not isinstance(results[0], (list, dict)):
            out.output_values = results
        else:
            out.outputs = {"prediction": [scalar(value, out.violations) for value in results]}
        return
    labels: Column = []
    scores: Column = []
    for classes in results:
        label, score = _top_class(classes, out.violations)
        labels.append(label)
        scores.append(score)
    out.outputs = {"class": labels, "score": scores}


def decode(exchange: ExchangeBytes, request: Any, response: Any, out: DecodedPayload) -> None:
    out.protocol = "tf_serving"
    parsed = parse_path(exchange.path)
    verb = None
    if parsed is not None:
        out.model_name, out.model_version, verb = parsed
    if isinstance(request, dict):
        if "examples" in request:
            _examples(request, out)
        elif "inputs" in request:
            _inputs(exchange, request["inputs"], out)
        else:
            count(out.violations, "schema")
    elif request is not None:
        count(out.violations, "type")
    if isinstance(response, dict):
        if "outputs" in response:
            _outputs(response["outputs"], out)
        elif "result" in response or "results" in response:
            _results(verb, response, out)
        elif "predictions" in response:
            _outputs(response["predictions"], out)
        # {"error": "..."} (and anything else) has no outputs
