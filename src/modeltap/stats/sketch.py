"""A mergeable quantile sketch for latencies (DDSketch-style log buckets, bounded, collapsing the lowest).

Reference: Charles Masson, Jee E. Rim and Homin K. Lee, "DDSketch: A Fast and Fully-Mergeable
Quantile Sketch with Relative-Error Guarantees", PVLDB 12(12): 2195-2205, 2019 (VLDB 2019).

Mapping. With gamma = (1 + a) / (1 - a), a value x >= `min_indexable` goes to the bin of key
k = ceil(log(x) / log(gamma)), i.e. x in (gamma^(k-1), gamma^k], and the bin is reported as its
representative value 2 * gamma^k / (gamma + 1), which is within relative error a of every value
of the bin. Here a = relative_accuracy - 1e-10 (`_GUARD`): the bin edges are computed with a
floating-point logarithm, whose rounding (about 1e-13 relative at most) could otherwise put a
value a few ulps on the wrong side of an edge, where the error would be a hair above a. With the
guard the stated bound holds in floating point, not only in exact arithmetic.

Guarantee. Let x_1 <= ... <= x_n be the n finite values added (weights as repetitions) and, for q
in [0, 1], x_q = x_(max(1, ceil(q * n))) their nearest-rank quantile, which is what
`np.quantile(values, q, method="inverted_cdf")` returns. If x_q >= `min_indexable` and x_q lies in a
bin that was never collapsed (its key is >= `collapse_floor`; always true while the non-empty keys
span at most `max_bins` bins), then `quantile(q)` returns v with |v - x_q| <= relative_accuracy * x_q.
Ranks 1 and n return the exact minimum and maximum unless they fall in the zero bucket: values
x < `min_indexable` (zero, -0.0, negatives, denormals) share one bucket reported as 0.0, while
x == `min_indexable` is indexed like any larger value, so the bound above holds for it too. A
quantile in a collapsed bin is over-estimated (never under-estimated by more than
relative_accuracy).

Bounded memory. The sketch holds one dense int64 counter per key from the lowest to the highest
non-empty key, at most `max_bins` of them: when a new key would make the span longer, every key
below `highest key - max_bins + 1` (`collapse_floor`) is folded into that lowest kept key, so the
high quantiles, the ones that matter for latency, stay accurate. The floor only rises, and the
collapsed state depends only on the multiset of values added, not on their order or batching:
merging sketches with the same parameters gives exactly the counts of one sketch fed both
streams, even after collapsing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["QuantileSketch"]

# Subtracted from the requested relative accuracy so that logarithm rounding cannot break the bound.
_GUARD = 1e-10
_MIN_ACCURACY = 1e-6
_MAX_ACCURACY = 0.5
_MAX_BINS_LIMIT = 1 << 20
_MAX_WEIGHT = 1 << 53
_FORMAT_VERSION = 1
_CHUNK = 1 << 16
_REAL = (int, float, np.integer, np.floating)


def _check_weight(weight: int) -> int:
    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)):
        raise ValueError(f"weight must be an int, got {type(weight).__name__}")
    w = int(weight)
    if not 1 <= w <= _MAX_WEIGHT:
        raise ValueError(f"weight must be in [1, 2**53], got {w}")
    return w


def _check_q(q: float) -> float:
    if isinstance(q, bool) or not isinstance(q, _REAL):
        raise ValueError(f"quantile q must be a number in [0, 1], got {type(q).__name__}")
    value = float(q)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"quantile q must be in [0, 1], got {q!r}")
    return value


def _encode_float(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)  # 'inf', '-inf', 'nan': strict JSON


def _decode_float(value: object, name: str) -> float:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"sketch dict: {name} must be a number")
    return float(value)


def _decode_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError(f"sketch dict: {name} must be an int in [0, 2**63)")
    return value


def _place(out: np.ndarray, out_lo: int, src_lo: int, src: np.ndarray) -> None:
    """Add `src` (keys from src_lo) into `out` (keys from out_lo); keys below out_lo go to out[0]."""
    shift = src_lo - out_lo
    if shift >= 0:
        out[shift : shift + src.size] += src
    else:
        cut = min(-shift, int(src.size))
        out[0] += int(src[:cut].sum())
        out[: src.size - cut] += src[cut:]


class QuantileSketch:
    """Mergeable quantile sketch with relative accuracy `relative_accuracy` (see the module docstring).

    `add` / `add_many` take values in seconds; NaN and +-inf are not added but counted in
    `rejected` (weighted); no float input raises. `count`, `sum`, `min` and `max` are those of the
    finite values added (zero-bucket values included), computed from the values themselves, not
    from the bins (`sum` is a float64 accumulation, so it is rounded and may overflow to inf).
    """

    __slots__ = (
        "_count",
        "_counts",
        "_inv_log_gamma",
        "_log_gamma",
        "_log_one_minus",
        "_max",
        "_min",
        "_offset",
        "_sum",
        "_zero",
        "max_bins",
        "min_indexable",
        "rejected",
        "relative_accuracy",
    )

    def __init__(
        self, relative_accuracy: float = 0.01, max_bins: int = 2048, min_indexable: float = 1e-9
    ) -> None:
        if isinstance(relative_accuracy, bool) or not isinstance(relative_accuracy, _REAL):
            raise ValueError("relative_accuracy must be a float")
        alpha = float(relative_accuracy)
        if not _MIN_ACCURACY <= alpha <= _MAX_ACCURACY:  # also rejects NaN
            raise ValueError(
                f"relative_accuracy must be in [{_MIN_ACCURACY}, {_MAX_ACCURACY}], got {relative_accuracy!r}"
            )
        if isinstance(max_bins, bool) or not isinstance(max_bins, (int, np.integer)):
            raise ValueError("max_bins must be an int")
        if not 1 <= int(max_bins) <= _MAX_BINS_LIMIT:
            raise ValueError(f"max_bins must be in [1, {_MAX_BINS_LIMIT}], got {max_bins!r}")
        if isinstance(min_indexable, bool) or not isinstance(min_indexable, _REAL):
            raise ValueError("min_indexable must be a float")
        lowest = float(min_indexable)
        if not (math.isfinite(lowest) and lowest >= np.finfo(np.float64).tiny):
            raise ValueError(
                f"min_indexable must be finite and >= {np.finfo(np.float64).tiny!r} "
                f"(the smallest normal float), got {min_indexable!r}"
            )
        self.relative_accuracy = alpha
        self.max_bins = int(max_bins)
        self.min_indexable = lowest
        guarded = alpha - _GUARD
        # log(gamma) = log((1 + a) / (1 - a)) = 2 atanh(a), accurate for small a.
        self._log_gamma = 2.0 * math.atanh(guarded)
        self._inv_log_gamma = 1.0 / self._log_gamma
        # log of 2 / (gamma + 1) = log(1 - a): representative = exp(k log gamma + log(1 - a)).
        self._log_one_minus = math.log1p(-guarded)
        self._counts: np.ndarray = np.zeros(0, dtype=np.int64)
        self._offset = 0
        self._zero = 0
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        self.rejected = 0

    # ----------------------------------------------------------------------------- properties

    @property
    def count(self) -> int:
        """Total weight of the finite values added."""
        return self._count

    @property
    def sum(self) -> float:
        return self._sum

    @property
    def min(self) -> float | None:
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        return self._max if self._count else None

    @property
    def zero_count(self) -> int:
        """Weight of the values below `min_indexable` (reported as 0.0)."""
        return self._zero

    @property
    def bins_in_use(self) -> int:
        """Counters held: lowest to highest non-empty key, gaps included; never above `max_bins`."""
        return int(self._counts.size)

    @property
    def collapse_floor(self) -> int | None:
        """Keys below this one are (or would be) folded into it; None while no bin is in use."""
        if self._counts.size == 0:
            return None
        return self._offset + int(self._counts.size) - self.max_bins

    def bins(self) -> dict[int, int]:
        """Non-empty log bins as key -> weight (the zero bucket is `zero_count`)."""
        nonzero = np.flatnonzero(self._counts)
        return {self._offset + int(i): int(self._counts[i]) for i in nonzero}

    # ------------------------------------------------------------------------------ mapping

    def _keys(self, values: np.ndarray) -> np.ndarray:
        """Keys of float64 values >= min_indexable; the one code path for `add` and `add_many`."""
        logs: np.ndarray = np.log(values)
        logs *= self._inv_log_gamma
        np.ceil(logs, out=logs)
        keys: np.ndarray = logs.astype(np.int64)
        return keys

    def _key_scalar(self, x: float) -> int:
        """`_keys` for one value: math.log when the result cannot depend on the log's last bits.

        numpy's and the C library's logarithms may differ by a few ulps; away from a bin edge that
        cannot change the key, and within `tolerance` of an edge numpy decides, so `add` and
        `add_many` always agree.
        """
        log_x = math.log(x)
        scaled = log_x * self._inv_log_gamma
        tolerance = 1e-12 * (abs(log_x) + 1.0) * self._inv_log_gamma
        if abs(scaled - round(scaled)) > tolerance:
            return math.ceil(scaled)
        return int(self._keys(np.array([x], dtype=np.float64))[0])

    def key_of(self, value: float) -> int | None:
        """Key of the bin a value goes to; None for the zero bucket and for NaN and +-inf."""
        try:
            x = float(value)
        except OverflowError:
            return None
        if not math.isfinite(x) or x < self.min_indexable:
            return None
        return self._key_scalar(x)

    def _representative(self, key: int) -> float:
        try:
            return math.exp(key * self._log_gamma + self._log_one_minus)
        except OverflowError:  # only for keys whose bin reaches past the largest float
            return math.inf

    # ------------------------------------------------------------------------------- adding

    def add(self, value: float, weight: int = 1) -> None:
        """Add one value (seconds) `weight` times."""
        w = weight if weight.__class__ is int and 1 <= weight <= _MAX_WEIGHT else _check_weight(weight)
        try:
            x = float(value)
        except OverflowError:  # an int beyond the float range
            x = math.inf
        if x - x != 0.0:  # NaN or +-inf
            self.rejected += w
            return
        self._count += w
        self._sum += x * w
        if x < self._min:
            self._min = x
        if x > self._max:
            self._max = x
        if x < self.min_indexable:
            self._zero += w
            return
        key = self._key_scalar(x)
        counts = self._counts
        index = key - self._offset
        if 0 <= index < len(counts):
            counts[index] += w
        else:
            self._absorb(key, np.array([w], dtype=np.int64))

    def add_many(self, values: np.ndarray, weight: int = 1) -> None:
        """Add every value of an array (any shape, any real dtype) `weight` times, vectorised."""
        w = _check_weight(weight)
        with np.errstate(all="ignore"):
            x = np.asarray(values, dtype=np.float64).ravel()
        for start in range(0, int(x.size), _CHUNK):  # cache-sized pieces: temporaries stay small
            self._add_chunk(x[start : start + _CHUNK], w)

    def _add_chunk(self, x: np.ndarray, w: int) -> None:
        with np.errstate(all="ignore"):
            n = int(x.size)
            total = float(np.sum(x))
            if math.isfinite(total):  # no NaN or inf can hide in a finite sum
                finite = n
            else:
                mask = np.isfinite(x)
                finite = int(np.count_nonzero(mask))
                if finite < n:
                    self.rejected += (n - finite) * w
                    if finite == 0:
                        return
                    x = x[mask]
                    total = float(np.sum(x))
            low = float(x.min())
            high = float(x.max())
            self._count += finite * w
            self._sum += total * w
            if low < self._min:
                self._min = low
            if high > self._max:
                self._max = high
            if low < self.min_indexable:
                indexable = x >= self.min_indexable
                kept = int(np.count_nonzero(indexable))
                self._zero += (finite - kept) * w
                if kept == 0:
                    return
                x = x[indexable]
            keys = self._keys(x)
        key_lo = int(keys.min())
        key_hi = int(keys.max())
        top = key_hi if self._counts.size == 0 else max(key_hi, self._offset + int(self._counts.size) - 1)
        floor = top - self.max_bins + 1
        if key_lo < floor:
            np.maximum(keys, floor, out=keys)
            key_lo = floor
        keys -= key_lo
        batch = np.bincount(keys).astype(np.int64, copy=False)
        if w != 1:
            batch *= w
        self._absorb(key_lo, batch)

    def _absorb(self, lo: int, batch: np.ndarray) -> None:
        """Add counts for keys lo.. (first and last non-zero), collapsing below the floor."""
        hi = lo + int(batch.size) - 1
        counts = self._counts
        if counts.size == 0:
            new_lo, new_hi = lo, hi
        else:
            top = self._offset + int(counts.size) - 1
            if lo >= self._offset and hi <= top:
                counts[lo - self._offset : hi - self._offset + 1] += batch
                return
            new_lo, new_hi = min(lo, self._offset), max(hi, top)
        kept_lo = max(new_lo, new_hi - self.max_bins + 1)
        out = np.zeros(new_hi - kept_lo + 1, dtype=np.int64)
        if counts.size:
            _place(out, kept_lo, self._offset, counts)
        _place(out, kept_lo, lo, batch)
        self._counts = out
        self._offset = kept_lo

    # ------------------------------------------------------------------------ merge and copy

    def merge(self, other: QuantileSketch) -> None:
        """Add another sketch's contents into this one (same relative_accuracy and min_indexable).

        The bins and counts are exactly those of one sketch fed both streams, with or without
        collapsing, when both sketches have this sketch's `max_bins` (the result keeps
        `self.max_bins`). `sum` is the float sum of the two sums, so it may differ in rounding.
        """
        if not isinstance(other, QuantileSketch):
            raise TypeError(f"can only merge a QuantileSketch, got {type(other).__name__}")
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                f"cannot merge sketches with different relative_accuracy "
                f"({self.relative_accuracy!r} vs {other.relative_accuracy!r})"
            )
        if other.min_indexable != self.min_indexable:
            raise ValueError(
                f"cannot merge sketches with different min_indexable "
                f"({self.min_indexable!r} vs {other.min_indexable!r})"
            )
        if other._counts.size:
            self._absorb(other._offset, other._counts.copy())
        self._zero += other._zero
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        self.rejected += other.rejected

    def copy(self) -> QuantileSketch:
        clone = QuantileSketch(self.relative_accuracy, self.max_bins, self.min_indexable)
        clone._counts = self._counts.copy()
        clone._offset = self._offset
        clone._zero = self._zero
        clone._count = self._count
        clone._sum = self._sum
        clone._min = self._min
        clone._max = self._max
        clone.rejected = self.rejected
        return clone

    # ----------------------------------------------------------------------------- quantiles

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile, rank = max(1, ceil(q * count)); None when no value was added."""
        return self.quantiles([q])[0]

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        checked = [_check_q(q) for q in qs]
        n = self._count
        if n == 0:
            return [None] * len(checked)
        cumulative = np.cumsum(self._counts)
        result: list[float | None] = []
        for q in checked:
            rank = min(n, max(1, math.ceil(q * n)))
            if rank <= self._zero:
                result.append(0.0)
            elif rank == n:
                result.append(self._max)
            elif rank == 1:
                result.append(self._min)
            else:
                index = int(np.searchsorted(cumulative, rank - self._zero, side="left"))
                value = self._representative(self._offset + index)
                result.append(min(max(value, self._min), self._max))
        return result

    # -------------------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """Compact, strict-JSON form: parameters, the dense counters from `offset`, and the totals."""
        return {
            "version": _FORMAT_VERSION,
            "relative_accuracy": self.relative_accuracy,
            "max_bins": self.max_bins,
            "min_indexable": self.min_indexable,
            "offset": self._offset,
            "counts": [int(c) for c in self._counts],
            "zero_count": self._zero,
            "count": self._count,
            "sum": _encode_float(self._sum),
            "min": self._min if self._count else None,
            "max": self._max if self._count else None,
            "rejected": self.rejected,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantileSketch:
        """Rebuild a sketch from `to_dict()` output; ValueError if it is malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("sketch dict must be a mapping")
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(f"sketch dict: unsupported version {data.get('version')!r}")
        try:
            sketch = cls(data["relative_accuracy"], data["max_bins"], data["min_indexable"])
            offset = data["offset"]
            raw_counts = data["counts"]
            zero = _decode_int(data["zero_count"], "zero_count")
            count = _decode_int(data["count"], "count")
            total = _decode_float(data["sum"], "sum")
            rejected = _decode_int(data["rejected"], "rejected")
            low, high = data["min"], data["max"]
        except KeyError as missing:
            raise ValueError(f"sketch dict: missing field {missing}") from None
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise ValueError("sketch dict: offset must be an int")
        if not isinstance(raw_counts, list):
            raise ValueError("sketch dict: counts must be a list")
        counts = [_decode_int(c, "counts[i]") for c in raw_counts]
        if len(counts) > sketch.max_bins:
            raise ValueError("sketch dict: more counts than max_bins")
        if counts and (counts[0] == 0 or counts[-1] == 0):
            raise ValueError("sketch dict: counts must start and end with a non-zero count")
        if zero + sum(counts) != count:
            raise ValueError("sketch dict: count differs from zero_count + sum(counts)")
        if count:
            low_f, high_f = _decode_float(low, "min"), _decode_float(high, "max")
            if not (math.isfinite(low_f) and math.isfinite(high_f) and low_f <= high_f):
                raise ValueError("sketch dict: min and max must be finite with min <= max")
        elif low is not None or high is not None:
            raise ValueError("sketch dict: min and max must be null for an empty sketch")
        else:
            low_f, high_f = math.inf, -math.inf
        sketch._counts = np.array(counts, dtype=np.int64)
        sketch._offset = offset if counts else 0
        sketch._zero = zero
        sketch._count = count
        sketch._sum = total
        sketch._min = low_f
        sketch._max = high_f
        sketch.rejected = rejected
        return sketch

    def __repr__(self) -> str:
        return (
            f"QuantileSketch(relative_accuracy={self.relative_accuracy!r}, max_bins={self.max_bins}, "
            f"count={self._count}, bins_in_use={self.bins_in_use})"
        )
