"""Reading training data for a reference profile: CSV (stdlib `csv`) and Parquet (pyarrow).

CSV (``.tsv`` files are tab-separated): UTF-8 (a byte-order mark is skipped), a header row of
unique, non-empty names (surrounding blanks stripped), then rows with exactly as many fields.
Blank lines are skipped and not counted as data rows. Empty (or blank) cells are missing. A
column whose every non-empty cell is a number (as `float` reads it, without ``_``) becomes a
float64 array, NaN where missing (``nan`` and ``inf`` cells count as missing too, and so do
pandas' spellings of missing, ``NA``, ``N/A``, ``NULL``, ``None``..., among numbers). A column
whose every non-empty cell is ``true`` or ``false`` in any case (pandas writes ``True`` and
``False``) becomes an object array of bools, so its categories are ``true`` and ``false`` as a
JSON payload's booleans are at run time. Any other column stays text: an object array of str,
None where missing, its ``NA`` a category like any other text. `build_profile` then applies its
kind rules to the text: a column whose
non-empty cells are at least 95 % numbers, with a few cells that are not (a word), is
an error naming the column, the first such data row and its value, unless the column is named
categorical (its cells profiled as categories), numeric (those cells counted as missing) or
excluded; under 95 % it is text (categorical, or ignored as id-like or free text).

Parquet needs pyarrow (``pip install 'modeltap[parquet]'``): number columns become float64
arrays (NaN for nulls), booleans and strings object arrays (None for nulls).
"""

from __future__ import annotations

import csv
import importlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modeltap.errors import ReferenceProfileError
from modeltap.reference.builder import build_profile, parse_number
from modeltap.reference.document import MAX_TOP_K

__all__ = ["PARQUET_SUFFIXES", "profile_table", "read_table"]

PARQUET_SUFFIXES = (".parquet", ".pq")


def read_table(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """The column names and columns of a CSV or Parquet file (by suffix)."""
    source = Path(path)
    if source.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(source)
    return _read_csv(source)


def profile_table(
    path: str | Path,
    *,
    target: str | None = None,
    prediction: str | Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    model_name: str | None = None,
    top_k: int = MAX_TOP_K,
    score: str | None = None,
    positive_class: str | None = None,
) -> dict[str, Any]:
    """`read_table` then `build_profile`; the source name (and error prefix) is the file name."""
    names, columns = read_table(path)
    return build_profile(
        dict(zip(names, columns, strict=True)),
        target=target,
        prediction=prediction,
        exclude=exclude,
        categorical=categorical,
        numeric=numeric,
        model_name=model_name,
        top_k=top_k,
        source_name=Path(path).name,
        score=score,
        positive_class=positive_class,
    )


def _fail(path: Path, message: str) -> ReferenceProfileError:
    return ReferenceProfileError(f"{path}: {message}")


def _header(path: Path, raw: Sequence[str]) -> list[str]:
    names = [name.strip() for name in raw]
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        if not name:
            raise _fail(path, f"column {j + 1} of the header has an empty name")
        if name in seen:
            raise _fail(path, f"duplicate column name {name!r} (columns {seen[name] + 1} and {j + 1})")
        seen[name] = j
    return names


# How a CSV writes booleans (pandas' `to_csv`: True/False; others: true/false, TRUE/FALSE).
_BOOLEANS = {"true": True, "false": False}


def _booleans(cells: list[str | None]) -> list[bool | None] | None:
    """The cells as booleans when every present one is `true` or `false` in any case, else None:
    a CSV has no boolean type, and a boolean column must count as the categories a JSON payload's
    `true`/`false` give at run time, not as the text "True"/"False"."""
    values: list[bool | None] = []
    for cell in cells:
        if cell is None:
            values.append(None)
            continue
        value = _BOOLEANS.get(cell.strip().lower())
        if value is None:
            return None
        values.append(value)
    return values if any(value is not None for value in values) else None


# pandas' `read_csv` spellings of a missing value (its default `na_values`, R's `NA` among them):
# missing in a column of numbers, as pandas reads it; in a column of text they stay text (`NA`
# may be Namibia).
NA_SPELLINGS = frozenset(
    {"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
     "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip


def _typed(cells: list[str | None]) -> np.ndarray:
    """A float64 array when every present cell is a number or a spelling of missing (pandas'
    `NA_SPELLINGS`); an object array of booleans when every present cell is `true` or `false` (in
    any case); else an object array of text."""
    numbers = np.empty(len(cells), dtype=np.float64)
    present = 0
    for i, cell in enumerate(cells):
        if cell is None or cell in NA_SPELLINGS:
            numbers[i] = math.nan
            continue
        try:
            value = parse_number(cell)
        except ValueError:
            break
        numbers[i] = math.nan if value is None else value
        present += 1
    else:
        if present:
            return numbers
    text = np.empty(len(cells), dtype=object)
    booleans = _booleans(cells)
    text[:] = cells if booleans is None else booleans
    return text


def _read_csv(path: Path) -> tuple[list[str], list[np.ndarray]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header: list[str] | None = None
            cells: list[list[str | None]] = []
            rows = 0
            try:
                for record in reader:
                    if not record:
                        continue  # a blank line
                    if header is None:
                        header = _header(path, record)
                        cells = [[] for _ in header]
                        continue
                    rows += 1
                    if len(record) != len(header):
                        raise _fail(
                            path,
                            f"data row {rows} (line {reader.line_num}) has {len(record)} fields, "
                            f"the header has {len(header)}",
                        )
                    for column, cell in zip(cells, record, strict=True):
                        column.append(cell if cell.strip() else None)
            except csv.Error as exc:
                raise _fail(path, f"line {reader.line_num}: malformed CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise _fail(path, f"cannot read the data ({exc.strerror or exc})") from None
    if header is None:
        raise _fail(path, "empty file: a header row of column names is needed")
    if rows == 0:
        raise _fail(path, "no data rows after the header")
    return header, [_typed(column) for column in cells]


def _read_parquet(path: Path) -> tuple[list[str], list[np.ndarray]]:
    try:
        # Imported by name: pyarrow is optional and has no type information.
        pa: Any = importlib.import_module("pyarrow")
        pq: Any = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise _fail(path, "reading Parquet needs pyarrow: pip install 'modeltap[parquet]'") from None
    try:
        table = pq.read_table(path)
    except OSError as exc:  # pyarrow's ArrowInvalid and ArrowIOError derive from it or ValueError
        raise _fail(path, f"cannot read the Parquet file ({exc})") from None
    except (ValueError, pa.ArrowException) as exc:
        raise _fail(path, f"cannot read the Parquet file ({exc})") from None
    names = [str(name) for name in table.column_names]
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        if not name:
            raise _fail(path, f"column {j + 1} has an empty name")
        if name in seen:
            raise _fail(path, f"duplicate column name {name!r} (columns {seen[name] + 1} and {j + 1})")
        seen[name] = j
    if table.num_rows == 0:
        raise _fail(path, "no data rows")
    columns: list[np.ndarray] = []
    for j in range(table.num_columns):
        column = table.column(j)
        if pa.types.is_integer(column.type) and column.null_count == 0:
            columns.append(np.asarray(column.to_numpy()))  # exact integers
            continue
        values = column.to_pylist()
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            columns.append(np.array([math.nan if v is None else v for v in values], dtype=np.float64))
        else:
            columns.append(np.fromiter(values, dtype=object, count=len(values)))
    return names, columns
