"""Reference profiles: what the model saw in training, as a versioned JSON document.

`modeltap profile DATA -o reference.json` (or `modeltap.reference.builder.build_profile`)
writes the document; `load_reference` reads and validates it. This module and
`profile_io` are the only file-reading parts of `modeltap.stats`.

Format (``"format": "modeltap.reference"``, ``"version": 1``)::

    {"format": "modeltap.reference", "version": 1,
     "id": "sha256:<64 hex>",
     "created": "2025-01-31T12:00:00Z",                 # ISO-8601, UTC
     "source": {"rows": 5000, "name": "train.csv"},     # the file name, or "array"
     "model": {"name": "churn"},                        # optional
     "features": [ ... one object per profiled column, in the source's column order ... ],
     "ignored": [{"name": "customer_id", "reason": "id-like: ..."}]}   # columns left out

Every feature has ``name``, ``role`` (``input``, ``output`` for predictions, ``label`` for the
target), ``kind`` (``numeric`` or ``categorical``), ``n`` (the count of present values),
``missing`` (None, NaN, ±inf and empty CSV cells) and ``missing_rate`` = missing / rows.

A numeric feature also has ``mean``, ``std`` (population, ddof=0), ``min``, ``max`` of the
finite values and:

- ``fine_edges`` = ``[lo, p1, ..., p99, max]`` deduplicated, where ``p1..p99`` are
  ``np.percentile(finite, range(1, 100), method="linear")`` and ``lo = np.nextafter(min, -inf)``,
  so the minimum itself is in range. A constant column has ``[lo, max]``. ``-0.0`` is written
  as ``0.0``. (When ``max - min`` overflows a float, the percentiles are computed on halved
  values and doubled, which is exact for normal numbers.)
- ``psi_edges`` = ``[lo, p10, p20, ..., p90, max]`` deduplicated: a subset of ``fine_edges``,
  so each PSI bucket is a union of fine buckets (see `ReferenceFeature.psi_index`).
- ``counts``: ``len(fine_edges) + 1`` reference counts. The bucket of x is
  ``np.searchsorted(fine_edges, x, side="left")``: ``(-inf, lo], (lo, p1], ..., (p99, max],
  (max, +inf)``, upper-inclusive like OpenTelemetry explicit-bucket histograms (whose bounds are
  ``fine_edges``). The first and last buckets are the out-of-range ones (0 in the reference).
  The counts are counted with that rule, not assumed uniform; they add up to ``n``.

A categorical feature has ``vocabulary`` (the top-K canonical values by count, K <= 50, ties
broken by value) and ``counts``: one per vocabulary entry, then the ``__other__`` count (they add
up to ``n``; missing values are in ``missing``). Values are canonicalised by
`canonical_category`, the same function the run time uses.

``id`` is ``"sha256:"`` + the sha256 of the canonical JSON (orjson, sorted keys, no whitespace)
of the feature list restricted to name, role, kind, fine_edges, psi_edges, counts and
vocabulary (`profile_id`): equal data gives equal ids whatever the creation time, and every
exported series carries it so series built on different references never mix.

Older minimal documents (name, role, kind, min, max, mean, std only) still load; their features
have empty edges, so no drift scores are computed for them.
"""

from __future__ import annotations

import decimal
import hashlib
import itertools
import math
import numbers
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from modeltap.errors import ReferenceProfileError

FORMAT = "modeltap.reference"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
ROLES = ("input", "output", "label")
KINDS = ("numeric", "categorical")
OTHER = "__other__"
MAX_TOP_K = 50
# The keys a profile id covers, per feature: all that a score is computed from (the missing
# count is a categorical feature's `__missing__` share and the missing-rate test's reference).
ID_KEYS = ("name", "role", "kind", "fine_edges", "psi_edges", "counts", "vocabulary", "n", "missing")


def canonical_category(value: object) -> str | None:
    """The category a value counts as, or None for a missing value.

    Strings as-is; booleans ``"true"``/``"false"``; integral numbers as decimal integers (so
    ``1``, ``1.0`` and ``"1"`` are one category); other finite floats via ``repr`` (float32 values
    by their own shortest text first, decimals via float); None, NaN and ±inf are missing
    (pandas' NA and NaT too). Bytes are decoded as UTF-8.

    >>> [canonical_category(v) for v in (1, 1.0, "1", True, 0.5, None, float("nan"))]
    ['1', '1', '1', 'true', '0.5', None, None]
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, decimal.Decimal) and not value.is_finite():
        return None
    if isinstance(value, (numbers.Real, decimal.Decimal, np.floating)):
        if isinstance(value, np.floating) and value.dtype.itemsize < 8:
            # A float32 (or float16) means the shortest text of its own precision: np.float32(0.1)
            # is "0.1", as the same number arrives in a JSON payload, not "0.10000000149011612".
            number = float(str(value))
        else:
            number = float(value)
        if not math.isfinite(number):
            return None
        if number.is_integer():
            return str(int(number))
        return repr(number)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing markers, duck-typed
        return None
    return str(value)


def profile_id(features: Sequence[Mapping[str, Any]]) -> str:
    """``sha256:<64 hex>`` of the canonical JSON of the features' edges, counts and vocabularies."""
    restricted = [{key: feature[key] for key in ID_KEYS if key in feature} for feature in features]
    canonical = orjson.dumps(restricted, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class ReferenceFeature:
    name: str
    role: str
    kind: str
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    n: int | None = None
    missing: int | None = None
    missing_rate: float | None = None
    fine_edges: tuple[float, ...] = ()
    psi_edges: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    vocabulary: tuple[str, ...] = ()

    @property
    def has_distribution(self) -> bool:
        """True when drift scores can be computed (edges or a vocabulary with counts)."""
        if self.kind == "numeric":
            return bool(self.fine_edges) and bool(self.counts)
        return bool(self.counts)

    @property
    def psi_index(self) -> tuple[int, ...]:
        """For each fine bucket, the PSI bucket it belongs to (``len(counts)`` entries).

        Fine bucket i is ``(fine_edges[i-1], fine_edges[i]]``; PSI buckets are the same rule over
        ``psi_edges``, which are a subset of the fine edges, so the map is exact.
        """
        if not self.fine_edges:
            return ()
        fine = np.asarray(self.fine_edges)
        psi = np.asarray(self.psi_edges)
        inner = np.searchsorted(psi, fine, side="left")  # fine buckets 0 .. len(fine)-1
        return (*(int(i) for i in inner), len(self.psi_edges))


@dataclass(frozen=True)
class ReferencePerformance:
    """The model's performance on the profiled rows (profile a validation set, not the training
    set: a model scores better on the rows it was fitted to). Classification: `labels` rows,
    `hits` right; regression: `mae`, `rmse`, `r2`."""

    kind: str  # classification | regression
    labels: int
    hits: int | None = None
    mae: float | None = None
    rmse: float | None = None
    r2: float | None = None
    # A binary classifier's score: its column, the class it is the probability of, and the
    # calibration (inner bin edges, positive rates) that estimates performance before labels.
    score_column: str | None = None
    positive_class: str | None = None
    calibration_edges: tuple[float, ...] = ()
    calibration_rates: tuple[float, ...] = ()
    calibration_centers: tuple[float, ...] = ()


@dataclass(frozen=True)
class ReferenceProfile:
    id: str
    features: tuple[ReferenceFeature, ...]
    model_name: str | None = None
    version: int = VERSION
    created: str | None = None
    source_rows: int | None = None
    source_name: str | None = None
    ignored: tuple[str, ...] = ()
    performance: ReferencePerformance | None = None

    def model_names(self) -> tuple[str, ...]:
        """The model names the profile vouches for (its `model.name`, if any)."""
        return (self.model_name,) if self.model_name else ()

    @property
    def input_names(self) -> tuple[str, ...]:
        """Positional feature names: the reference's input columns in order."""
        return tuple(f.name for f in self.features if f.role == "input")

    def feature(self, role: str, name: str) -> ReferenceFeature | None:
        for feature in self.features:
            if feature.role == role and feature.name == name:
                return feature
        return None


def _fail(path: str, message: str) -> ReferenceProfileError:
    return ReferenceProfileError(f"{path}: {message}")


def _number(path: str, where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, f"{where} must be a finite number, got {value!r}")
    return float(value)


def _count(path: str, where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(path, f"{where} must be a non-negative integer, got {value!r}")
    return value


def _list(path: str, where: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, f"{where} must be a list, got {type(value).__name__}")
    return value


def _edges(path: str, where: str, value: Any, least: int = 2) -> tuple[float, ...]:
    """Strictly increasing finite numbers, none or at least `least` of them (a feature's edges
    hold its lowest value and its max; a calibration's are inner bounds: one makes two bins)."""
    edges = []
    for i, raw in enumerate(_list(path, where, value)):
        number = _number(path, f"{where}[{i}]", raw)
        if number is None:
            raise _fail(path, f"{where}[{i}] must be a finite number, got None")
        edges.append(number)
    if edges and len(edges) < least:
        raise _fail(path, f"{where} needs at least {least} edges (lo and max), got {len(edges)}")
    for i in range(1, len(edges)):
        if not edges[i - 1] < edges[i]:
            raise _fail(path, f"{where} must be strictly increasing, but [{i - 1}] >= [{i}]")
    return tuple(edges)


def _counts(path: str, where: str, value: Any) -> tuple[int, ...]:
    counts = []
    for i, raw in enumerate(_list(path, where, value)):
        count = _count(path, f"{where}[{i}]", raw)
        if count is None:
            raise _fail(path, f"{where}[{i}] must be a non-negative integer, got None")
        counts.append(count)
    return tuple(counts)


def _parse_feature(path: str, where: str, raw: dict[str, Any]) -> ReferenceFeature:
    name = raw["name"]
    at = f"{where} ({name})"
    role = raw.get("role", "input")
    kind = raw.get("kind")
    if role not in ROLES:
        raise _fail(path, f"{at}: role must be one of {ROLES}, got {role!r}")
    if kind not in KINDS:
        raise _fail(path, f"{at}: kind must be one of {KINDS}, got {kind!r}")
    n = _count(path, f"{at}.n", raw.get("n"))
    missing = _count(path, f"{at}.missing", raw.get("missing"))
    missing_rate = _number(path, f"{at}.missing_rate", raw.get("missing_rate"))
    if missing_rate is not None and not 0.0 <= missing_rate <= 1.0:
        raise _fail(path, f"{at}.missing_rate must be within [0, 1], got {missing_rate!r}")
    low = _number(path, f"{at}.min", raw.get("min"))
    high = _number(path, f"{at}.max", raw.get("max"))
    if low is not None and high is not None and low > high:
        raise _fail(path, f"{at}: min {low!r} is greater than max {high!r}")
    counts = _counts(path, f"{at}.counts", raw.get("counts"))
    fine_edges = _edges(path, f"{at}.fine_edges", raw.get("fine_edges"))
    psi_edges = _edges(path, f"{at}.psi_edges", raw.get("psi_edges"))
    raw_vocabulary = _list(path, f"{at}.vocabulary", raw.get("vocabulary"))
    if kind == "numeric":
        if raw_vocabulary:
            raise _fail(path, f"{at}: a numeric feature has no vocabulary")
        if bool(fine_edges) != bool(psi_edges):
            raise _fail(path, f"{at}: fine_edges and psi_edges go together (one is missing)")
        if counts and not fine_edges:
            raise _fail(path, f"{at}: counts need fine_edges")
        if fine_edges:
            if len(counts) != len(fine_edges) + 1:
                raise _fail(
                    path,
                    f"{at}.counts must have len(fine_edges) + 1 = {len(fine_edges) + 1} entries, "
                    f"got {len(counts)}",
                )
            if not set(psi_edges) <= set(fine_edges):
                raise _fail(path, f"{at}.psi_edges must be a subset of fine_edges")
            if psi_edges[0] != fine_edges[0] or psi_edges[-1] != fine_edges[-1]:
                raise _fail(path, f"{at}.psi_edges must start and end with the fine_edges' ends")
            if high is not None and fine_edges[-1] != high:
                raise _fail(path, f"{at}: the last fine edge {fine_edges[-1]!r} must equal max {high!r}")
            if low is not None and not fine_edges[0] < low:
                raise _fail(path, f"{at}: the first fine edge {fine_edges[0]!r} must be below min {low!r}")
    else:
        if fine_edges or psi_edges:
            raise _fail(path, f"{at}: a categorical feature has no fine_edges or psi_edges")
        vocabulary = []
        for i, v in enumerate(raw_vocabulary):
            if not isinstance(v, str):
                raise _fail(path, f"{at}.vocabulary[{i}] must be a string, got {v!r}")
            vocabulary.append(v)
        if len(set(vocabulary)) != len(vocabulary):
            raise _fail(path, f"{at}.vocabulary has duplicate entries")
        if len(vocabulary) > MAX_TOP_K:
            raise _fail(path, f"{at}.vocabulary has {len(vocabulary)} entries, at most {MAX_TOP_K} allowed")
        if counts and len(counts) != len(vocabulary) + 1:
            raise _fail(
                path,
                f"{at}.counts must have len(vocabulary) + 1 = {len(vocabulary) + 1} entries "
                f"(the last is {OTHER}), got {len(counts)}",
            )
        if vocabulary and not counts:
            raise _fail(path, f"{at}: a vocabulary needs counts")
    if n is not None and counts and sum(counts) != n:
        raise _fail(path, f"{at}: counts add up to {sum(counts)}, but n is {n}")
    return ReferenceFeature(
        name=name,
        role=role,
        kind=kind,
        min=low,
        max=high,
        mean=_number(path, f"{at}.mean", raw.get("mean")),
        std=_number(path, f"{at}.std", raw.get("std")),
        n=n,
        missing=missing,
        missing_rate=missing_rate,
        fine_edges=fine_edges,
        psi_edges=psi_edges,
        counts=counts,
        vocabulary=tuple(raw_vocabulary) if kind == "categorical" else (),
    )


def parse_reference(document: Any, path: str = "<reference>") -> ReferenceProfile:
    """Validate a decoded reference document; errors name `path` and the field."""
    if not isinstance(document, dict):
        raise _fail(path, "a reference profile is a JSON object")
    if document.get("format") != FORMAT:
        raise _fail(path, f'"format" must be {FORMAT!r}, got {document.get("format")!r}')
    version = document.get("version")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise _fail(path, f'"version" {version!r} is not one of {SUPPORTED_VERSIONS}')
    ref_id = document.get("id")
    if not isinstance(ref_id, str) or not ref_id:
        raise _fail(path, '"id" must be a non-empty string')
    created = document.get("created")
    if created is not None and not isinstance(created, str):
        raise _fail(path, f'"created" must be an ISO-8601 string, got {created!r}')
    source = document.get("source")
    source_rows: int | None = None
    source_name: str | None = None
    if source is not None:
        if not isinstance(source, dict):
            raise _fail(path, '"source" must be an object')
        source_rows = _count(path, "source.rows", source.get("rows"))
        name = source.get("name")
        if name is not None and not isinstance(name, str):
            raise _fail(path, f"source.name must be a string, got {name!r}")
        source_name = name
    raw_features = document.get("features")
    if not isinstance(raw_features, list) or not raw_features:
        raise _fail(path, '"features" must be a non-empty list')
    features = []
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(raw_features):
        where = f"features[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise _fail(path, f"{where} needs a non-empty string 'name'")
        feature = _parse_feature(path, where, raw)
        if (feature.role, feature.name) in seen:
            raise _fail(path, f"{where}: duplicate {feature.role} feature {feature.name!r}")
        seen.add((feature.role, feature.name))
        features.append(feature)
    ignored = []
    for i, raw in enumerate(_list(path, '"ignored"', document.get("ignored"))):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _fail(path, f"ignored[{i}] needs a string 'name'")
        ignored.append(raw["name"])
    model = document.get("model")
    model_name = model.get("name") if isinstance(model, dict) and isinstance(model.get("name"), str) else None
    performance = _parse_performance(path, document.get("performance"))
    return ReferenceProfile(
        id=ref_id,
        features=tuple(features),
        model_name=model_name,
        version=version,
        created=created,
        source_rows=source_rows,
        source_name=source_name,
        ignored=tuple(ignored),
        performance=performance,
    )


def _parse_performance(path: str, raw: Any) -> ReferencePerformance | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("kind") not in ("classification", "regression"):
        raise _fail(path, '"performance" needs "kind": "classification" or "regression"')
    labels = _count(path, '"performance"', raw.get("labels"))
    if not labels:
        raise _fail(path, '"performance" needs a positive "labels" count')
    if raw["kind"] == "classification":
        hits = _count(path, '"performance"', raw.get("hits"))
        if hits is None or hits > labels:
            raise _fail(path, '"performance" needs "hits" between 0 and "labels"')
        score = raw.get("score")
        if score is None:
            return ReferencePerformance("classification", labels, hits=hits)
        calibration = score.get("calibration") if isinstance(score, dict) else None
        if (
            not isinstance(score, dict)
            or not isinstance(score.get("column"), str)
            or not isinstance(score.get("positive_class"), str)
            or not isinstance(calibration, dict)
        ):
            raise _fail(path, '"performance.score" needs "column", "positive_class" and "calibration"')
        edges = _edges(path, '"performance.score.calibration.edges"', calibration.get("edges"), least=1)
        rates = [
            _number(path, '"performance.score.calibration.rates"', r)
            for r in _list(path, "rates", calibration.get("rates"))
        ]
        if len(rates) != len(edges) + 1 or any(r is None or not 0 <= r <= 1 for r in rates):
            raise _fail(path, '"performance.score.calibration" needs one rate in [0, 1] per bin')
        return ReferencePerformance(
            "classification",
            labels,
            hits=hits,
            score_column=score["column"],
            positive_class=score["positive_class"],
            calibration_edges=edges,
            calibration_rates=tuple(float(r) for r in rates if r is not None),
            calibration_centers=_centers(path, calibration.get("centers"), len(rates)),
        )
    return ReferencePerformance(
        "regression",
        labels,
        mae=_number(path, '"performance"', raw.get("mae")),
        rmse=_number(path, '"performance"', raw.get("rmse")),
        r2=_number(path, '"performance"', raw.get("r2")),
    )


def _centers(path: str, raw: Any, bins: int) -> tuple[float, ...]:
    """The calibration bins' mean scores: increasing, one per bin (absent in older profiles)."""
    if raw is None:
        return ()
    values = [
        _number(path, '"performance.score.calibration.centers"', c) for c in _list(path, "centers", raw)
    ]
    centers = tuple(float(c) for c in values if c is not None)
    if len(centers) != bins or any(b <= a for a, b in itertools.pairwise(centers)):
        raise _fail(path, '"performance.score.calibration.centers" needs one increasing mean per bin')
    return centers


def load_reference(path: str | Path) -> ReferenceProfile:
    """Read and validate a reference profile; errors name the file and the field."""
    text = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _fail(text, f"cannot read the reference profile ({exc.strerror or exc})") from None
    # A byte-order mark (an editor on Windows saves one) is no part of the JSON.
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _fail(text, f"not valid JSON ({exc})") from None
    return parse_reference(document, text)


def write_profile(document: Mapping[str, Any], path: str | Path) -> None:
    """Validate `document` and write it as indented JSON, atomically (temporary file + rename)."""
    target = Path(path)
    parse_reference(dict(document), str(target))
    data = orjson.dumps(dict(document), option=orjson.OPT_INDENT_2) + b"\n"
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _fail(str(target), f"cannot write the reference profile ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the profile from other users
        os.replace(temporary, target)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise _fail(str(target), f"cannot write the reference profile ({exc.strerror or exc})") from None
