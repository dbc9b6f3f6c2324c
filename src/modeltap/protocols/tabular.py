"""Rows and tensors of JSON values to named columns, counting what cannot be used."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

from modeltap._types import Value
from modeltap.protocols.payload import Column, count

# A vector-valued field becomes name[j] columns up to this many; wider ones count as `type`.
MAX_VECTOR_COLUMNS = 256
# A payload with more distinct keys than this is not tabular data worth tracking per key.
MAX_COLUMNS = 2048


def scalar(value: Any, violations: dict[str, int]) -> Value:
    """A JSON value as a column value; non-finite numbers and null are missing (PROTOCOLS.md §8)."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if -(2**1023) < value < 2**1023:
            return float(value)
        count(violations, "missing", 1)  # beyond float range: a non-finite number
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        count(violations, "missing", 1)
        return None
    if value is None:
        count(violations, "missing", 1)
        return None
    count(violations, "type", 1)
    return None


def positional_name(index: int, names: Sequence[str], prefix: str = "f") -> str:
    return names[index] if index < len(names) else f"{prefix}{index}"


@functools.lru_cache(maxsize=256)
def positional_names(width: int, names: tuple[str, ...], prefix: str = "f") -> tuple[str, ...]:
    """Names of the first `width` positional columns (cached: batches repeat the same width)."""
    return tuple(positional_name(j, names, prefix) for j in range(width))


def _put(columns: dict[str, Column], name: str, row: int, value: Value, violations: dict[str, int]) -> None:
    column = columns.get(name)
    if column is None:
        if len(columns) >= MAX_COLUMNS:
            return
        column = columns[name] = [None] * row
        if row:
            count(violations, "missing", row)  # earlier rows lacked this key
    elif len(column) < row:
        count(violations, "missing", row - len(column))
        column.extend([None] * (row - len(column)))
    column.append(value)


def _put_field(
    columns: dict[str, Column], name: str, row: int, value: Any, violations: dict[str, int]
) -> None:
    if (
        isinstance(value, list)
        and value
        and len(value) <= MAX_VECTOR_COLUMNS
        and not isinstance(value[0], list)
    ):
        for j, item in enumerate(value):
            _put(columns, f"{name}[{j}]", row, scalar(item, violations), violations)
        return
    if isinstance(value, dict) and "b64" in value:
        return  # binary inputs are not features (their size is not a distribution worth tracking)
    _put(columns, name, row, scalar(value, violations), violations)


def rows_to_columns(
    rows: list[Any], names: Sequence[str], violations: dict[str, int], prefix: str = "f"
) -> tuple[dict[str, Column], int]:
    """Row-major records (lists or dicts per row, or bare scalars) to columns of equal length."""
    columns: dict[str, Column] = {}
    width: int | None = None
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            for key, value in row.items():
                _put_field(columns, str(key), i, value, violations)
        elif isinstance(row, list):
            if width is None:
                width = len(row)
            elif len(row) != width:
                count(violations, "schema", 1)
            for j, value in enumerate(row):
                _put_field(columns, positional_name(j, names, prefix), i, value, violations)
        else:
            _put(
                columns,
                positional_name(0, names, prefix) if names else prefix + "0",
                i,
                scalar(row, violations),
                violations,
            )
    n = len(rows)
    for column in columns.values():
        if len(column) < n:
            # A key absent from some rows is missing there (dict rows), or a short row (lists).
            count(violations, "missing", n - len(column))
            column.extend([None] * (n - len(column)))
    return columns, n


def per_row_outputs(
    response: dict[str, Any], rows: int, violations: dict[str, int], skip: tuple[str, ...] = ()
) -> dict[str, Column]:
    """Every other per-row array of an answer as outputs named by its key (`probabilities`,
    `probabilities[j]` for vectors): a list with one entry per input row (any non-empty list
    when the row count is unknown). Keys come from the model's own answer."""
    columns: dict[str, Column] = {}
    for key, value in response.items():
        if key in skip or not isinstance(value, list) or not value or (rows and len(value) != rows):
            continue
        if len(columns) >= MAX_COLUMNS:
            break
        found, _ = rows_to_columns([{key: item} for item in value], (), violations)
        for name, column in found.items():
            if len(columns) < MAX_COLUMNS:
                columns[name] = column
    return columns
