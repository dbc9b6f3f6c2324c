"""Rows and tensors of JSON values to named columns, counting what cannot be used.

Naming, shared by every decoder so that the same data gets the same names whatever form it came in
(TF Serving rows or columns, Open Inference Protocol tensors): a per-row vector `name` becomes
`name[j]` columns, a per-row matrix `name[j,k]` (any rank: `name[j,k,l]`...), row-major, up to
MAX_VECTOR_COLUMNS cells; a wider value is tracked only by its L2 norm, `name.norm`
(CLARIFICATIONS.md Issue 3). Binary values (`{"b64": ...}`) are not features.

Memory stays proportional to the body: names are built once per field shape (memoised within a
bound in characters, not entries: clients choose names and widths), a name the statistics could
never track is refused before its cells' names are built, and the missing cells a decode adds
(padding for rows that lack a key, rank-0 values repeated per row) are bounded by the values the
body holds.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from modeltap._types import Value
from modeltap.protocols.payload import Column, count

# A vector-valued field becomes name[j] columns up to this many cells; a wider one only its norm.
MAX_VECTOR_COLUMNS = 256
# A payload with more distinct keys than this is not tabular data worth tracking per key.
MAX_COLUMNS = 2048
# The statistics track no name longer than this (`StateCaps.max_name_chars`): a field whose cells
# would get longer names is refused before they are built (its name is copied into each of them).
MAX_NAME_CHARS = 128
# Missing cells a decode may add (padding, rank-0 values repeated per row): a few thousand, plus
# FILL_PER_VALUE per row and per value of the body. Each costs a list slot (8 bytes) where the body
# spent at least 2-3 bytes on the value: this keeps a body of sparse keys (a new key every few
# rows, thousands of rows) from becoming a dense table thousands of times its size.
FILL_PER_VALUE = 2
FILL_FLOOR = 4096
# Memoised name lists, in characters (plus a per-string overhead): a few MiB at most.
NAME_CACHE_CHARS = 4 << 20
_STR_OVERHEAD = 57  # sys.getsizeof("") plus the slot that holds the string


class _NameCache:
    """Name tuples by key, bounded in total size: oldest entries leave first.

    Reads take no lock (a dict lookup is atomic); writes do, so concurrent decoders keep the size
    account right.
    """

    __slots__ = ("_chars", "_entries", "_limit", "_lock")

    def __init__(self, limit: int) -> None:
        self._entries: dict[Hashable, tuple[tuple[str, ...], int]] = {}
        self._chars = 0
        self._limit = limit
        self._lock = threading.Lock()

    def find(self, key: Hashable) -> tuple[str, ...] | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def get(self, key: Hashable, build: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
        entry = self._entries.get(key)
        if entry is not None:
            return entry[0]
        names = build()
        size = sum(map(len, names)) + _STR_OVERHEAD * (len(names) + 1)
        if size * 8 > self._limit:
            return names  # large lists are built per use, never kept
        with self._lock:
            if key not in self._entries:
                while self._entries and self._chars + size > self._limit:
                    _, freed = self._entries.pop(next(iter(self._entries)))  # the oldest
                    self._chars -= freed
                self._entries[key] = (names, size)
                self._chars += size
        return names

    @property
    def chars(self) -> int:
        return self._chars


NAMES = _NameCache(NAME_CACHE_CHARS)


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


def positional_names(width: int, names: tuple[str, ...], prefix: str = "f") -> tuple[str, ...]:
    """Names of the first `width` positional columns (memoised: batches repeat the same width)."""
    return NAMES.get(
        ("positional", width, names, prefix),
        lambda: tuple(positional_name(j, names, prefix) for j in range(width)),
    )


def index_names(name: str, dims: tuple[int, ...]) -> tuple[str, ...] | None:
    """`name[j]` / `name[j,k]` / ... for every cell of one row, row-major (at most
    MAX_VECTOR_COLUMNS cells); None when the longest of them would pass MAX_NAME_CHARS: no such
    name is ever tracked, and building them would copy a client's long name into every cell."""
    key = ("index", name, dims)
    names = NAMES.find(key)
    if names is not None:
        return names
    last = ",".join(str(d - 1) for d in dims)
    if len(name) + len(last) + 2 > MAX_NAME_CHARS:
        return None
    return NAMES.get(key, lambda: _build_index_names(name, dims))


def _build_index_names(name: str, dims: tuple[int, ...]) -> tuple[str, ...]:
    indexes: list[str] = [""]
    for dim in dims:
        indexes = [f"{head},{j}" if head else str(j) for head in indexes for j in range(dim)]
    return tuple(f"{name}[{index}]" for index in indexes)


def norm_name(name: str) -> str:
    """The column of a value too wide to track cell by cell: its L2 norm per row."""
    return f"{name}.norm"


def is_binary(value: Any) -> bool:
    """TF Serving's binary value: an object with the single key `b64` naming a string
    (`IsValBase64Object` in tensorflow_serving/util/json_tensor.cc)."""
    return type(value) is dict and len(value) == 1 and isinstance(value.get("b64"), str)


def is_binary_field(value: Any) -> bool:
    """A binary value, or a (nested) list of them: nothing to track but its size."""
    while isinstance(value, list) and value:
        value = value[0]
    return is_binary(value)


def cells(value: list[Any]) -> tuple[tuple[int, ...], list[Any]] | None:
    """A nested list's shape and its leaves in row-major order; None when it is ragged or has no
    cells. Iterative: client nesting cannot hit the recursion limit."""
    if not any(type(item) is list for item in value):
        return ((len(value),), value) if value else None  # the common case: a flat vector
    dims: list[int] = []
    probe: Any = value
    while isinstance(probe, list):
        if not probe:
            return None
        dims.append(len(probe))
        probe = probe[0]
    rank = len(dims)
    leaves: list[Any] = []
    stack = [iter(value)]
    while stack:
        depth = len(stack)
        for item in stack[-1]:
            if isinstance(item, list):
                if depth >= rank or len(item) != dims[depth]:
                    return None
                stack.append(iter(item))
                break
            if depth != rank:
                return None
            leaves.append(item)
        else:
            stack.pop()
    return tuple(dims), leaves


def vector_norm(leaves: list[Any], violations: dict[str, int]) -> Value:
    """The L2 norm of a wide value's cells, as oip_v2 tracks wide tensors: None when a cell is
    missing or not finite (each counted `missing`) or when a cell is not a number (one `type`)."""
    try:
        norm = math.hypot(*leaves)
    except (TypeError, OverflowError):
        norm = math.nan
    if math.isfinite(norm):
        return norm
    missing = 0
    for leaf in leaves:
        if isinstance(leaf, float):
            finite = math.isfinite(leaf)
        elif isinstance(leaf, int):
            finite = -(2**1023) < leaf < 2**1023
        elif leaf is None:
            finite = False
        else:
            count(violations, "type")
            return None
        if not finite:
            missing += 1
    count(violations, "missing", max(missing, 1))  # no bad cell: the norm itself overflowed
    return None


def fill_budget(rows: int, values: int) -> int:
    """Missing cells a decode of `rows` rows holding `values` values may add."""
    return FILL_FLOOR + FILL_PER_VALUE * (rows + values)


class Table:
    """Columns under construction, kept aligned: `columns[name][i]` is row i's value.

    Rows are filled in increasing order per column (row-major records, or one tensor after
    another). A name that already has a value in a row (a literal key `x[0]` beside a vector `x`,
    or two tensors that expand to the same cell) keeps the first and counts `schema`; a name
    refused for the caps (MAX_COLUMNS, MAX_NAME_CHARS, the fill budget) counts `schema` once.
    """

    __slots__ = ("_fill", "_padded", "_refused", "columns", "rows", "violations")

    def __init__(self, rows: int, violations: dict[str, int], fill: int) -> None:
        self.columns: dict[str, Column] = {}
        self.rows = rows
        self.violations = violations
        self._fill = fill  # missing cells that may still be added
        # Missing cells added so far by column, counted `missing` in `finish` for the columns kept.
        self._padded: dict[str, int] = {}
        self._refused: set[str] = set()

    def _drop(self, name: str) -> None:
        """A column of mostly padding, not worth its memory: its padding is given back."""
        del self.columns[name]
        self._fill += self._padded.pop(name, 0)
        self._refuse(name)

    def _refuse(self, name: str) -> None:
        if name not in self._refused:
            self._refused.add(name)
            count(self.violations, "schema")

    def _taken(self, name: str, row: int) -> bool:
        column = self.columns.get(name)
        return column is not None and len(column) > row

    def _append(self, name: str, row: int, value: Value) -> None:
        """Row `row`'s value of `name` (not yet set), earlier rows without one missing."""
        column = self.columns.get(name)
        if column is None:
            if name in self._refused:
                return
            if len(self.columns) >= MAX_COLUMNS:
                self._refuse(name)
                return
            column = self.columns[name] = []
        gap = row - len(column)
        if gap:
            if gap > self._fill:
                self._drop(name)
                return
            self._fill -= gap
            self._padded[name] = self._padded.get(name, 0) + gap
            column.extend([None] * gap)
        column.append(value)

    def put(self, name: str, row: int, value: Value) -> None:
        """One cell; a second value for the same row is a `schema` violation."""
        if self._taken(name, row):
            count(self.violations, "schema")
            return
        self._append(name, row, value)

    def put_field(self, name: str, row: int, value: Any) -> None:
        """Row `row`'s value of field `name`: a scalar, a (nested) list, or binary (skipped)."""
        if isinstance(value, list):
            self._put_list(name, row, value)
            return
        if isinstance(value, dict) and is_binary(value):
            return  # binary inputs are not features (PROTOCOLS.md §2-3: size only)
        column = self.columns.get(name)
        if column is None or len(column) < row:
            self._append(name, row, scalar(value, self.violations))
        elif len(column) == row:
            column.append(scalar(value, self.violations))  # the common case: the next row
        else:
            count(self.violations, "schema")

    def _put_list(self, name: str, row: int, value: list[Any]) -> None:
        shape = cells(value)
        if shape is None:
            self.put(name, row, scalar(value, self.violations))  # ragged or empty: a `type`
            return
        dims, leaves = shape
        if is_binary(leaves[0]):
            return
        if len(leaves) > MAX_VECTOR_COLUMNS:
            target = norm_name(name)
            if self._taken(target, row):
                count(self.violations, "schema")
            else:
                self._append(target, row, vector_norm(leaves, self.violations))
            return
        names = index_names(name, dims)
        if names is None:
            self._refuse(name)
            return
        columns, violations = self.columns, self.violations
        for cell in names:
            column = columns.get(cell)
            if column is not None and len(column) > row:
                count(violations, "schema")  # a cell name this row already has: keep the first
                return
        for cell, leaf in zip(names, leaves, strict=True):
            column = columns.get(cell)
            if column is not None and len(column) == row:
                column.append(scalar(leaf, violations))  # the common case: the next row
            else:
                self._append(cell, row, scalar(leaf, violations))

    def repeat(self, name: str, value: Any) -> None:
        """A rank-0 (non-list) value that applies to every row, as one shared cell: its copies
        beyond the first come out of the fill budget (a scalar must not multiply into rows times
        inputs cells). Violations count once per row, as if each row had carried the value."""
        if is_binary(value) or name in self._refused:
            return
        if name in self.columns:
            count(self.violations, "schema")  # an earlier input expanded to this name
            return
        extra = max(self.rows - 1, 0)
        if len(self.columns) >= MAX_COLUMNS or extra > self._fill:
            self._refuse(name)
            return
        self._fill -= extra
        found: dict[str, int] = {}
        cell = scalar(value, found)
        for reason, n in found.items():
            count(self.violations, reason, n * self.rows)
        self.columns[name] = [cell] * self.rows

    def finish(self) -> dict[str, Column]:
        """The columns, each as long as the rows: a row that lacked a key is missing there. When
        that padding would pass the fill budget, the columns with the most missing cells go
        first (`schema`)."""
        n, padded = self.rows, self._padded
        short = [name for name, column in self.columns.items() if len(column) < n]
        need = sum(n - len(self.columns[name]) for name in short)
        if need > self._fill:
            short.sort(key=lambda name: padded.get(name, 0) + n - len(self.columns[name]), reverse=True)
            for name in short:
                need -= n - len(self.columns[name])
                self._drop(name)
                if need <= self._fill:
                    break
        missing = sum(padded.values())
        for column in self.columns.values():
            if len(column) < n:
                # A key absent from some rows is missing there (dict rows), or a short row (lists).
                missing += n - len(column)
                column.extend([None] * (n - len(column)))
        if missing:
            count(self.violations, "missing", missing)
        return self.columns


def _row_values(rows: list[Any]) -> int:
    return sum(len(row) for row in rows if isinstance(row, (dict, list)))


def rows_to_columns(
    rows: list[Any], names: Sequence[str], violations: dict[str, int], prefix: str = "f"
) -> tuple[dict[str, Column], int]:
    """Row-major records (lists or dicts per row, or bare scalars) to columns of equal length."""
    n = len(rows)
    table = Table(n, violations, fill_budget(n, _row_values(rows)))
    put_field = table.put_field
    known = tuple(names)
    widths: dict[int, tuple[str, ...]] = {}  # positional names by row width, for this call
    width: int | None = None
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            if is_binary(row):
                continue  # a single binary input per row (TF Serving's `{"b64": ...}` instance)
            for key, value in row.items():
                put_field(key if type(key) is str else str(key), i, value)
        elif isinstance(row, list):
            if width is None:
                width = len(row)
            elif len(row) != width:
                count(violations, "schema")
            if len(row) > MAX_COLUMNS:
                count(violations, "schema")  # cells beyond the column cap are not tracked
                row = row[:MAX_COLUMNS]
            positional = widths.get(len(row))
            if positional is None:
                positional = widths[len(row)] = positional_names(len(row), known, prefix)
            for name, value in zip(positional, row, strict=True):
                put_field(name, i, value)
        else:
            table.put(positional_name(0, known, prefix), i, scalar(row, violations))
    return table.finish(), n


def dataframe_rows(instances: list[Any], violations: dict[str, int]) -> list[Any]:
    """KServe's `get_predict_input` (PROTOCOLS.md §1): when the first instance is a non-empty list
    of records, every instance is a DataFrame of records and they are concatenated, so each record
    is one row. An instance that is not a list of records there counts `schema` and gives no row.
    A list of binary values is one TF Serving input, not records."""
    first = instances[0] if instances else None
    if not (isinstance(first, list) and first and isinstance(first[0], dict) and not is_binary(first[0])):
        return instances
    rows: list[Any] = []
    for instance in instances:
        if isinstance(instance, list):
            rows.extend(instance)
        else:
            count(violations, "schema")
    return rows


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
