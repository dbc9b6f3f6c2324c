"""QuantileSketch: the relative-error guarantee against numpy's nearest-rank quantile, exact merges,
add == add_many, edge inputs, bounded bins and the dict round trip."""

from __future__ import annotations

import json
import math
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltap.stats.sketch import QuantileSketch

QS = (0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)


@contextmanager
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def check_guarantee(sketch: QuantileSketch, values: np.ndarray, qs: tuple[float, ...] = QS) -> None:
    """The docstring's statement, checked literally for every q."""
    finite = values[np.isfinite(values)]
    assert sketch.count == finite.size
    got = sketch.quantiles(qs)
    floor = sketch.collapse_floor
    for q, v in zip(qs, got, strict=True):
        x_q = float(np.quantile(finite, q, method="inverted_cdf"))
        assert v is not None
        if x_q < sketch.min_indexable:
            assert v == 0.0, (q, x_q, v)
            continue
        key = sketch.key_of(x_q)
        assert key is not None
        if floor is None or key >= floor:
            assert abs(v - x_q) <= sketch.relative_accuracy * x_q, (q, x_q, v)
        else:  # a collapsed bin: over-estimated, never under-estimated beyond alpha
            assert v >= x_q * (1 - sketch.relative_accuracy), (q, x_q, v)


def sketch_of(values: np.ndarray, **kwargs: float) -> QuantileSketch:
    sketch = QuantileSketch(**kwargs)  # type: ignore[arg-type]
    sketch.add_many(values)
    return sketch


def assert_same_state(a: QuantileSketch, b: QuantileSketch) -> None:
    assert a.bins() == b.bins()
    assert a.bins_in_use == b.bins_in_use
    assert a.zero_count == b.zero_count
    assert a.count == b.count
    assert a.rejected == b.rejected
    assert a.min == b.min
    assert a.max == b.max
    assert a.quantiles(QS) == b.quantiles(QS)


RNG_DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "lognormal": lambda rng, n: rng.lognormal(mean=-3.0, sigma=1.5, size=n),
    "exponential": lambda rng, n: rng.exponential(scale=0.05, size=n),
    "uniform": lambda rng, n: rng.uniform(1e-3, 2.0, size=n),
    "pareto": lambda rng, n: (rng.pareto(1.2, size=n) + 1.0) * 1e-3,
    "log_uniform_wide": lambda rng, n: 10.0 ** rng.uniform(-9, 6, size=n),
    "with_zero_bucket": lambda rng, n: np.where(rng.random(n) < 0.3, 0.0, rng.lognormal(-5, 2, size=n)),
    "constant_one": lambda rng, n: np.ones(n),
    "constant_odd": lambda rng, n: np.full(n, 0.123456789),
    "constant_min_indexable": lambda rng, n: np.full(n, 1e-9),
    "constant_huge": lambda rng, n: np.full(n, 1e308),
    "two_point": lambda rng, n: np.where(rng.random(n) < 0.9, 0.002, 3.5),
    "two_point_rare_tail": lambda rng, n: np.where(rng.random(n) < 0.995, 0.01, 10.0),
}


@pytest.mark.parametrize("alpha", [0.01, 0.001, 0.05])
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 20_000])
@pytest.mark.parametrize("name", sorted(RNG_DISTRIBUTIONS))
def test_relative_error_guarantee_on_distributions(name: str, n: int, alpha: float) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{name}/{n}/{alpha}".encode()))
    values = RNG_DISTRIBUTIONS[name](rng, n)
    sketch = sketch_of(values, relative_accuracy=alpha)
    assert sketch.collapse_floor is None or min(sketch.bins()) >= sketch.collapse_floor
    check_guarantee(sketch, values)


def test_bin_edges_are_within_alpha() -> None:
    """Values exactly on (and next to) bin edges, where the error of the representative is largest."""
    sketch = QuantileSketch()
    gamma = (1 + sketch.relative_accuracy) / (1 - sketch.relative_accuracy)
    edges = gamma ** np.arange(-1000, 1000, 7, dtype=np.float64)
    for x in np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf)]):
        one = QuantileSketch()
        one.add(0.5 * float(x))  # rank 1 and rank n are exact: put x in the middle
        one.add(float(x))
        one.add(2.0 * float(x))
        v = one.quantile(0.5)
        assert v is not None
        assert abs(v - x) <= one.relative_accuracy * x


positive_floats = st.floats(min_value=0.0, max_value=1.7976931348623157e308, allow_subnormal=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(positive_floats, min_size=1, max_size=200))
def test_relative_error_guarantee_on_generated_lists(values: list[float]) -> None:
    array = np.array(values, dtype=np.float64)
    with no_warnings():
        sketch = sketch_of(array)
        check_guarantee(sketch, array)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-12, max_value=1e12), min_size=1, max_size=300),
    st.integers(min_value=1, max_value=40),
)
def test_guarantee_with_collapsing(values: list[float], max_bins: int) -> None:
    array = np.array(values, dtype=np.float64)
    sketch = sketch_of(array, max_bins=max_bins)
    assert sketch.bins_in_use <= max_bins
    check_guarantee(sketch, array)


# ------------------------------------------------------------------------------------ merging

finite_or_not = st.one_of(
    st.floats(min_value=-1e3, max_value=1e6),
    st.floats(min_value=1e-11, max_value=1e-7),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324]),
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(finite_or_not, max_size=150),
    st.lists(finite_or_not, max_size=150),
    st.sampled_from([2048, 64, 5, 1]),
)
def test_merge_equals_sketch_of_union(a: list[float], b: list[float], max_bins: int) -> None:
    # Exact with or without collapsing: the collapsed state depends only on the multiset of keys.
    left = sketch_of(np.array(a, dtype=np.float64), max_bins=max_bins)
    right = sketch_of(np.array(b, dtype=np.float64), max_bins=max_bins)
    union = sketch_of(np.array(a + b, dtype=np.float64), max_bins=max_bins)
    merged = left.copy()
    merged.merge(right)
    assert_same_state(merged, union)
    assert merged.to_dict()["counts"] == union.to_dict()["counts"]
    assert math.isclose(merged.sum, union.sum, rel_tol=1e-9, abs_tol=1e-6) or not math.isfinite(union.sum)
    reverse = right.copy()
    reverse.merge(left)
    assert_same_state(reverse, union)
    # The operands are unchanged by copy-then-merge.
    assert_same_state(left, sketch_of(np.array(a, dtype=np.float64), max_bins=max_bins))


def test_merge_of_many_batches_equals_one_pass() -> None:
    rng = np.random.default_rng(7)
    values = 10.0 ** rng.uniform(-10, 7, size=20_000)
    whole = sketch_of(values, max_bins=300)
    parts = [sketch_of(chunk, max_bins=300) for chunk in np.array_split(values, 13)]
    total = QuantileSketch(max_bins=300)
    for part in parts:
        total.merge(part)
    assert_same_state(total, whole)


def test_merge_with_itself_doubles() -> None:
    sketch = sketch_of(np.array([0.1, 0.2, 0.0, 5.0]))
    sketch.merge(sketch)
    doubled = sketch_of(np.array([0.1, 0.2, 0.0, 5.0] * 2))
    assert_same_state(sketch, doubled)


def test_merge_rejects_incompatible_sketches() -> None:
    with pytest.raises(ValueError, match="relative_accuracy"):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))
    with pytest.raises(ValueError, match="min_indexable"):
        QuantileSketch(min_indexable=1e-9).merge(QuantileSketch(min_indexable=1e-6))
    with pytest.raises(TypeError):
        QuantileSketch().merge(object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- add vs add_many


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(finite_or_not, st.integers(min_value=1, max_value=5)), max_size=100),
    st.sampled_from([2048, 16, 1]),
)
def test_add_equals_add_many(items: list[tuple[float, int]], max_bins: int) -> None:
    one_by_one = QuantileSketch(max_bins=max_bins)
    batched = QuantileSketch(max_bins=max_bins)
    for value, weight in items:
        one_by_one.add(value, weight)
    for weight in {w for _, w in items}:
        batched.add_many(np.array([v for v, w in items if w == weight], dtype=np.float64), weight)
    assert_same_state(one_by_one, batched)
    for value, _ in items:
        assert one_by_one.key_of(value) == batched.key_of(value)


def test_scalar_and_vector_keys_agree_near_edges() -> None:
    sketch = QuantileSketch(relative_accuracy=0.02)
    gamma = (1 + 0.02) / (1 - 0.02)
    keys = np.arange(-1200, 1200, dtype=np.float64)
    edges = np.concatenate([gamma**keys, np.exp(keys * sketch._log_gamma)])
    probes = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf)])
    probes = probes[probes >= sketch.min_indexable]
    vector = sketch._keys(probes)
    scalar = [sketch.key_of(float(x)) for x in probes]
    assert [int(k) for k in vector] == scalar


# --------------------------------------------------------------------------------- edge inputs


def test_edge_inputs_never_raise() -> None:
    edge = [math.nan, math.inf, -math.inf, -0.0, 0.0, -1.0, -1e308, 1e308, 1.7976931348623157e308, 5e-324]
    with no_warnings():
        single = QuantileSketch()
        for value in edge:
            single.add(value)
        batch = QuantileSketch()
        batch.add_many(np.array(edge))
    for sketch in (single, batch):
        assert sketch.rejected == 3
        assert sketch.count == 7
        assert sketch.zero_count == 5  # -0.0, 0.0, -1.0, -1e308, 5e-324
        assert sketch.min == -1e308
        assert sketch.max == 1.7976931348623157e308
        assert sketch.quantile(0.5) == 0.0
        assert sketch.quantile(1.0) == 1.7976931348623157e308
        top = sketch.quantile(0.8)  # rank 6 of 7: 1e308, whose bin reaches past the largest float
        assert top is not None
        assert abs(top - 1e308) <= 0.01 * 1e308
        assert sketch.key_of(math.nan) is None
        assert sketch.key_of(-0.0) is None


def test_int_beyond_float_range_is_rejected() -> None:
    sketch = QuantileSketch()
    sketch.add(10**400)
    assert (sketch.rejected, sketch.count, sketch.key_of(10**400)) == (1, 0, None)


def test_large_sums_do_not_raise() -> None:
    sketch = QuantileSketch()
    with no_warnings():
        sketch.add_many(np.array([1e308, 1e308, -1e308]), weight=3)
        sketch.add(1e308, weight=2**53)
    assert sketch.count == 9 + 2**53
    assert sketch.sum == math.inf
    assert json.loads(json.dumps(sketch.to_dict(), allow_nan=False))["sum"] == "inf"


def test_inputs_of_other_shapes_and_dtypes() -> None:
    sketch = QuantileSketch()
    sketch.add_many(np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32))
    sketch.add_many(np.array([1, 2, 3]))
    sketch.add_many(np.array([], dtype=np.float64))
    sketch.add_many([0.5, 0.6])  # type: ignore[arg-type]
    sketch.add(np.float32(0.25))
    assert sketch.count == 10
    assert sketch.quantile(1.0) == 3.0


def test_only_non_finite_values() -> None:
    sketch = QuantileSketch()
    sketch.add_many(np.array([math.nan, math.inf]), weight=2)
    assert sketch.rejected == 4
    assert sketch.count == 0
    assert sketch.quantile(0.5) is None


def test_empty_sketch() -> None:
    sketch = QuantileSketch()
    assert sketch.quantile(0.99) is None
    assert sketch.quantiles([0.5, 1.0]) == [None, None]
    assert (sketch.count, sketch.sum, sketch.min, sketch.max) == (0, 0.0, None, None)
    assert sketch.bins_in_use == 0
    assert sketch.collapse_floor is None
    assert QuantileSketch.from_dict(sketch.to_dict()).quantile(0.5) is None


def test_weights_are_repetitions() -> None:
    weighted = QuantileSketch()
    weighted.add_many(np.array([0.01, 0.02]), weight=3)
    weighted.add(0.5, weight=4)
    repeated = sketch_of(np.array([0.01, 0.02] * 3 + [0.5] * 4))
    assert_same_state(weighted, repeated)
    assert math.isclose(weighted.sum, 0.09 + 2.0)


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"relative_accuracy": 0.0}, "relative_accuracy"),
        ({"relative_accuracy": 1.0}, "relative_accuracy"),
        ({"relative_accuracy": math.nan}, "relative_accuracy"),
        ({"relative_accuracy": "0.01"}, "relative_accuracy"),
        ({"max_bins": 0}, "max_bins"),
        ({"max_bins": 2.5}, "max_bins"),
        ({"max_bins": True}, "max_bins"),
        ({"max_bins": 1 << 30}, "max_bins"),
        ({"min_indexable": 0.0}, "min_indexable"),
        ({"min_indexable": -1.0}, "min_indexable"),
        ({"min_indexable": math.inf}, "min_indexable"),
        ({"min_indexable": 5e-324}, "min_indexable"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantileSketch(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("weight", [0, -1, 2**53 + 1, 1.5, True])
def test_weight_validation(weight: object) -> None:
    sketch = QuantileSketch()
    with pytest.raises(ValueError, match="weight"):
        sketch.add(1.0, weight)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        sketch.add_many(np.ones(3), weight)  # type: ignore[arg-type]
    assert sketch.count == 0


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan, math.inf])
def test_quantile_validation(q: float) -> None:
    sketch = sketch_of(np.array([1.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sketch.quantile(q)


# ------------------------------------------------------------------------------ bounded bins


def test_bounded_bins_over_fifteen_orders_of_magnitude() -> None:
    rng = np.random.default_rng(11)
    values = 10.0 ** rng.uniform(-9, 6, size=1_000_000)
    default = sketch_of(values)
    assert default.bins_in_use <= default.max_bins
    check_guarantee(default, values)

    # A narrower budget collapses the low end; the high quantiles stay within alpha.
    tight = sketch_of(values, max_bins=300)
    assert tight.bins_in_use == 300
    floor = tight.collapse_floor
    assert floor is not None
    assert min(tight.bins()) == floor
    for q in (0.99, 0.999, 1.0):
        x_q = float(np.quantile(values, q, method="inverted_cdf"))
        assert (tight.key_of(x_q) or 0) >= floor
        v = tight.quantile(q)
        assert v is not None
        assert abs(v - x_q) <= 0.01 * x_q
    check_guarantee(tight, values)
    median = tight.quantile(0.5)
    assert median is not None
    assert median > float(np.median(values))  # collapsed: over-estimated


def test_memory_bound_with_ten_million_values() -> None:
    rng = np.random.default_rng(3)
    sketch = QuantileSketch()
    for _ in range(10):
        sketch.add_many(10.0 ** rng.uniform(-9, 300, size=1_000_000))
        assert sketch.bins_in_use <= sketch.max_bins
    assert sketch.count == 10_000_000
    assert len(sketch.to_dict()["counts"]) <= 2048


# ----------------------------------------------------------------------------- serialisation


@settings(max_examples=100, deadline=None)
@given(st.lists(finite_or_not, max_size=100), st.sampled_from([2048, 8]))
def test_dict_round_trip(values: list[float], max_bins: int) -> None:
    sketch = sketch_of(np.array(values, dtype=np.float64), max_bins=max_bins)
    text = json.dumps(sketch.to_dict(), allow_nan=False)
    restored = QuantileSketch.from_dict(json.loads(text))
    assert_same_state(restored, sketch)
    assert restored.to_dict() == sketch.to_dict()
    restored.add(0.3)
    sketch.add(0.3)
    assert_same_state(restored, sketch)


def test_from_dict_rejects_malformed_input() -> None:
    good = sketch_of(np.array([0.1, 0.2, 0.0])).to_dict()
    broken: list[dict[str, object]] = [
        {**good, "version": 99},
        {k: v for k, v in good.items() if k != "counts"},
        {**good, "counts": [1, -1, 1]},
        {**good, "counts": [0, 1]},
        {**good, "count": 99},
        {**good, "counts": [1] * 3000, "count": 3001},
        {**good, "min": None},
        {**good, "offset": "3"},
        {**good, "relative_accuracy": 2.0},
    ]
    for data in broken:
        with pytest.raises(ValueError, match=r"sketch dict|relative_accuracy"):
            QuantileSketch.from_dict(data)
