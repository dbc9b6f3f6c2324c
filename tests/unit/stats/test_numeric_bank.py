"""The numeric kernel (STATS.md "Runtime state" and "Validation"): `BucketIndex` is exactly
`np.searchsorted(edges, x, side="left")`, `NumericBank` counts equal the OpenTelemetry SDK's
explicit-bucket aggregation, non-finite values go to the missing column, weights multiply, replica
counts merge exactly (and so do the scores computed from them), and memory is constant in traffic.

Expected counts are always computed independently: by `np.searchsorted`/`np.bincount` on the raw
values, by the OpenTelemetry SDK, or by hand."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from modeltap.reference.builder import build_profile
from modeltap.reference.document import ReferenceFeature, parse_reference
from modeltap.stats.bucketing import MIN_GRID_VALUES, BucketIndex
from modeltap.stats.numeric_bank import NumericBank
from modeltap.stats.scores import coarse_counts, js_distance, ks_binned, psi

TINY = 5e-324  # the smallest positive (denormal) double

# --- helpers --------------------------------------------------------------------------------------


def percentile_edges(values: np.ndarray) -> np.ndarray:
    """STATS.md's fine edges, written out here: nextafter(min, -inf), the 99 inner percentiles, max."""
    finite = values[np.isfinite(values)]
    lo = np.nextafter(finite.min(), -np.inf)
    inner = np.percentile(finite, np.arange(1, 100), method="linear")
    edges: np.ndarray = np.unique(np.concatenate(([lo], inner, [finite.max()])))
    return edges


def expected_buckets(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts over `(-inf, e0], (e0, e1], ..., (e_last, inf)` of the finite values: len(edges) + 1."""
    finite = values[np.isfinite(values)]
    counts: np.ndarray = np.bincount(np.searchsorted(edges, finite, side="left"), minlength=len(edges) + 1)
    return counts


def around_edges(edges: np.ndarray) -> np.ndarray:
    """Every edge, and the finite doubles one and two ulps either side of it."""
    with np.errstate(over="ignore"):  # next to +-DBL_MAX are the infinities, dropped below
        below = np.nextafter(edges, -np.inf)
        above = np.nextafter(edges, np.inf)
        near = np.concatenate(
            (edges, below, above, np.nextafter(below, -np.inf), np.nextafter(above, np.inf))
        )
    finite: np.ndarray = near[np.isfinite(near)]
    return finite


def otel_bucket_counts(edges: Sequence[float], values: Sequence[float]) -> list[int]:
    """Bucket counts of the OpenTelemetry SDK's explicit-bucket aggregation with bounds `edges`.

    The SDK (1.45.2) drops negative values passed to `Histogram.record()`, so callers pass
    non-negative values only (this helper refuses others rather than lose them silently).
    """
    assert all(v >= 0 for v in values), "the OpenTelemetry SDK drops negative values"
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        views=[
            View(
                instrument_name="feature",
                aggregation=ExplicitBucketHistogramAggregation(boundaries=list(edges)),
            )
        ],
    )
    try:
        histogram = provider.get_meter("modeltap-test").create_histogram("feature")
        for value in values:
            histogram.record(value)
        data = reader.get_metrics_data()
        assert data is not None
        (point,) = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
        assert isinstance(point, HistogramDataPoint)
        assert list(point.explicit_bounds) == list(edges)
        assert point.count == len(values)  # nothing was dropped
        return list(point.bucket_counts)
    finally:
        provider.shutdown()


def datasets(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "normal": rng.normal(10.0, 3.0, 20_000),
        "lognormal": rng.lognormal(0.0, 1.5, 20_000),
        "pareto": rng.pareto(1.2, 20_000) + 1.0,
        "integer": rng.integers(0, 1000, 20_000).astype(np.float64),
        "few_integers": rng.integers(-3, 30, 20_000).astype(np.float64),
        "uniform": rng.uniform(-5.0, 5.0, 20_000),
        "constant": np.full(500, 3.25),
        "constant_zero": np.zeros(500),
    }


DATASETS = (
    "normal",
    "lognormal",
    "pareto",
    "integer",
    "few_integers",
    "uniform",
    "constant",
    "constant_zero",
)
EXTREMES = np.array(
    [0.0, -0.0, TINY, -TINY, 1e308, -1e308, np.finfo(np.float64).max, -np.finfo(np.float64).max, 1e-300]
)


# --- BucketIndex ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_bucket_index_equals_searchsorted_on_percentile_edges(name: str) -> None:
    rng = np.random.default_rng(20240611)
    reference = datasets(rng)[name]
    edges = percentile_edges(reference)
    index = BucketIndex(edges)
    fresh = datasets(np.random.default_rng(7))[name]
    values = np.concatenate((fresh, reference[:2000], around_edges(edges), EXTREMES))
    values = values[np.random.default_rng(3).permutation(len(values))]
    # Edge-derived values must be among the first MIN_GRID_VALUES too (the small-array path).
    values = np.concatenate((around_edges(edges), EXTREMES, values))
    assert len(values) > MIN_GRID_VALUES
    for size in (1, 17, MIN_GRID_VALUES - 1, MIN_GRID_VALUES, MIN_GRID_VALUES + 1, len(values)):
        chunk = values[:size]
        expected = np.searchsorted(edges, chunk, side="left")
        assert index.bucket(chunk).tolist() == expected.tolist(), (name, size)


def test_grid_path_is_exercised_on_evenly_spread_edges() -> None:
    # The fast path is what runs in production for most features; the equality tests above only
    # prove something about it if it is actually taken for such edges.
    rng = np.random.default_rng(1)
    assert BucketIndex(percentile_edges(rng.normal(size=20_000)))._grid
    assert BucketIndex(percentile_edges(rng.uniform(size=20_000)))._grid
    assert BucketIndex(percentile_edges(rng.integers(0, 1000, 20_000).astype(np.float64)))._grid


def test_bucket_index_docstring_example() -> None:
    index = BucketIndex(np.array([0.0, 1.0, 2.0]))
    assert index.bucket(np.array([-1.0, 0.0, 0.5, 2.0, 3.0])).tolist() == [0, 0, 1, 2, 3]


def test_bucket_index_on_edges_packed_closer_than_the_grid_rounding() -> None:
    # Edges -1 and 1 spread a grid of 20 cells over [-1, 1]; a cell bound falls on 0.0. The three
    # edges just below 0 are closer together than the rounding of (x - low) * scale, so a value
    # there is computed into the cell that starts at 0.0. By hand: the number of edges strictly
    # below -3 * TINY is 1 (only -1.0); below -2 * TINY it is 2; below -TINY it is 3.
    edges = np.array([-1.0, -3 * TINY, -2 * TINY, -TINY, 1.0])
    index = BucketIndex(edges)
    values = np.repeat(np.array([-3 * TINY, -2 * TINY, -TINY, 0.0]), MIN_GRID_VALUES)
    expected = np.repeat(np.array([1, 2, 3, 4]), MIN_GRID_VALUES)
    assert index.bucket(values[:10]).tolist() == np.repeat([1], 10).tolist()  # binary search path
    assert index.bucket(values).tolist() == expected.tolist()  # grid path


def test_bucket_index_on_a_cluster_of_adjacent_doubles_at_a_cell_bound() -> None:
    # Same situation away from zero: 3 consecutive doubles just below -0.2, a cell bound of the
    # 20-cell grid over [-1, 1]. searchsorted of the middle one is 2 (edges -1.0 and `first`).
    first = float.fromhex("-0x1.999999999999bp-3")
    second = float(np.nextafter(first, np.inf))
    third = float(np.nextafter(second, np.inf))
    edges = np.array([-1.0, first, second, third, 1.0])
    values = np.full(2 * MIN_GRID_VALUES, second)
    assert BucketIndex(edges).bucket(values).tolist() == [2] * len(values)


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
moderate_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def edges_and_values(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique edges (wide, moderate, or integer-valued) and values on and around them."""
    element = draw(
        st.sampled_from(
            (finite_floats, moderate_floats, st.integers(-1000, 1000).map(float), st.floats(-1.0, 1.0))
        )
    )
    edges = np.unique(np.asarray(draw(st.lists(element, min_size=1, max_size=60)), dtype=np.float64))
    edges = edges + 0.0  # one zero only (-0.0 and 0.0 are one edge value)
    edges = np.unique(edges)
    near = around_edges(edges)
    extra = np.asarray(draw(st.lists(element, max_size=40)), dtype=np.float64)
    picks = draw(st.lists(st.integers(0, len(near) - 1), min_size=1, max_size=80))
    values = np.concatenate((near[picks], extra, EXTREMES))
    return edges, values


@settings(max_examples=300, deadline=None, derandomize=True)
@given(edges_and_values())
def test_bucket_index_equals_searchsorted_property(case: tuple[np.ndarray, np.ndarray]) -> None:
    edges, values = case
    index = BucketIndex(edges)
    small = values[: MIN_GRID_VALUES - 1]
    assert index.bucket(small).tolist() == np.searchsorted(edges, small, side="left").tolist()
    big = np.resize(values, MIN_GRID_VALUES + 37)  # repeated to reach the grid path
    assert index.bucket(big).tolist() == np.searchsorted(edges, big, side="left").tolist()


# --- NumericBank against the OpenTelemetry SDK ----------------------------------------------------


Draw = Callable[[np.random.Generator, int], np.ndarray]
NON_NEGATIVE: dict[str, Draw] = {
    "lognormal": lambda rng, n: rng.lognormal(0.0, 1.0, n),
    "exponential": lambda rng, n: rng.exponential(2.0, n),
    "uniform": lambda rng, n: rng.uniform(0.0, 100.0, n),
    "integers": lambda rng, n: rng.integers(0, 40, n).astype(np.float64),
    "normal_abs": lambda rng, n: np.abs(rng.normal(5.0, 2.0, n)),
    "pareto": lambda rng, n: rng.pareto(1.5, n) + 1.0,
}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", sorted(NON_NEGATIVE))
def test_bank_counts_equal_opentelemetry_explicit_buckets(name: str, seed: int) -> None:
    draw = NON_NEGATIVE[name]
    rng = np.random.default_rng(seed)
    edges = percentile_edges(draw(rng, 20_000))
    near = around_edges(edges)
    near = near[near >= 0]
    # A grid-sized batch, then small batches (binary-search path), then the edge values.
    batches = [
        np.asarray(draw(rng, 3000), dtype=np.float64),
        np.asarray(draw(rng, 50), dtype=np.float64),
        np.array([0.0, 1e308, TINY, float(np.finfo(np.float64).max)]),
        near,
    ]
    bank = NumericBank(("x",), (edges,), slots=15, slot_s=60.0)
    for batch in batches:
        bank.add(batch[:, None], weight=1, now=100.0)
    stream = np.concatenate(batches)
    fine, missing = bank.feature_counts(0, bank.cumulative)
    assert missing == 0
    assert fine.tolist() == otel_bucket_counts(edges.tolist(), stream.tolist())
    window_fine, window_missing = bank.feature_counts(0, bank.window(100.0))
    assert window_fine.tolist() == fine.tolist()
    assert window_missing == 0


def test_bank_offsets_keep_features_apart_and_match_opentelemetry() -> None:
    rng = np.random.default_rng(11)
    edges_a = percentile_edges(rng.lognormal(0.0, 1.0, 10_000))
    edges_b = percentile_edges(rng.integers(0, 25, 10_000).astype(np.float64))  # ~25 edges
    edges_c = np.array([0.5, 1.0])  # a hand-written edge list of 2
    bank = NumericBank(("a", "b", "c"), (edges_a, edges_b, edges_c), slots=15, slot_s=60.0)
    rows = 2500
    matrix = np.column_stack(
        (
            rng.lognormal(0.0, 1.2, rows),
            rng.integers(0, 30, rows).astype(np.float64),
            rng.uniform(0.0, 2.0, rows),
        )
    )
    bank.add(matrix, weight=1, now=0.0)
    bank.add(matrix[:7], weight=1, now=0.0)  # below the grid threshold
    stream = np.vstack((matrix, matrix[:7]))
    for j, edges in enumerate((edges_a, edges_b, edges_c)):
        fine, missing = bank.feature_counts(j, bank.cumulative)
        assert len(fine) == len(edges) + 1
        assert missing == 0
        assert fine.tolist() == otel_bucket_counts(edges.tolist(), stream[:, j].tolist())
    assert int(bank.cumulative.sum()) == stream.size


def test_non_finite_and_none_go_to_the_missing_column() -> None:
    edges = np.array([-1.0, 0.0, 1.0])
    bank = NumericBank(("x", "y"), (edges, edges), slots=15, slot_s=60.0)
    # None in a float array is NaN.
    x = np.array([0.5, None, math.nan, math.inf, -math.inf, 2.0], dtype=np.float64)
    y = np.array([0.5, 0.5, 0.5, 0.5, 0.5, -2.0], dtype=np.float64)
    returned = bank.add(np.column_stack((x, y)), weight=1, now=0.0)
    assert returned.tolist() == [4, 0]
    fine_x, missing_x = bank.feature_counts(0, bank.cumulative)
    fine_y, missing_y = bank.feature_counts(1, bank.cumulative)
    # By hand: x = 0.5 is in (0, 1] (bucket 2), 2.0 is above 1 (bucket 3); y: five 0.5, one -2.0.
    assert fine_x.tolist() == [0, 0, 1, 1]
    assert missing_x == 4
    assert fine_y.tolist() == [1, 0, 5, 0]
    assert missing_y == 0


@pytest.mark.parametrize("repeat", [1, 300])  # 8 values, and 2400 (the grid path)
def test_signed_zero_huge_and_tiny_values_land_in_their_buckets(repeat: int) -> None:
    edges = np.array([-1.0, 0.0, 1.0])
    values = np.tile(np.array([-0.0, 0.0, 1e308, -1e308, 1.0, -1.0, TINY, -TINY, math.nan]), repeat)
    bank = NumericBank(("x",), (edges,), slots=15, slot_s=60.0)
    bank.add(values[:, None], weight=1, now=0.0)
    fine, missing = bank.feature_counts(0, bank.cumulative)
    # By hand, bucket = edges strictly below: -1e308, -1.0 -> 0; -0.0, 0.0, -TINY -> 1 (only -1.0
    # is below them: -0.0 is not below the 0.0 edge); 1.0, TINY -> 2; 1e308 -> 3.
    assert fine.tolist() == [2 * repeat, 3 * repeat, 2 * repeat, 1 * repeat]
    assert missing == repeat


def test_constant_reference_edges_put_the_constant_in_range() -> None:
    # A constant column's edges are [nextafter(c, -inf), c]: c (and only c) is in range.
    for constant in (3.25, 0.0, -7.0, 1e300):
        edges = np.array([np.nextafter(constant, -np.inf), constant])
        values = np.array([constant, np.nextafter(constant, -np.inf), np.nextafter(constant, np.inf)] * 400)
        bank = NumericBank(("c",), (edges,), slots=15, slot_s=60.0)
        bank.add(values[:, None], weight=1, now=0.0)
        fine, _ = bank.feature_counts(0, bank.cumulative)
        assert fine.tolist() == [400, 400, 400], constant


def test_weight_multiplies_every_count() -> None:
    rng = np.random.default_rng(5)
    edges = percentile_edges(rng.normal(size=5000))
    matrix = rng.normal(0.2, 1.1, (2000, 1))
    matrix[::17, 0] = np.nan
    single = NumericBank(("x",), (edges,), slots=15, slot_s=60.0)
    weighted = NumericBank(("x",), (edges,), slots=15, slot_s=60.0)
    single.add(matrix, weight=1, now=0.0)
    weighted.add(matrix, weight=7, now=0.0)
    assert (weighted.cumulative == 7 * single.cumulative).all()
    assert (weighted.window(0.0) == 7 * single.window(0.0)).all()
    fine, missing = weighted.feature_counts(0, weighted.cumulative)
    assert missing == 7 * len(range(0, 2000, 17))
    assert fine.tolist() == (7 * expected_buckets(edges, matrix[:, 0])).tolist()


def test_window_forgets_and_cumulative_keeps() -> None:
    edges = np.array([0.0, 1.0])
    bank = NumericBank(("x",), (edges,), slots=15, slot_s=60.0)
    bank.add(np.array([[0.5], [0.5], [math.nan]]), weight=1, now=0.0)
    bank.add(np.array([[2.0]]), weight=1, now=600.0)
    assert bank.window(600.0).tolist() == [0, 2, 1, 1]
    # 15 minutes after the first add it has left the window; the cumulative counts keep it.
    assert bank.window(900.0).tolist() == [0, 0, 1, 0]
    assert bank.window(1500.0).tolist() == [0, 0, 0, 0]
    assert bank.cumulative.tolist() == [0, 2, 1, 1]


def test_one_edge_list_per_feature_is_required() -> None:
    with pytest.raises(ValueError, match="one edge list per feature"):
        NumericBank(("a", "b"), (np.array([0.0, 1.0]),), slots=15, slot_s=60.0)


# --- merge exactness ------------------------------------------------------------------------------


def _reference_feature(seed: int) -> ReferenceFeature:
    data = np.random.default_rng(seed).normal(0.0, 1.0, 4000)
    profile = parse_reference(build_profile({"x": data}))
    (feature,) = profile.features
    return feature


REFERENCE = _reference_feature(99)


def _scores(counts: np.ndarray) -> tuple[float | None, float | None, tuple[float, float] | None]:
    reference = np.asarray(REFERENCE.counts, dtype=np.int64)
    mapping = np.asarray(REFERENCE.psi_index, dtype=np.int64)
    coarse_ref, coarse_cur = coarse_counts(reference, mapping), coarse_counts(counts, mapping)
    return psi(coarse_ref, coarse_cur), js_distance(coarse_ref, coarse_cur), ks_binned(reference, counts)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 3000),
    split=st.floats(0.0, 1.0),
    shift=st.floats(-1.0, 1.0),
    batches=st.integers(1, 4),
)
def test_replica_counts_sum_to_the_counts_and_scores_of_the_whole_stream(
    seed: int, rows: int, split: float, shift: float, batches: int
) -> None:
    rng = np.random.default_rng(seed)
    stream = rng.normal(shift, 1.0, (rows, 1))
    stream[rng.random(rows) < 0.05, 0] = np.nan
    stream[rng.random(rows) < 0.01, 0] = np.inf
    cut = int(rows * split)
    edges = (np.asarray(REFERENCE.fine_edges),)
    replica_a = NumericBank(("x",), edges, slots=15, slot_s=60.0)
    replica_b = NumericBank(("x",), edges, slots=15, slot_s=60.0)
    whole = NumericBank(("x",), edges, slots=15, slot_s=60.0)
    for part in np.array_split(stream[:cut], batches):
        replica_a.add(part, weight=1, now=10.0)
    for part in np.array_split(stream[cut:], batches):
        replica_b.add(part, weight=1, now=20.0)
    whole.add(stream, weight=1, now=30.0)

    summed = replica_a.cumulative + replica_b.cumulative
    assert summed.tolist() == whole.cumulative.tolist()
    summed_fine, summed_missing = whole.feature_counts(0, summed)
    assert summed_fine.tolist() == expected_buckets(edges[0], stream[:, 0]).tolist()
    assert summed_missing == int(np.count_nonzero(~np.isfinite(stream)))

    # Scores from the summed replica counts = scores of the concatenated raw stream.
    concatenated = expected_buckets(edges[0], stream[:, 0])
    merged_psi, merged_js, merged_ks = _scores(summed_fine)
    raw_psi, raw_js, raw_ks = _scores(concatenated)
    if raw_psi is None:
        assert merged_psi is None
        assert merged_js is None
        assert merged_ks is None
        return
    assert merged_psi is not None
    assert merged_js is not None
    assert raw_js is not None
    assert merged_ks is not None
    assert raw_ks is not None
    assert abs(merged_psi - raw_psi) <= 1e-12
    assert abs(merged_js - raw_js) <= 1e-12
    assert abs(merged_ks[0] - raw_ks[0]) <= 1e-12
    assert abs(merged_ks[1] - raw_ks[1]) <= 1e-12


# --- memory ---------------------------------------------------------------------------------------


def test_memory_per_feature_is_bounded_and_constant_in_traffic() -> None:
    rng = np.random.default_rng(8)
    features = 20
    edges = [np.linspace(-3.0, 3.0, 101) + 0.01 * j for j in range(features)]  # 100 inner bins each
    bank = NumericBank([f"f{j}" for j in range(features)], edges, slots=15, slot_s=60.0)
    before = bank.nbytes
    assert before / features <= 16 * 1024
    # Independent size: 15 slots + the cumulative vector, of 102 buckets + 1 missing column, int64,
    # plus the 101 float64 edges.
    assert before == features * ((15 + 1) * (102 + 1) * 8 + 101 * 8)

    batch = rng.normal(0.0, 1.5, (1000, features))
    bank.add(batch, weight=1, now=0.0)  # warm-up: first-call allocations are not growth
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for i in range(100):  # 10^5 rows (2 * 10^6 values) over 100 s, then a pause of an hour
            bank.add(batch, weight=1, now=float(i))
        bank.add(batch, weight=1, now=3600.0)
        bank.window(3600.0)
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert bank.nbytes == before
    assert grown < 64 * 1024
    assert int(bank.cumulative.sum()) == 102 * 1000 * features
