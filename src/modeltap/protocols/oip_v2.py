"""Open Inference Protocol V2 (KServe V2 / MLServer / Triton), PROTOCOLS.md §3.

`POST /v2/models/{name}[/versions/{v}]/infer` with `{"inputs": [{"name", "shape", "datatype",
"data"}, ...]}` → `{"model_name", "model_version", "id", "outputs": [...]}`. Every tensor is
reshaped by its `shape` (`data` may be nested or flat, row-major) and `shape[0]` is the batch.
Also read: the binary tensor extension (`Inference-Header-Content-Length`: a JSON header, then raw
little-endian tensors in tensor order) and MLServer's `infer_stream`/`generate_stream` SSE
responses (one InferenceResponse per `data:` event).

Numeric tensors go through numpy once (no Python loop per value on the common path); text and
boolean tensors become columns by slicing one flat list. Nothing here raises on bad input: problems
are counted on `out.violations` as `decode_error`, `missing`, `type` or `schema`.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from modeltap._types import Value
from modeltap.protocols.json_body import BodyError, loads, read_body
from modeltap.protocols.payload import Column, DecodedPayload, ExchangeBytes, count
from modeltap.protocols.tabular import MAX_COLUMNS, MAX_VECTOR_COLUMNS, index_names, norm_name

Floats = npt.NDArray[np.float64]

# /v2/models/{name}[/versions/{v}]/(infer|infer_stream|generate|generate_stream)
PATH = re.compile(
    r"/v2/models/([^/]+)(?:/versions/([^/]+))?/(infer|infer_stream|generate|generate_stream)/?$"
)
_GENERATE = ("generate", "generate_stream")

# Little-endian element types of the binary extension (BF16 is read as uint16 and widened).
_NUMERIC: dict[str, str] = {
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "BF16": "<u2",
}
# BYTES content types whose elements are features; anything else (base64, ...) is binary data.
_TEXT_CONTENT = (None, "str", "datetime")
# A shape with more elements than this cannot describe a body we were given.
_MAX_ELEMENTS = 1 << 53
_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


@functools.lru_cache(maxsize=1024)
def parse_path(path: str) -> tuple[str | None, str | None]:
    """Model name and version from a V2 inference path; (None, None) for any other path."""
    match = PATH.search(path)
    if match is None:
        return None, None
    return match.group(1), match.group(2)


def _is_tensor(value: Any) -> bool:
    return isinstance(value, dict) and all(key in value for key in ("name", "shape", "datatype", "data"))


def matches(exchange: ExchangeBytes, request: Any) -> bool:
    """A V2 inference path, a body with an `inputs` list of tensors, or a binary-extension body."""
    if exchange.inference_header_length is not None or PATH.search(exchange.path) is not None:
        return True
    if not isinstance(request, dict):
        return False
    inputs = request.get("inputs")
    return isinstance(inputs, list) and bool(inputs) and all(_is_tensor(item) for item in inputs)


# --- one tensor -----------------------------------------------------------------------------------


class _Tensor(NamedTuple):
    """One decoded tensor, flat in row-major order."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "number" (values: float64 array), "bool" / "text" (values: list), "skip"
    values: Floats | list[Value]
    # Cells of `values` that are NaN because they were already counted as `type`, not `missing`.
    typed: int = 0


class _Binary:
    """The raw section after a binary-extension JSON header, consumed in tensor order."""

    __slots__ = ("buffer", "lost", "offset")

    def __init__(self, buffer: bytes) -> None:
        self.buffer = buffer
        self.offset = 0
        self.lost = False  # a bad size earlier: the tensors after it cannot be located

    def take(self, size: Any, violations: dict[str, int]) -> bytes | None:
        if self.lost:
            count(violations, "schema")
            return None
        if type(size) is not int or size < 0:
            self.lost = True
            count(violations, "schema")
            return None
        end = self.offset + size
        if end > len(self.buffer):
            self.lost = True
            count(violations, "decode_error")  # a truncated body
            return None
        chunk = self.buffer[self.offset : end]
        self.offset = end
        return chunk


def _shape(value: Any) -> tuple[int, ...] | None:
    """A valid shape (non-negative ints, rank ≥ 1 for the batch, bounded product), else None."""
    if not isinstance(value, list) or not value:
        return None
    product = 1
    for dim in value:
        if type(dim) is not int or dim < 0:
            return None
        product *= dim
        if product > _MAX_ELEMENTS:
            return None
    return tuple(value)


def _product(dims: tuple[int, ...]) -> int:
    product = 1
    for dim in dims:
        product *= dim
    return product


def _leaves(data: list[Any]) -> list[Any]:
    """Nested lists flattened in row-major order, iteratively (no recursion limit to hit)."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _content_type(parameters: Any) -> str | None:
    if isinstance(parameters, dict):
        value = parameters.get("content_type")
        if isinstance(value, str):
            return value
    return None


def _json_numbers(data: list[Any]) -> tuple[Floats, int]:
    """JSON numbers as one flat float64 array (null → NaN) and how many cells were not numbers.

    numpy converts like the servers do (`np.array(data, dtype)`), so numeric strings count as
    numbers; what numpy refuses (ragged nesting, objects, huge ints) takes the per-value path.
    """
    try:
        fast: Floats = np.asarray(data, dtype=np.float64).reshape(-1)
        return fast, 0
    except (ValueError, TypeError, OverflowError):
        pass
    leaves = _leaves(data)
    values = np.empty(len(leaves), dtype=np.float64)
    wrong = 0
    for i, item in enumerate(leaves):
        if item is None:
            values[i] = np.nan
            continue
        try:
            values[i] = float(item)
        except OverflowError:  # an integer beyond the float range
            values[i] = np.inf
        except (ValueError, TypeError):
            values[i] = np.nan
            wrong += 1
    return values, wrong


def _timestamp(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _texts(items: list[Any], content_type: str | None, violations: dict[str, int]) -> list[Value]:
    """BYTES elements (str from JSON, bytes from the binary extension) as categorical values;
    `datetime` content becomes POSIX seconds."""
    values: list[Value] = []
    missing = wrong = 0
    for item in items:
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                wrong += 1
                values.append(None)
                continue
        if isinstance(item, str):
            if content_type == "datetime":
                stamp = _timestamp(item)
                wrong += stamp is None
                values.append(stamp)
            else:
                values.append(item)
            continue
        if item is None:
            missing += 1
        else:
            wrong += 1
        values.append(None)
    if missing:
        count(violations, "missing", missing)
    if wrong:
        count(violations, "type", wrong)
    return values


def _json_bools(data: list[Any], violations: dict[str, int]) -> list[Value]:
    values: list[Value] = []
    missing = wrong = 0
    for item in _leaves(data):
        if isinstance(item, bool):
            values.append(item)
        elif type(item) is int and item in (0, 1):
            values.append(item == 1)
        else:
            if item is None:
                missing += 1
            else:
                wrong += 1
            values.append(None)
    if missing:
        count(violations, "missing", missing)
    if wrong:
        count(violations, "type", wrong)
    return values


def _binary_items(buffer: bytes) -> list[bytes] | None:
    """BYTES elements of the binary extension: a 4-byte little-endian length, then the bytes."""
    items: list[bytes] = []
    position, end = 0, len(buffer)
    while position < end:
        if position + 4 > end:
            return None
        size = int.from_bytes(buffer[position : position + 4], "little")
        position += 4
        if position + size > end:
            return None
        items.append(buffer[position : position + size])
        position += size
    return items


def _binary_fixed(datatype: str, buffer: bytes) -> Floats | list[Value]:
    """A fixed-width binary tensor (its size already checked) as float64s, or bools."""
    if datatype == "BOOL":
        bools: list[Value] = (np.frombuffer(buffer, dtype=np.uint8) != 0).tolist()
        return bools
    if datatype == "BF16":
        high = np.frombuffer(buffer, dtype="<u2").astype(np.uint32) << np.uint32(16)
        widened: Floats = high.view(np.float32).astype(np.float64)
        return widened
    numbers: Floats = np.frombuffer(buffer, dtype=_NUMERIC[datatype]).astype(np.float64)
    return numbers


def _tensor(spec: Any, binary: _Binary | None, violations: dict[str, int]) -> _Tensor | None:
    """One request input / response output, decoded and checked against its shape, or None."""
    if not isinstance(spec, dict):
        count(violations, "type")
        return None
    parameters = spec.get("parameters")
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    chunk: bytes | None = None
    if binary is not None and size is not None:
        # Consumed in tensor order, whatever happens to this tensor below.
        chunk = binary.take(size, violations)
        if chunk is None:
            return None
    name = spec.get("name")
    datatype = spec.get("datatype")
    shape = _shape(spec.get("shape"))
    if not isinstance(name, str) or not name:
        count(violations, "schema")
        return None
    if not isinstance(datatype, str) or (datatype not in _NUMERIC and datatype not in ("BOOL", "BYTES")):
        count(violations, "type")
        return None
    if shape is None:
        count(violations, "schema")
        return None
    elements = _product(shape)
    if elements == 0 and shape[0] != 0:
        count(violations, "schema")  # rows without a single cell: nothing to trust the batch by
        return None
    content_type = _content_type(parameters)
    values: Floats | list[Value]
    typed = 0
    if datatype == "BYTES":
        kind = "text" if content_type in _TEXT_CONTENT else "skip"
        if chunk is not None:
            items = _binary_items(chunk)
            if items is None:
                count(violations, "decode_error")
                return None
        else:
            data = spec.get("data")
            if not isinstance(data, list):
                count(violations, "schema" if data is None else "type")
                return None
            items = _leaves(data)
        if len(items) != elements:
            count(violations, "schema")
            return None
        # Binary payloads (base64 images, ...) are not features: only their batch size counts.
        values = _texts(items, content_type, violations) if kind == "text" else []
        return _Tensor(name, shape, kind, values)
    if chunk is not None:
        itemsize = 1 if datatype == "BOOL" else np.dtype(_NUMERIC[datatype]).itemsize
        if len(chunk) != elements * itemsize:
            count(violations, "schema")
            return None
        values = _binary_fixed(datatype, chunk)
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            count(violations, "schema" if data is None else "type")
            return None
        if datatype == "BOOL":
            values = _json_bools(data, violations)
        else:
            values, typed = _json_numbers(data)
            if typed:
                count(violations, "type", typed)
    if len(values) != elements:
        count(violations, "schema")
        return None
    return _Tensor(name, shape, "bool" if datatype == "BOOL" else "number", values, typed)


# --- columns --------------------------------------------------------------------------------------


def _names(
    name: str, dims: tuple[int, ...], output: bool, pandas: bool, feature_names: tuple[str, ...]
) -> tuple[str, ...] | None:
    """Column names for one tensor's row cells, () when the row is too wide to track cell by cell
    (then only its norm is kept), None when the cell names would be longer than any tracked name
    (tabular.index_names, shared with the TF Serving forms). `feature_names` is non-empty only
    for a lone input."""
    width = _product(dims)
    if len(dims) <= 1 and feature_names and len(feature_names) == width:
        return feature_names
    if not dims or ((pandas or output) and width == 1):
        return (name,)
    if width > MAX_VECTOR_COLUMNS:
        return ()
    return index_names(name, dims)


def _count_missing(finite: npt.NDArray[np.bool_], typed: int, violations: dict[str, int]) -> int:
    bad = int(finite.size - np.count_nonzero(finite))
    if bad > typed:
        count(violations, "missing", bad - typed)
    return bad


def _numeric_columns(matrix: Floats, typed: int, violations: dict[str, int]) -> list[Column]:
    """The columns of a [rows, width] matrix as float lists, non-finite cells as None."""
    finite = np.isfinite(matrix)
    if _count_missing(finite, typed, violations):
        cells = matrix.astype(object)
        cells[~finite] = None
        with_missing: list[Column] = cells.T.tolist()
        return with_missing
    columns: list[Column] = matrix.T.tolist()
    return columns


def _norm_column(matrix: Floats, typed: int, violations: dict[str, int]) -> Column:
    """The L2 norm of each row, None for a row with a non-finite cell."""
    finite = np.isfinite(matrix)
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    if _count_missing(finite, typed, violations):
        cells = norms.astype(object)
        cells[~finite.all(axis=1)] = None
        with_missing: Column = cells.tolist()
        return with_missing
    column: Column = norms.tolist()
    return column


def _add_columns(
    columns: dict[str, Column],
    tensor: _Tensor,
    output: bool,
    pandas: bool,
    feature_names: tuple[str, ...],
    violations: dict[str, int],
) -> None:
    rows, dims = tensor.shape[0], tensor.shape[1:]
    width = _product(dims)
    names = _names(tensor.name, dims, output, pandas, feature_names)
    if names is None:
        count(violations, "schema")  # a name too long to track, refused before its cells' names
        return
    new = names or (norm_name(tensor.name),)
    if len(columns) + len(new) > MAX_COLUMNS or (columns and not columns.keys().isdisjoint(new)):
        count(violations, "schema")  # a name used twice, or more columns than worth tracking
        return
    values = tensor.values
    if isinstance(values, np.ndarray):
        matrix = values.reshape(rows, width)
        if names:
            columns.update(zip(names, _numeric_columns(matrix, tensor.typed, violations), strict=True))
        else:
            columns[new[0]] = _norm_column(matrix, tensor.typed, violations)
    elif names:
        for j, name in enumerate(names):
            columns[name] = values[j::width]
    elif tensor.kind == "bool":
        bits = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        # The missing cells were counted when the tensor was read.
        columns[new[0]] = _norm_column(bits.reshape(rows, width), len(values), violations)
    else:
        count(violations, "type")  # a text tensor too wide to track cell by cell


def _tensor_columns(
    document: dict[str, Any],
    key: str,
    binary: _Binary | None,
    output: bool,
    feature_names: tuple[str, ...],
    violations: dict[str, int],
) -> tuple[dict[str, Column], int | None]:
    """Columns of every tensor listed under `key`, and the batch size (None without any tensor).

    Inputs must agree on the batch (a row is one record); outputs may not (token streams)."""
    specs = document.get(key)
    columns: dict[str, Column] = {}
    if not isinstance(specs, list):
        count(violations, "schema" if specs is None else "type")
        return columns, None
    pandas = _content_type(document.get("parameters")) == "pd"
    names = feature_names if len(specs) == 1 and not pandas else ()
    batch: int | None = None
    for spec in specs:
        tensor = _tensor(spec, binary, violations)
        if tensor is None:
            continue
        if batch is None:
            batch = tensor.shape[0]
        elif tensor.shape[0] != batch and not output:
            count(violations, "schema")  # inputs that disagree on the batch size
            continue
        if tensor.kind != "skip":
            _add_columns(columns, tensor, output, pandas, names, violations)
    if binary is not None and not binary.lost and binary.offset != len(binary.buffer):
        # Bytes after the last tensor: a size that lies, or no binary tensor at all.
        count(violations, "schema" if binary.offset else "decode_error")
    return columns, batch


# --- documents ------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _identity(document: dict[str, Any], out: DecodedPayload) -> None:
    """Model name/version and request id from a response (after the URL; detect.py sanitises)."""
    if out.model_name is None:
        out.model_name = _text(document.get("model_name"))
    out.answer_version = _text(document.get("model_version"))
    if out.model_version is None:
        out.model_version = out.answer_version
    if out.request_id is None:
        out.request_id = _text(document.get("id"))


_body = read_body


def _split_header(body: bytes, length: int, out: DecodedPayload) -> tuple[Any, _Binary] | None:
    """A binary-extension body: `length` bytes of JSON, then the raw tensors."""
    if length < 0 or length > len(body):
        count(out.violations, "decode_error")
        return None
    try:
        header = loads(body[:length])
    except BodyError as exc:
        count(out.violations, exc.reason)
        return None
    return header, _Binary(body[length:])


def _find_header(body: bytes, out: DecodedPayload) -> tuple[Any, _Binary] | None:
    """A response body that does not parse as JSON may be a JSON header followed by binary outputs
    (whose header length is not passed to decoders): find where the JSON object ends."""
    start = len(body) - len(body.lstrip())
    if body[start : start + 1] != b"{":
        count(out.violations, "decode_error")
        return None
    try:
        # latin-1 maps every byte to one character, so the end index is a byte offset; JSON's
        # structure is ASCII, so UTF-8 sequences inside strings cannot move it.
        _, end = json.JSONDecoder().raw_decode(body.decode("latin-1"), start)
    except (ValueError, RecursionError):
        count(out.violations, "decode_error")
        return None
    return _split_header(body, end, out)


def _is_sse(exchange: ExchangeBytes, body: bytes) -> bool:
    content_type = exchange.response_content_type.lower()
    if "text/event-stream" in content_type:
        return True
    return not content_type and body.lstrip().startswith(_SSE_FIELDS)


def _sse_events(body: bytes) -> list[bytes]:
    """The `data:` payload of each server-sent event (multi-line data joined by newlines)."""
    events: list[bytes] = []
    lines: list[bytes] = []
    for line in body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if not line:
            if lines:
                events.append(b"\n".join(lines))
                lines = []
        elif line.startswith(b"data:"):
            data = line[5:]
            lines.append(data[1:] if data.startswith(b" ") else data)
    if lines:  # a stream cut before its last blank line still delivered this event
        events.append(b"\n".join(lines))
    return events


def _response(document: Any, binary: _Binary | None, lenient: bool, out: DecodedPayload) -> None:
    """One InferenceResponse: identity, and its outputs appended to `out.outputs`."""
    if not isinstance(document, dict):
        count(out.violations, "type")
        return
    _identity(document, out)
    if "outputs" not in document and (lenient or "error" in document):
        return  # an error, or a generate-extension response: no tensors to read
    columns, _ = _tensor_columns(document, "outputs", binary, True, (), out.violations)
    for name, column in columns.items():
        existing = out.outputs.get(name)
        if existing is None:
            out.outputs[name] = column
        else:
            existing.extend(column)  # a stream: the outputs of every event, in order


def _decode_response(exchange: ExchangeBytes, generate: bool, out: DecodedPayload, limit: int) -> None:
    if not 200 <= exchange.status < 300 or not exchange.response_body:
        return
    body = _body(exchange.response_body, exchange.response_content_encoding, limit, out)
    if body is None:
        return
    if _is_sse(exchange, body):
        for event in _sse_events(body):
            if event.strip() == b"[DONE]":
                continue
            try:
                document = loads(event)
            except BodyError as exc:
                count(out.violations, exc.reason)
                continue
            _response(document, None, True, out)
        return
    binary: _Binary | None = None
    try:
        document = loads(body)
    except BodyError:
        found = _find_header(body, out)
        if found is None:
            return
        document, binary = found
    _response(document, binary, generate, out)


def decode(exchange: ExchangeBytes, request: Any, out: DecodedPayload, max_decoded_bytes: int) -> None:
    """Decode one V2 exchange into `out`: inputs as features, outputs, model identity, batch size.

    `request` is the parsed JSON request, or None. A binary-extension request (when
    `exchange.inference_header_length` is set) is parsed here from `exchange.request_body`; the
    response is parsed here from `exchange.response_body`, for 2xx statuses only.
    """
    out.protocol = "oip_v2"
    out.model_name, out.model_version = parse_path(exchange.path)
    match = PATH.search(exchange.path)
    generate = match is not None and match.group(3) in _GENERATE
    binary: _Binary | None = None
    if exchange.inference_header_length is not None:
        body = _body(exchange.request_body, exchange.request_content_encoding, max_decoded_bytes, out)
        split = None if body is None else _split_header(body, exchange.inference_header_length, out)
        request, binary = (None, None) if split is None else split
    if isinstance(request, dict):
        # A generate-extension body (`{"text_input": ...}`) has no tensors to read.
        if "inputs" in request or not generate:
            out.features, batch = _tensor_columns(
                request, "inputs", binary, False, tuple(exchange.feature_names), out.violations
            )
            out.rows = batch or 0
    elif request is not None:
        count(out.violations, "type")
    _decode_response(exchange, generate, out, max_decoded_bytes)
    if out.request_id is None and isinstance(request, dict):
        out.request_id = _text(request.get("id"))
