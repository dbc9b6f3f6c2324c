"""Categorical counts (STATS.md "Runtime state"): vocabulary + `__other__` + `__missing__`, the
shared canonicalisation of category values, memory bounded with 10^6 distinct values, and the
Space-Saving summary that finds the heavy values where the user exposes them."""

from __future__ import annotations

import decimal
import math
import tracemalloc
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltap.reference.document import canonical_category
from modeltap.stats.categorical_bank import CategoricalBank, SpaceSaving


def test_layout_is_vocabulary_then_other_then_missing() -> None:
    bank = CategoricalBank(("basic", "pro"), slots=15, slot_s=60.0)
    assert (bank.other, bank.missing) == (2, 3)
    assert bank.cumulative.tolist() == [0, 0, 0, 0]
    missing, new = bank.add(["pro", None, "enterprise", "basic", "pro", "free", None, None], 1, now=0.0)
    assert (missing, new) == (3, 2)
    # basic 1, pro 2, other ("enterprise", "free") 2, missing 3
    assert bank.cumulative.tolist() == [1, 2, 2, 3]
    assert bank.window(0.0).tolist() == [1, 2, 2, 3]


def test_empty_vocabulary_counts_everything_as_other_or_missing() -> None:
    bank = CategoricalBank((), slots=15, slot_s=60.0)
    bank.add(["a", None, "b", "a"], 1, now=0.0)
    assert bank.cumulative.tolist() == [3, 1]


def test_empty_batch_adds_nothing() -> None:
    bank = CategoricalBank(("a",), slots=15, slot_s=60.0)
    assert bank.add([], 1, now=0.0) == (0, 0)
    assert bank.cumulative.tolist() == [0, 0, 0]


def test_weight_multiplies_counts() -> None:
    bank = CategoricalBank(("a", "b"), slots=15, slot_s=60.0)
    bank.add(["a", "b", "b", "zz", None], 5, now=0.0)
    assert bank.cumulative.tolist() == [5, 10, 5, 5]
    assert bank.window(0.0).tolist() == [5, 10, 5, 5]


def test_window_forgets_old_slots_and_cumulative_keeps_them() -> None:
    bank = CategoricalBank(("a",), slots=2, slot_s=10.0)
    bank.add(["a", "a"], 1, now=0.0)
    bank.add(["x"], 1, now=10.0)
    assert bank.window(15.0).tolist() == [2, 1, 0]
    assert bank.window(20.0).tolist() == [0, 1, 0]
    assert bank.window(30.0).tolist() == [0, 0, 0]
    assert bank.cumulative.tolist() == [2, 1, 0]


def test_canonical_category_merges_equal_numbers_strings_and_booleans() -> None:
    raw: list[object] = [
        1,
        1.0,
        "1",
        np.int64(1),
        np.float32(1.0),
        decimal.Decimal("1.00"),
        True,
        np.bool_(True),
        False,
        2.5,
        np.float32(0.1),
        None,
        math.nan,
        math.inf,
        "true",
        b"pro",
    ]
    canonical = [canonical_category(v) for v in raw]
    assert canonical == [
        "1",
        "1",
        "1",
        "1",
        "1",
        "1",
        "true",
        "true",
        "false",
        "2.5",
        "0.1",
        None,
        None,
        None,
        "true",
        "pro",
    ]
    bank = CategoricalBank(("1", "true", "false", "pro"), slots=15, slot_s=60.0)
    bank.add(canonical, 1, now=0.0)
    # "1" x6, "true" x3 (True, np.True_, "true"), "false" x1, "pro" x1, other: "2.5", "0.1", missing x3
    assert bank.cumulative.tolist() == [6, 3, 1, 1, 2, 3]


def test_ten_to_the_sixth_new_categories_keep_memory_bounded() -> None:
    bank = CategoricalBank(("a", "b"), slots=15, slot_s=60.0)
    total = 10**6
    traced = 100_000  # the last part runs under tracemalloc (which slows Python code ~4x)
    names = [f"user-{i}" for i in range(total)]
    step = 10_000
    for start in range(0, total - traced, step):
        bank.add(names[start : start + step], 1, now=float(start // step))
    nbytes = bank.nbytes
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for start in range(total - traced, total, step):
            bank.add(names[start : start + step], 1, now=float(start // step))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 10^5 new distinct strings were seen under tracing: far less than one byte each is kept.
    assert grown < 32 * 1024
    assert bank.nbytes == nbytes
    assert bank.cumulative.tolist() == [0, 0, total, 0]


def test_space_saving_finds_the_heavy_values_of_a_skewed_stream() -> None:
    rng = np.random.default_rng(42)
    capacity = 32
    # Counts chosen so that Space-Saving guarantees the answer whatever the order: each gap between
    # neighbours exceeds N / capacity = 85 000 / 32 ~ 2656, the largest possible overcount.
    heavy = {"h-gold": 20_000, "h-silver": 12_000, "h-bronze": 8_000, "h-tin": 5_000}
    stream = [name for name, count in heavy.items() for _ in range(count)]
    stream += [f"rare-{i}" for i in range(40_000)]  # 40 000 values seen once
    order = rng.permutation(len(stream))
    summary = SpaceSaving(capacity)
    for i in order:
        summary.add(stream[i])
    top = summary.top(4)
    assert [name for name, _ in top] == ["h-gold", "h-silver", "h-bronze", "h-tin"]
    for name, estimate in top:
        # Space-Saving: estimate - error <= true count <= estimate, error <= N / capacity.
        error = summary.error(name)
        assert estimate - error <= heavy[name] <= estimate
        assert error <= 85_000 // capacity


streams = st.lists(
    st.tuples(st.integers(0, 60), st.integers(1, 5)),  # Zipf-ish below: low ids are frequent
    min_size=1,
    max_size=400,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(streams, st.integers(1, 12))
def test_space_saving_guarantees(stream: list[tuple[int, int]], capacity: int) -> None:
    summary = SpaceSaving(capacity)
    truth: Counter[str] = Counter()
    for raw, weight in stream:
        item = f"c{raw * raw // 60}"  # squaring skews the distribution towards small ids
        summary.add(item, weight)
        truth[item] += weight
    total = sum(truth.values())
    kept = summary.top(capacity + 5)
    assert len(kept) <= capacity
    assert sum(count for _, count in kept) == total
    for item, estimate in kept:
        assert estimate - summary.error(item) <= truth[item] <= estimate
    if len(truth) <= capacity:  # never full: every item is kept with its exact count
        assert dict(kept) == dict(truth)
        return
    # Full: the smallest counter is at most N / capacity, and every item more frequent than it
    # is kept (Metwally et al., 2005, Lemma 3.4 and Theorem 3.5).
    assert len(kept) == capacity
    minimum = min(count for _, count in kept)
    assert minimum <= total / capacity
    for item, count in truth.items():
        if count > minimum:
            assert item in dict(kept), (item, count, minimum)


@pytest.mark.parametrize("capacity", [1, 2, 3, 32])
def test_space_saving_top_is_sorted_by_count_then_name(capacity: int) -> None:
    summary = SpaceSaving(capacity)
    for item in ["b", "a", "b", "c", "a", "b", "d", "e"]:
        summary.add(item)
    top = summary.top(capacity)
    assert top == sorted(top, key=lambda kv: (-kv[1], kv[0]))
    assert sum(count for _, count in top) == 8
    if capacity >= 5:  # never full: exact counts, ties by name
        assert top == [("b", 3), ("a", 2), ("c", 1), ("d", 1), ("e", 1)]
