"""Build a reference profile from training data: kinds, edges, counts and vocabularies.

numpy only, no I/O (reading files is `profile_io`, writing is `reference.write_profile`). The
document format is described in `modeltap.reference.document`.

Kind inference, per column (overridable with `numeric=`, `categorical=` and `exclude=`):

- numbers are ``numeric``, but numbers with at most 20 distinct values are ``categorical``;
  for an output (prediction) column only integral ones are (class labels), so scores and
  class probabilities stay numeric;
- numbers with a few stray values: a column whose non-missing values are at least 95 % numbers
  (number objects, or text that reads as a number as `parse_number` reads it: every cell of a
  CSV is text) but not all of them is numeric with bad values, and building fails with a
  `ReferenceProfileError` naming the column, the first data row that is not a number and its
  value; nothing is dropped or turned into a missing value behind the user's back. Naming the
  column in `categorical=` profiles every value as a category; naming it in `numeric=` counts
  the values that are not numbers as missing, with a `NonNumericValuesWarning` saying how many;
  `exclude=` leaves it out. Booleans among numbers count as values that are not numbers;
- strings and booleans are ``categorical`` (a column of text that is under 95 % numbers
  included; a column all of whose values are number-like strings, which only the in-memory API
  can give, is text as the caller typed it, so it stays categorical too);
- ``ignored`` (left out of the features, listed under ``"ignored"`` with the reason): id-like
  columns, i.e. strings that are all distinct (more than 20 of them), or a column named ``id`` or
  ``*_id`` whose values are all distinct; free text (mean string length > 64); dates (ISO 8601
  text, as a CSV holds them, or values of that type); values of another type (lists, ...); a
  column with no value. The target and prediction columns are never ignored.

Missing values are None, NaN, ±inf (and empty CSV cells, which `profile_io` reads as None);
text such as ``nan`` or a blank string is missing when the column is read as numbers.
Row numbers in messages are 1-based data rows (a CSV's header is not counted).

A profile of fewer than 100 rows (`MIN_ROWS`) is built and returned, with a
`SmallReferenceWarning`: drift scores against so small a reference are noisy. Every warning the
builder gives derives from `ProfileWarning` (a `UserWarning`); `modeltap profile` prints each one
as ``modeltap: warning: ...`` on stderr.
"""

from __future__ import annotations

import decimal
import math
import numbers
import re
import shlex
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NoReturn

import numpy as np

from modeltap.errors import ReferenceProfileError
from modeltap.reference.calibration import CALIBRATION_BINS, fit_calibration
from modeltap.reference.document import (
    FORMAT,
    MAX_TOP_K,
    VERSION,
    canonical_category,
    profile_id,
)

# Numbers with at most this many distinct reference values are categorical.
CATEGORICAL_MAX_DISTINCT = 20
# Strings longer than this on average are free text.
FREE_TEXT_MEAN_LENGTH = 64
# A column whose non-missing values are at least this many percent numbers is numeric.
NUMERIC_MIN_PERCENT = 95
# A profile of fewer rows than this gets a SmallReferenceWarning.
MIN_ROWS = 100
_ID_NAME = re.compile(r"(?:^|[_\-. ])id$", re.IGNORECASE)
_MAX_NAMES_SHOWN = 20
_MAX_VALUE_SHOWN = 40  # characters of a bad value quoted in a message

__all__ = [
    "CATEGORICAL_MAX_DISTINCT",
    "FREE_TEXT_MEAN_LENGTH",
    "MIN_ROWS",
    "NUMERIC_MIN_PERCENT",
    "NonNumericValuesWarning",
    "ProfileWarning",
    "SmallReferenceWarning",
    "build_profile",
    "numeric_profile_document",
    "parse_number",
]


class ProfileWarning(UserWarning):
    """Base class of the warnings `build_profile` gives; the profile is still built."""


class SmallReferenceWarning(ProfileWarning):
    """The profile has fewer than `MIN_ROWS` rows: drift scores against it are noisy."""


class NonNumericValuesWarning(ProfileWarning):
    """A column named in `numeric=` holds values that are not numbers; they count as missing."""


def parse_number(text: str) -> float | None:
    """A number written as text, None for an empty (or blank) cell; ValueError otherwise.

    Accepts what `float` accepts except digit-group underscores. ``nan`` and ``inf`` parse (and
    then count as missing, like every non-finite value).
    """
    stripped = text.strip()
    if not stripped:
        return None
    if "_" in stripped:
        raise ValueError(f"not a number: {text!r}")
    return float(stripped)


@dataclass
class _Options:
    prefix: str
    numeric: frozenset[str]
    categorical: frozenset[str]
    target: str | None
    prediction: frozenset[str]
    top_k: int


class _Ignore(Exception):
    """Control flow: the column is left out for `reason`; never escapes this module."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _error(options: _Options, message: str) -> ReferenceProfileError:
    return ReferenceProfileError(options.prefix + message)


def _is_missing_object(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return True
    if isinstance(value, decimal.Decimal) and not value.is_finite():
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def _shown(names: Sequence[str]) -> str:
    listed = ", ".join(names[:_MAX_NAMES_SHOWN])
    return listed + (f", ... ({len(names)} in all)" if len(names) > _MAX_NAMES_SHOWN else "")


def _value_shown(value: object) -> str:
    """A value quoted for a one-line message: repr (control and format characters escaped),
    at most `_MAX_VALUE_SHOWN` characters of it."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        if len(value) > _MAX_VALUE_SHOWN:
            return f"{value[:_MAX_VALUE_SHOWN]!r}... ({len(value)} characters)"
        return repr(value)
    shown = repr(value)
    return shown if len(shown) <= _MAX_VALUE_SHOWN else shown[:_MAX_VALUE_SHOWN] + "..."


def _command_line_word(name: str) -> str:
    """`name` as one shell word for a flag in a message, or its repr where it holds a control
    character (never written raw to a terminal)."""
    quoted = shlex.quote(name)
    return quoted if quoted.isprintable() else repr(name)


def _text(value: str | bytes | bytearray) -> str:
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")


def _text_number(value: str | bytes | bytearray) -> float | None:
    """The number a text value reads as (NaN for blank, ``nan`` and ``inf`` text: missing), or
    None when it is not a number."""
    try:
        number = parse_number(_text(value))
    except ValueError:
        return None
    return math.nan if number is None or not math.isfinite(number) else number


# ---- input shapes ------------------------------------------------------------------------


def _column_array(values: object) -> np.ndarray:
    """A 1-D array of the column: numpy arrays (and pandas/polars Series) as they are, other
    sequences as an object array (so mixed values are not coerced to strings)."""
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):
        values = values.to_numpy()
    if isinstance(values, np.ndarray):
        return values
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(type(values).__name__)
    items = list(values)
    # fromiter keeps each item whole (a list of lists stays 1-D) where np.array would nest.
    return np.fromiter(items, dtype=object, count=len(items))


def _columns(data: Any, names: Sequence[str] | None, prefix: str) -> tuple[list[str], list[np.ndarray]]:
    def fail(message: str) -> ReferenceProfileError:
        return ReferenceProfileError(prefix + message)

    if isinstance(data, np.ndarray):
        if data.ndim != 2:
            raise fail(f"a 2-D array (rows x columns) is needed, got {data.ndim} dimension(s)")
        width = data.shape[1]
        if isinstance(names, str):
            raise fail("names must be a sequence of column names, not one string")
        column_names = [f"f{j}" for j in range(width)] if names is None else [str(n) for n in names]
        if len(column_names) != width:
            raise fail(f"{len(column_names)} names for {width} columns")
        columns = [data[:, j] for j in range(width)]
    elif isinstance(data, Mapping) or hasattr(data, "columns"):
        if names is not None:
            raise fail("names= is only for arrays; a mapping or DataFrame names its own columns")
        keys = list(data.keys()) if isinstance(data, Mapping) else list(data.columns)
        column_names = [str(k) for k in keys]
        _check_names(column_names, fail)
        columns = []
        for key, name in zip(keys, column_names, strict=True):
            try:
                column = _column_array(data[key])
            except TypeError as exc:
                raise fail(f"column {name!r}: a sequence of values is needed, got {exc}") from None
            if column.ndim != 1:
                raise fail(f"column {name!r}: a 1-D sequence is needed, got {column.ndim} dimension(s)")
            columns.append(column)
    else:
        raise fail(
            "data must be a 2-D numpy array, a mapping of column name to values or a DataFrame, "
            f"got {type(data).__name__}"
        )
    _check_names(column_names, fail)
    if not columns:
        raise fail("no columns")
    rows = len(columns[0])
    for name, column in zip(column_names, columns, strict=True):
        if len(column) != rows:
            raise fail(f"column {name!r} has {len(column)} values, column {column_names[0]!r} has {rows}")
    if rows == 0:
        raise fail("no data rows")
    return column_names, columns


def _check_names(column_names: Sequence[str], fail: Callable[[str], ReferenceProfileError]) -> None:
    for j, name in enumerate(column_names):
        if not name:
            raise fail(f"column {j + 1} has an empty name")
    duplicated = [n for n, c in Counter(column_names).items() if c > 1]
    if duplicated:
        raise fail(f"duplicate column name {duplicated[0]!r}")


# ---- per-column analysis -----------------------------------------------------------------


@dataclass
class _Values:
    """A column sorted out: numbers (float64, NaN = missing) or categories (None = missing)."""

    numbers: np.ndarray | None  # float64, when every present value is a number
    exact: np.ndarray | None  # the numbers before the float conversion (integers stay exact)
    categories: list[str | None] | None  # canonical categories otherwise
    has_strings: bool


def _sort_values(
    name: str, column: np.ndarray, options: _Options, forced_numeric: bool, forced_categorical: bool
) -> _Values:
    kind = column.dtype.kind
    if kind in "iuf":
        return _Values(column.astype(np.float64, copy=False), column, None, False)
    if kind == "b":
        if forced_numeric:
            return _Values(column.astype(np.float64), None, None, False)
        return _Values(None, None, ["true" if v else "false" for v in column.tolist()], False)
    if kind not in "OUS":
        raise _Ignore(f"unsupported type {column.dtype}")
    items = column.tolist()
    has_number = has_text = has_bool = False
    numbers_seen = 0  # present values that are numbers or text that reads as one
    strays = 0  # present values that are not numbers (text that does not read as one, booleans)
    first_stray = -1
    # Text is read as numbers only to tell a column of numbers with stray values; not for a column
    # whose kind is given, and no more once the column cannot reach NUMERIC_MIN_PERCENT (present
    # values are at most len(items)), so a text column costs few failed parses.
    parse_text = not (forced_numeric or forced_categorical)
    for i, value in enumerate(items):
        if _is_missing_object(value):
            continue
        if isinstance(value, (bool, np.bool_)):
            has_bool = True
        elif isinstance(value, (numbers.Real, decimal.Decimal)):
            has_number = True
            numbers_seen += 1
            continue
        elif isinstance(value, (str, bytes, bytearray)):
            has_text = True
            if not parse_text:
                continue
            number = _text_number(value)
            if number is not None:
                numbers_seen += not math.isnan(number)  # blank, nan and inf text are missing
                continue
        else:
            raise _Ignore(f"unsupported value type {type(value).__name__} (data row {i + 1})")
        strays += 1  # a boolean, or text that is not a number
        if first_stray < 0:
            first_stray = i
        parse_text = parse_text and strays * 100 <= (100 - NUMERIC_MIN_PERCENT) * len(items)
    present = numbers_seen + strays
    if parse_text and strays > 0 and numbers_seen * 100 >= NUMERIC_MIN_PERCENT * present:
        q = _command_line_word(name)
        raise _error(
            options,
            f"column {name!r} is numeric ({numbers_seen} of its {present} non-missing values are "
            f"numbers), but data row {first_stray + 1} holds {_value_shown(items[first_stray])}, "
            f"which is not a number; clean the data, or profile the column as categorical "
            f"(--categorical {q}), as numeric with the values that are not numbers counted as "
            f"missing (--numeric {q}), or leave it out (--exclude {q})",
        )
    if forced_numeric or (has_number and not has_text and not has_bool):
        return _Values(_as_numbers(name, items, options), None, None, False)
    return _Values(None, None, [canonical_category(v) for v in items], has_text)


def _as_numbers(name: str, items: list[Any], options: _Options) -> np.ndarray:
    """The column as float64 (NaN = missing); values that are not numbers count as missing,
    with a NonNumericValuesWarning (only a column named in `numeric=` gets here with them)."""
    out = np.empty(len(items), dtype=np.float64)
    strays = 0
    first_stray = -1
    for i, value in enumerate(items):
        if _is_missing_object(value):
            out[i] = math.nan
        elif isinstance(value, (str, bytes, bytearray)):
            number = _text_number(value)
            if number is None:
                strays += 1
                first_stray = i if first_stray < 0 else first_stray
                out[i] = math.nan
            else:
                out[i] = number
        else:
            try:
                out[i] = float(value)
            except (ValueError, OverflowError, decimal.InvalidOperation):
                raise _error(
                    options,
                    f"column {name!r} is numeric, but data row {i + 1} holds "
                    f"{_value_shown(value)}, which does not fit a float",
                ) from None
    if strays:
        how_many = "1 value that is not a number" if strays == 1 else f"{strays} values that are not numbers"
        warnings.warn(
            NonNumericValuesWarning(
                f"{options.prefix}column {name!r} is profiled as numeric: {how_many}"
                f" counted as missing (the first: data row {first_stray + 1}, "
                f"{_value_shown(items[first_stray])})"
            ),
            stacklevel=5,
        )
    return out


def _numeric_feature(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    low = float(finite.min()) + 0.0  # + 0.0 turns -0.0 into 0.0
    high = float(finite.max()) + 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(finite.mean())
        std = float(finite.std())
        if not (math.isfinite(mean) and math.isfinite(std)):  # sums of huge values overflow
            scale = max(abs(low), abs(high))
            mean = float((finite / scale).mean()) * scale
            std = float((finite / scale).std()) * scale
        if math.isfinite(high - low):
            inner = np.percentile(finite, range(1, 100), method="linear")
        else:  # the interpolation's differences would overflow; halving is exact for normal numbers
            inner = np.percentile(finite * 0.5, range(1, 100), method="linear") * 2.0
    inner = np.clip(inner, low, high) + 0.0
    lo = float(np.nextafter(low, -math.inf))
    fine = np.concatenate(([lo], np.unique(np.concatenate((inner, [high])))))
    psi = np.concatenate(([lo], np.unique(np.concatenate((inner[9::10], [high])))))
    counts = np.bincount(np.searchsorted(fine, finite, side="left"), minlength=len(fine) + 1)
    return {
        "mean": mean,
        "std": std,
        "min": low,
        "max": high,
        "fine_edges": [float(e) for e in fine],
        "psi_edges": [float(e) for e in psi],
        "counts": [int(c) for c in counts],
    }


def _categorical_feature(counter: Counter[str], top_k: int) -> dict[str, Any]:
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    kept = ranked[:top_k]
    other = sum(count for _, count in ranked[top_k:])
    return {
        "vocabulary": [value for value, _ in kept],
        "counts": [count for _, count in kept] + [other],
    }


def _all_missing(name: str, named: bool, what: str, options: _Options) -> NoReturn:
    """An input column with no value is left out (listed under `ignored`, as an id is); a column
    named for a role or a kind cannot be, so that is an error."""
    if not named:
        raise _Ignore(f"all missing: {what}")
    raise _error(
        options,
        f"column {name!r} is all missing ({what}); leave it out (--exclude {_command_line_word(name)})",
    )


def _profile_column(
    name: str, role: str, column: np.ndarray, options: _Options
) -> tuple[str, dict[str, Any]]:
    """(kind, the kind-specific fields plus n and missing); raises _Ignore for ignored columns."""
    forced_numeric = name in options.numeric
    forced_categorical = name in options.categorical
    named = forced_numeric or forced_categorical or role != "input"
    try:
        values = _sort_values(name, column, options, forced_numeric, forced_categorical)
    except _Ignore as ignored:
        if named:
            raise _error(options, f"column {name!r}: {ignored.reason}") from None
        raise
    rows = len(column)
    id_name = bool(_ID_NAME.search(name))
    if values.numbers is not None:
        finite_mask = np.isfinite(values.numbers)
        n = int(np.count_nonzero(finite_mask))
        if n == 0:
            _all_missing(name, named, f"no finite value in {rows} rows", options)
        if forced_categorical or not forced_numeric:
            exact = values.exact if values.exact is not None else values.numbers
            distinct, tallies = np.unique(exact[finite_mask], return_counts=True)
            if not named and id_name and n >= 2 and len(distinct) == n:
                raise _Ignore(f"id-like: named like an id and all {n} values are distinct")
            few = len(distinct) <= CATEGORICAL_MAX_DISTINCT
            if role == "output":
                few = few and bool(np.all(np.mod(distinct.astype(np.float64), 1.0) == 0.0))
            if forced_categorical or few:
                counter: Counter[str] = Counter()
                for value, tally in zip(distinct, tallies.tolist(), strict=True):  # numpy scalars
                    key = canonical_category(value)
                    if key is not None:
                        counter[key] += int(tally)
                fields = _categorical_feature(counter, options.top_k)
                return "categorical", {"n": n, "missing": rows - n, **fields}
        return "numeric", {"n": n, "missing": rows - n, **_numeric_feature(values.numbers)}
    assert values.categories is not None
    present = [c for c in values.categories if c is not None]
    n = len(present)
    if n == 0:
        _all_missing(name, named, f"no value in {rows} rows", options)
    counter = Counter(present)
    if not named:
        if values.has_strings:
            mean_length = sum(len(c) for c in present) / n
            if mean_length > FREE_TEXT_MEAN_LENGTH:
                raise _Ignore(f"free text: mean length {mean_length:.0f} > {FREE_TEXT_MEAN_LENGTH}")
            if len(counter) == n and n > CATEGORICAL_MAX_DISTINCT:
                raise _Ignore(f"id-like: all {n} values are distinct strings")
        if id_name and n >= 2 and len(counter) == n:
            raise _Ignore(f"id-like: named like an id and all {n} values are distinct")
        if values.has_strings and _all_dates(present):
            # A CSV's dates are text: as categories every later day would be `__other__`.
            raise _Ignore("dates: ISO dates or timestamps (a point in time is no input distribution)")
    return "categorical", {"n": n, "missing": rows - n, **_categorical_feature(counter, options.top_k)}


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?")
DATE_CHECK_LIMIT = 10_000  # values looked at: a column whose first ten thousand are dates is one


def _all_dates(present: list[str]) -> bool:
    """Whether every value (of the first DATE_CHECK_LIMIT) is an ISO 8601 date or timestamp."""
    return all(_ISO_DATE.fullmatch(value.strip()) is not None for value in present[:DATE_CHECK_LIMIT])


# ---- the public builder ------------------------------------------------------------------


def _name_list(what: str, value: str | Sequence[str] | None, prefix: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise ReferenceProfileError(f"{prefix}{what}: column names are strings, got {item!r}")
    return items


def build_profile(
    data: Any,
    *,
    names: Sequence[str] | None = None,
    target: str | None = None,
    prediction: str | Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    model_name: str | None = None,
    top_k: int = MAX_TOP_K,
    source_name: str = "array",
    score: str | None = None,
    positive_class: str | None = None,
) -> dict[str, Any]:
    """Profile training data; returns the reference document (see `modeltap.reference.document`).

    `data` is a 2-D numpy array (column names from `names`, else ``f0, f1, ...``), a mapping of
    column name to a 1-D sequence or array, or a DataFrame (anything with ``.columns``).
    `target` is the label column (role ``label``), `prediction` the model output column(s)
    (role ``output``; one per class for class probabilities); `exclude`, `categorical` and
    `numeric` override the inferred kinds (a column in `numeric` counts its values that are not
    numbers as missing). `score` is a binary classifier's probability of the positive class
    (profiled as an output too): with `target` and one `prediction`, the profile then stores the
    calibration that estimates performance before labels arrive; `positive_class` names the
    class it is the probability of (inferred for labels 0/1 and false/true). Every problem raises
    `ReferenceProfileError` naming the column (and the 1-based data row where there is one), a
    column of numbers with a few stray values included; a profile of fewer than `MIN_ROWS` rows
    is returned with a `SmallReferenceWarning`.

    Example::

        >>> import numpy as np
        >>> doc = build_profile({"age": np.arange(100.0), "plan": ["pro", "basic"] * 50})
        >>> [(f["name"], f["kind"]) for f in doc["features"]]
        [('age', 'numeric'), ('plan', 'categorical')]
    """
    prefix = "" if source_name == "array" else f"{source_name}: "
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise ReferenceProfileError(f"{prefix}top_k must be an integer within 1..{MAX_TOP_K}, got {top_k!r}")
    if target is not None and not isinstance(target, str):
        raise ReferenceProfileError(f"{prefix}target: a column name is a string, got {target!r}")
    column_names, columns = _columns(data, names, prefix)
    known = set(column_names)
    if score is not None:
        if target is None or prediction is None:
            raise ReferenceProfileError(f"{prefix}score needs target and prediction columns too")
        if score not in known:
            raise ReferenceProfileError(f"{prefix}score column {score!r} is not in the data")
        prediction = [*_name_list("prediction", prediction, prefix), score]
    lists = {
        "target": _name_list("target", target, prefix),
        "prediction": _name_list("prediction", prediction, prefix),
        "exclude": _name_list("exclude", exclude, prefix),
        "categorical": _name_list("categorical", categorical, prefix),
        "numeric": _name_list("numeric", numeric, prefix),
    }
    for what, listed in lists.items():
        for name in listed:
            if name not in known:
                raise ReferenceProfileError(
                    f"{prefix}{what} column {name!r} is not in the data (columns: {_shown(column_names)})"
                )
    conflicts = (
        ("categorical", "numeric"),
        ("target", "prediction"),
        ("exclude", "target"),
        ("exclude", "prediction"),
        ("exclude", "categorical"),
        ("exclude", "numeric"),
    )
    for first, second in conflicts:
        both = [n for n in lists[first] if n in lists[second]]
        if both:
            raise ReferenceProfileError(f"{prefix}column {both[0]!r} is given as both {first} and {second}")
    options = _Options(
        prefix=prefix,
        numeric=frozenset(lists["numeric"]),
        categorical=frozenset(lists["categorical"]),
        target=target,
        prediction=frozenset(lists["prediction"]),
        top_k=top_k,
    )
    excluded = set(lists["exclude"])
    rows = len(columns[0])
    features: list[dict[str, Any]] = []
    ignored: list[dict[str, str]] = []
    for name, column in zip(column_names, columns, strict=True):
        if name in excluded:
            ignored.append({"name": name, "reason": "excluded"})
            continue
        role = "label" if name == target else "output" if name in options.prediction else "input"
        try:
            kind, fields = _profile_column(name, role, column, options)
        except _Ignore as reason:
            ignored.append({"name": name, "reason": reason.reason})
            continue
        missing = int(fields.pop("missing"))
        features.append(
            {
                "name": name,
                "role": role,
                "kind": kind,
                "n": fields.pop("n"),
                "missing": missing,
                "missing_rate": missing / rows,
                **fields,
            }
        )
    if not features:
        shown = ", ".join(f"{i['name']} ({i['reason']})" for i in ignored[:_MAX_NAMES_SHOWN])
        raise ReferenceProfileError(f"{prefix}no column left to profile; ignored: {shown}")
    document: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "id": profile_id(features),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"rows": rows, "name": source_name},
    }
    if model_name:
        document["model"] = {"name": model_name}
    document["features"] = features
    document["ignored"] = ignored
    labelled = {f["name"]: f for f in features if f["role"] in ("label", "output")}
    predictions = [n for n in column_names if n in options.prediction and n in labelled and n != score]
    if target is not None and target in labelled and len(predictions) == 1:
        performance = baseline_performance(
            columns[column_names.index(target)],
            columns[column_names.index(predictions[0])],
            labelled[target]["kind"],
        )
        if performance is not None and score is not None:
            performance["score"] = score_calibration(
                columns[column_names.index(target)],
                columns[column_names.index(score)],
                score,
                positive_class,
                labelled[target],
                prefix,
            )
        if performance is not None:
            document["performance"] = performance
    if rows < MIN_ROWS:
        warnings.warn(
            SmallReferenceWarning(
                f"{prefix}the profile has only {rows} row{'s' if rows > 1 else ''}: drift scores "
                f"against a reference of fewer than {MIN_ROWS} rows are noisy (a few thousand "
                "rows is better)"
            ),
            stacklevel=2,
        )
    return document


def baseline_performance(
    labels: Iterable[Any], predictions: Iterable[Any], kind: str
) -> dict[str, Any] | None:
    """The model's performance on the profiled (validation) rows that have both a label and a
    prediction: the baseline realised performance is judged against. Classification: the
    accuracy, as hits of how many labels; regression: MAE, RMSE and R². None without such rows."""
    if kind == "categorical":
        pairs = [
            (canonical_category(y), canonical_category(p)) for y, p in zip(labels, predictions, strict=True)
        ]
        kept = [(y, p) for y, p in pairs if y is not None and p is not None]
        if not kept:
            return None
        hits = sum(1 for y, p in kept if y == p)
        return {"kind": "classification", "labels": len(kept), "hits": hits, "accuracy": hits / len(kept)}
    y = np.array([_finite(v) for v in labels], dtype=np.float64)
    p = np.array([_finite(v) for v in predictions], dtype=np.float64)
    keep = np.isfinite(y) & np.isfinite(p)
    if not keep.any():
        return None
    y, p = y[keep], p[keep]
    error = y - p
    spread = float(np.sum((y - y.mean()) ** 2))
    return {
        "kind": "regression",
        "labels": int(y.size),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error * error))),
        "r2": 1.0 - float(np.sum(error * error)) / spread if spread > 0 else None,
    }


_POSITIVE_OF_PAIR = {
    frozenset({"0", "1"}): "1",
    frozenset({"false", "true"}): "true",
    frozenset({"no", "yes"}): "yes",
}


def score_calibration(
    labels: Iterable[Any],
    scores: Iterable[Any],
    column: str,
    positive_class: str | None,
    label_feature: dict[str, Any],
    prefix: str,
) -> dict[str, Any]:
    """The score column, its positive class and the calibration fitted on the labelled rows."""
    classes = [str(c) for c in label_feature.get("vocabulary", [])]
    if label_feature["kind"] != "categorical" or len(classes) != 2:
        raise ReferenceProfileError(f"{prefix}score needs a binary (two-class) target, got {classes}")
    positive = positive_class
    if positive is None:
        # Only a pair that says which is positive: with 1 and 2, say, 1 may well be the negative.
        positive = _POSITIVE_OF_PAIR.get(frozenset(classes))
        if positive is None:
            raise ReferenceProfileError(
                f"{prefix}which class is the score the probability of? give positive_class "
                f"(--positive-class), one of {classes}"
            )
    if positive not in classes:
        raise ReferenceProfileError(f"{prefix}positive class {positive!r} is not one of {classes}")
    pairs = [(canonical_category(y), _finite(p)) for y, p in zip(labels, scores, strict=True)]
    kept = [(y == positive, p) for y, p in pairs if y is not None and math.isfinite(p) and 0.0 <= p <= 1.0]
    if len(kept) < CALIBRATION_BINS:
        raise ReferenceProfileError(f"{prefix}score: too few labelled rows with a score in [0, 1]")
    calibration = fit_calibration(np.array([p for _, p in kept]), np.array([int(y) for y, _ in kept]))
    fitted: dict[str, Any] = {"edges": list(calibration.edges), "rates": list(calibration.rates)}
    if calibration.centers:  # none when a bin is empty (a score of few distinct values): one rate per bin
        fitted["centers"] = list(calibration.centers)
    return {"column": column, "positive_class": positive, "calibration": fitted}


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def numeric_profile_document(
    names: Sequence[str], data: np.ndarray, model_name: str | None = None
) -> dict[str, object]:
    """A reference document for numeric input columns (rows x features), every column numeric.

    Kept for callers that profile a plain float matrix (the demo); it is `build_profile` with
    every column forced numeric.
    """
    return build_profile(data, names=names, numeric=tuple(names), model_name=model_name)
