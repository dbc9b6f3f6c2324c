"""Seldon Core v1 SeldonMessage (PROTOCOLS.md section 4, seldon-core `proto/prediction.proto`).

`POST /api/v1.0/predictions` (behind the ingress also `/seldon/{namespace}/{deployment}/api/v1.0/predictions`)
with one of

    {"data": {"names": [...], "ndarray": [[...], ...]}}
    {"data": {"names": [...], "tensor": {"shape": [n, f], "values": [...]}}}
    {"jsonData": ...}    {"strData": "..."}    {"binData": "<base64>"}

and the response is a SeldonMessage of the same kind plus `meta` (`puid`, `requestPath`, ...).

Rules:
- `ndarray` rows are the batch; `tensor.values` is reshaped by `tensor.shape` (`shape[0]` is the
  batch; a rank > 2 tensor is flattened per row). A shape that does not describe exactly the values
  given is a `schema` violation and yields no rows.
- Column names: `data.names`, else the reference profile's names (`exchange.feature_names`), else
  `f0, f1, ...` (outputs: `data.names`, else `prediction0, ...`, a single unnamed column is
  `prediction`). Names whose count differs from the row width are a `schema` violation.
- `jsonData` is read as plain JSON record(s): an object is one row, a list is the rows.
- `strData`, `binData` and `tftensor` carry no tabular features: no columns, no violation.
- Model version: response `meta.requestPath` (component -> image:tag). One component: its
  `image:tag`; several: `component=image:tag` pairs sorted by component and joined with `,`
  (so a change to any component of the graph starts a new version). It is what the answer
  carries, so it is also the answer version (served versions, version mismatch). Model name: the
  deployment in `/seldon/{namespace}/{deployment}/...`. Request id: `meta.puid` of the response,
  else the request.
- Feedback, `POST /api/v1.0/feedback` (also behind the ingress prefix) with
  `{"request", "response", "reward", "truth"}`, labels an earlier prediction: it is not model
  traffic, so it decodes to no rows, columns or violations (as a health probe does), only the
  deployment's name.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, TypeGuard

from modeltap.protocols.payload import Column, DecodedPayload, ExchangeBytes, count
from modeltap.protocols.tabular import positional_names, rows_to_columns

# The executor's external endpoints, optionally behind the `/seldon/{ns}/{name}` ingress prefix.
_PATH = re.compile(r"^(?:.*/)?api/v1\.0/predictions/?$")
_FEEDBACK = re.compile(r"^(?:.*/)?api/v1\.0/feedback/?$")
_DEPLOYMENT = re.compile(r"/seldon/[^/]+/([^/]+)/api/v1\.0/(?:predictions|feedback)/?$")
_PAYLOAD_KEYS = ("jsonData", "strData", "binData", "customData")
_DATA_KEYS = ("ndarray", "tensor", "tftensor")
# A tensor shape with more dimensions than this is not a payload worth reshaping.
_MAX_RANK = 32
_MAX_ID_CHARS = 128


@functools.lru_cache(maxsize=1024)
def parse_path(path: str) -> tuple[bool, str | None]:
    """(is the predictions endpoint, deployment name from the ingress prefix or None)."""
    if _PATH.match(path) is None:
        return False, None
    return True, _deployment(path)


@functools.lru_cache(maxsize=1024)
def is_feedback(path: str) -> bool:
    """Whether the path is the executor's feedback endpoint (labels, not predictions)."""
    return _FEEDBACK.match(path) is not None


def _deployment(path: str) -> str | None:
    match = _DEPLOYMENT.search(path)
    return match.group(1) if match else None


def is_message(document: Any) -> bool:
    """A body shaped like a SeldonMessage with a payload (whatever the path)."""
    if not isinstance(document, dict):
        return False
    data = document.get("data")
    if isinstance(data, dict) and any(key in data for key in _DATA_KEYS):
        return True
    return any(key in document for key in _PAYLOAD_KEYS)


def matches(exchange: ExchangeBytes, request: Any) -> bool:
    """The Seldon predictions or feedback path, or a request body that is unmistakably a
    SeldonMessage. Feedback is claimed here so that no other decoder reads its labels as inputs."""
    return parse_path(exchange.path)[0] or is_feedback(exchange.path) or is_message(request)


def _text(value: Any) -> str | None:
    """An identity value as printable, bounded text (detect.py sanitises model name/version again)."""
    if not isinstance(value, str):
        return None
    cleaned = "".join(ch for ch in value[:_MAX_ID_CHARS] if ch.isprintable())
    return cleaned or None


def _names(data: dict[str, Any], violations: dict[str, int]) -> tuple[str, ...] | None:
    names = data.get("names")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        count(violations, "type")
        return None
    return tuple(names) if names else None


def _valid_shape(shape: Any) -> TypeGuard[list[int]]:
    return (
        isinstance(shape, list)
        and 0 < len(shape) <= _MAX_RANK
        and all(type(dim) is int and dim >= 0 for dim in shape)
    )


def _tensor_rows(tensor: Any, violations: dict[str, int]) -> list[Any] | None:
    """`{"shape": [n, ...], "values": [...]}` as n rows (flat per row), or None if it is not one."""
    if not isinstance(tensor, dict):
        count(violations, "type")
        return None
    shape = tensor.get("shape")
    values = tensor.get("values")
    if not isinstance(values, list) or not _valid_shape(shape):
        count(violations, "schema")
        return None
    if math.prod(shape) != len(values):
        count(violations, "schema")
        return None
    if len(shape) == 1:
        return values  # a vector: one scalar per row
    n = shape[0]
    if not values:
        return []
    width = len(values) // n
    return [values[i * width : (i + 1) * width] for i in range(n)]


def _rows(message: dict[str, Any], violations: dict[str, int]) -> tuple[list[Any] | None, tuple[str, ...]]:
    """The message's rows and its `data.names` (empty when absent); None when there are no rows.

    Counts a violation when the payload is malformed; a payload that is not tabular (`strData`,
    `binData`, `customData`, `tftensor`) is no violation, and neither is a message without any.
    """
    data = message.get("data")
    if data is not None:
        if not isinstance(data, dict):
            count(violations, "type")
            return None, ()
        names = _names(data, violations) or ()
        if "ndarray" in data:
            ndarray = data["ndarray"]
            if isinstance(ndarray, list):
                return ndarray, names
            count(violations, "type")
            return None, ()
        if "tensor" in data:
            return _tensor_rows(data["tensor"], violations), names
        if "tftensor" not in data:
            count(violations, "schema")  # DefaultData needs one of ndarray, tensor, tftensor
        return None, ()
    if "jsonData" in message:
        value = message["jsonData"]
        return (value if isinstance(value, list) else [value]), ()
    return None, ()


def _check_width(rows: list[Any], names: tuple[str, ...], violations: dict[str, int]) -> None:
    if names and rows and isinstance(rows[0], list) and len(rows[0]) != len(names):
        count(violations, "schema")


def _is_flat_row(row: Any) -> bool:
    return isinstance(row, list) and bool(row) and not isinstance(row[0], (list, dict))


def _request(exchange: ExchangeBytes, request: dict[str, Any], out: DecodedPayload) -> None:
    rows, names = _rows(request, out.violations)
    if rows is None:
        if request.get("data") is None and not any(key in request for key in _PAYLOAD_KEYS):
            count(out.violations, "schema")  # a request SeldonMessage without any payload
        return
    _check_width(rows, names, out.violations)
    names = names or tuple(exchange.feature_names)
    if rows and _is_flat_row(rows[0]):
        # Rows of scalars stay as parsed: the worker converts a whole batch at once (as kserve_v1).
        out.matrix_rows = rows
        out.matrix_names = positional_names(len(rows[0]), names)
        out.rows = len(rows)
    else:
        out.features, out.rows = rows_to_columns(rows, names, out.violations)


def _outputs(response: dict[str, Any], out: DecodedPayload) -> dict[str, Column]:
    rows, names = _rows(response, out.violations)
    if not rows:
        return {}
    _check_width(rows, names, out.violations)
    columns, _ = rows_to_columns(rows, names, out.violations, prefix="prediction")
    if not names and list(columns) == ["prediction0"]:
        return {"prediction": columns["prediction0"]}
    return columns


def model_version(meta: Any) -> str | None:
    """The version from `meta.requestPath` (see the module docstring), None without one."""
    if not isinstance(meta, dict):
        return None
    path = meta.get("requestPath")
    if not isinstance(path, dict):
        return None
    entries = sorted((key, value) for key, value in path.items() if isinstance(value, str) and value)
    if not entries:
        return None
    if len(entries) == 1:
        return entries[0][1]
    return ",".join(f"{component}={image}" for component, image in entries)


def decode(exchange: ExchangeBytes, request: Any, response: Any, out: DecodedPayload) -> None:
    out.protocol = "seldon"
    if is_feedback(exchange.path):
        # A label for an earlier prediction: its `request`, `truth` and `reward` are no model
        # inputs, and its `response` is an old answer, not a version served now.
        out.model_name = _deployment(exchange.path)
        return
    out.model_name = parse_path(exchange.path)[1]
    request_id = None
    if isinstance(request, dict):
        _request(exchange, request, out)
        meta = request.get("meta")
        if isinstance(meta, dict):
            request_id = _text(meta.get("puid"))
    elif request is not None:
        count(out.violations, "type")
    if isinstance(response, dict):
        out.outputs = _outputs(response, out)
        meta = response.get("meta")
        # `requestPath` is what the answer says served it: the answer version, which the
        # pipeline's served-versions and version-mismatch tracking go by (as OIP's model_version).
        out.model_version = out.answer_version = model_version(meta)
        if isinstance(meta, dict):
            request_id = _text(meta.get("puid")) or request_id
    out.request_id = request_id
