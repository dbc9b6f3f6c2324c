"""The feedback wire format: labels sent back to modeltap, joined later to their predictions.

A body is one JSON object, a JSON array of objects, or newline-delimited JSON
(`application/x-ndjson`, one object per line). Each object names its prediction either by the
request id the client sent (or the protocol's own id) and the row of a batched request::

    {"request_id": "7f3c…", "row": 0, "label": "churned", "model_name": "churn"}

or by a key that is an input column (`label_key`), for labels that arrive keyed by business id::

    {"key": {"transaction_id": "T-1042"}, "label": 1}

`row` defaults to 0 and `model_name` to the only model. A label is a string, a finite number or
a boolean. Items are checked one by one: a bad item is rejected with its index and a reason, the
others go on. Nothing here trusts the client: ids and keys are length-capped strings, and the
caller caps the body's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from modeltap.config import CONVERSION  # the outcome whose rate is the conversion rate (0/1)

MAX_ID_LENGTH = 256
MAX_ROW = 1_000_000

Label = str | float | bool | tuple[str | float, ...]  # a list: the relevant items of a ranking
MAX_RELEVANT = 100
# An outcome's magnitude (an order value of a trillion is a mistake or an attack): sums of
# squares of values under it stay finite and exact enough in float64.
MAX_OUTCOME_VALUE = 1e12


@dataclass(frozen=True)
class FeedbackItem:
    index: int
    label: Label
    request_id: str | None = None
    row: int = 0
    key: tuple[str, str] | None = None  # (input column, its value as text)
    model_name: str | None = None


@dataclass(frozen=True)
class FeedbackBatch:
    items: tuple[FeedbackItem, ...]
    rejected: tuple[tuple[int, str], ...]  # (index, reason)


class FeedbackBodyError(ValueError):
    """The body as a whole cannot be read (not JSON, not an object or array of objects)."""


def _text(value: Any) -> str | None:
    """An id as text: strings and integers (JSON ids are often numbers), length-capped."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    return value


def _label(value: Any) -> Label | None:
    if isinstance(value, list):
        if not 0 < len(value) <= MAX_RELEVANT:
            return None
        items = [_label(item) for item in value]
        if any(item is None or isinstance(item, (bool, tuple)) for item in items):
            return None
        return tuple(item for item in items if isinstance(item, (str, float)))
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    return None


def _join_fields(raw: dict[str, Any]) -> tuple[str | None, int, tuple[str, str] | None, str | None] | str:
    """(request id, row, key, model name) naming the prediction an item belongs to, or the reason
    the item is rejected."""
    model_name = None
    if raw.get("model_name") is not None:
        model_name = _text(raw["model_name"])
        if model_name is None:
            return "bad_model_name"
    if "key" in raw and raw["key"] is not None:
        key = raw["key"]
        if not isinstance(key, dict) or len(key) != 1:
            return "bad_key"
        [(column, value)] = key.items()
        column_text, value_text = _text(column), _text(value)
        if column_text is None or value_text is None:
            return "bad_key"
        return None, 0, (column_text, value_text), model_name
    if raw.get("request_id") is None:
        return "no_join_key"
    request_id = _text(raw["request_id"])
    if request_id is None:
        return "bad_request_id"
    row = raw.get("row", 0)
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= MAX_ROW:
        return "bad_row"
    return request_id, row, None, model_name


def _item(index: int, raw: Any) -> FeedbackItem | str:
    """The item, or the reason it is rejected."""
    if not isinstance(raw, dict):
        return "not_an_object"
    if "label" not in raw:
        return "no_label"
    label = _label(raw["label"])
    if label is None:
        return "bad_label"
    fields = _join_fields(raw)
    if isinstance(fields, str):
        return fields
    request_id, row, key, model_name = fields
    return FeedbackItem(index, label, request_id=request_id, row=row, key=key, model_name=model_name)


def _documents(body: bytes, content_type: str) -> list[Any]:
    """The items of a body: one JSON object, an array of them, or NDJSON lines."""
    raws: list[Any]
    if content_type.split(";")[0].strip().lower() in ("application/x-ndjson", "application/jsonl"):
        raws = []
        for number, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raws.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                raise FeedbackBodyError(f"line {number} is not JSON") from None
        return raws
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FeedbackBodyError("the body is not JSON") from None
    if isinstance(document, dict):
        return [document]
    if isinstance(document, list):
        return document
    raise FeedbackBodyError("the body must be an object, an array of objects or NDJSON")


def parse_feedback(body: bytes, content_type: str = "application/json") -> FeedbackBatch:
    """Items and rejections of a feedback body; `FeedbackBodyError` if it cannot be read at all."""
    items: list[FeedbackItem] = []
    rejected: list[tuple[int, str]] = []
    for index, raw in enumerate(_documents(body, content_type)):
        parsed = _item(index, raw)
        if isinstance(parsed, str):
            rejected.append((index, parsed))
        else:
            items.append(parsed)
    return FeedbackBatch(tuple(items), tuple(rejected))


@dataclass(frozen=True)
class OutcomeItem:
    """A business outcome of one answered row: `{"request_id": …, "row": 0, "name":
    "conversion", "value": 1}` (or `"key": {column: value}` instead of the id and row)."""

    index: int
    name: str
    value: float
    request_id: str | None = None
    row: int = 0
    key: tuple[str, str] | None = None
    model_name: str | None = None


@dataclass(frozen=True)
class OutcomeBatch:
    items: tuple[OutcomeItem, ...]
    rejected: tuple[tuple[int, str], ...]  # (index, reason)


def _outcome(index: int, raw: Any, names: frozenset[str]) -> OutcomeItem | str:
    if not isinstance(raw, dict):
        return "not_an_object"
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        return "no_name"
    if name not in names:
        return "unknown_name"  # names come from the configuration, never from the client
    value = raw.get("value")
    if not isinstance(value, (int, float)) or not abs(float(value)) <= MAX_OUTCOME_VALUE:  # true/false: 1/0
        return "bad_value"  # (NaN fails the comparison too)
    number = float(value)
    if name == CONVERSION and number not in (0.0, 1.0):
        return "bad_value"  # a conversion happened (1, true) or did not (0, false)
    fields = _join_fields(raw)
    if isinstance(fields, str):
        return fields
    request_id, row, key, model_name = fields
    return OutcomeItem(index, name, number, request_id=request_id, row=row, key=key, model_name=model_name)


def parse_outcomes(body: bytes, content_type: str, names: frozenset[str]) -> OutcomeBatch:
    """Outcomes and rejections of an outcome body (framed like feedback); `names` are the
    configured outcome names. `FeedbackBodyError` if the body cannot be read at all."""
    items: list[OutcomeItem] = []
    rejected: list[tuple[int, str]] = []
    for index, raw in enumerate(_documents(body, content_type)):
        parsed = _outcome(index, raw, names)
        if isinstance(parsed, str):
            rejected.append((index, parsed))
        else:
            items.append(parsed)
    return OutcomeBatch(tuple(items), tuple(rejected))
