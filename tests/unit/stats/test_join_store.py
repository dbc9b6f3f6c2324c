"""The join of predictions and labels: every label accounted for, state bounded."""

from __future__ import annotations

import random

from modeltap.stats.join_store import ENTRY_OVERHEAD_BYTES, Joined, JoinStore, Prediction


def _prediction(i: int, now: float) -> Prediction:
    return Prediction(model="m", version="1", predicted="yes" if i % 2 else "no", created_s=now)


def test_labels_in_any_order_join_their_own_predictions_once() -> None:
    store = JoinStore()
    for i in range(100):
        store.add_prediction(("r", i), _prediction(i, now=float(i)), now=float(i))
    order = list(range(100))
    random.Random(3).shuffle(order)
    joined = [store.add_label(("r", i), f"label-{i}", now=200.0) for i in order]
    assert all(isinstance(j, Joined) for j in joined)
    joins = [j for j in joined if isinstance(j, Joined)]
    assert [j.label for j in joins] == [f"label-{i}" for i in order]
    assert [j.prediction.predicted for j in joins] == ["yes" if i % 2 else "no" for i in order]
    assert [j.delay_s for j in joins] == [200.0 - i for i in order]
    assert store.counts == {"joined": 100}
    assert store.entries == 0
    assert store.bytes == 0


def test_duplicates_count_once_and_a_different_label_is_a_conflict_the_first_wins() -> None:
    store = JoinStore()
    store.add_prediction("a", _prediction(1, 0.0), 0.0)
    first = store.add_label("a", "yes", 1.0)
    assert isinstance(first, Joined)
    assert first.label == "yes"
    assert store.add_label("a", "yes", 2.0) == "duplicate"
    assert store.add_label("a", "no", 3.0) == "conflict"
    assert store.counts == {"joined": 1, "duplicate": 1, "conflict": 1}


def test_a_label_before_its_prediction_waits_briefly_then_counts_as_unmatched() -> None:
    store = JoinStore(early_ttl_s=60.0)
    assert store.add_label("early", "yes", 0.0) == "early"
    joined = store.add_prediction("early", _prediction(1, 5.0), 5.0)
    assert joined is not None
    assert joined.label == "yes"
    assert store.add_label("unknown", "no", 10.0) == "early"
    store.expire(71.0)
    assert store.counts == {"early": 2, "joined": 1, "unmatched": 1}


def test_a_label_after_the_ttl_finds_nothing_and_both_sides_are_counted() -> None:
    store = JoinStore(ttl_s=100.0, early_ttl_s=10.0)
    store.add_prediction("late", _prediction(1, 0.0), 0.0)
    assert store.add_label("late", "yes", 150.0) == "early"  # the prediction expired at 100 s
    store.expire(200.0)
    assert store.counts == {"expired": 1, "early": 1, "unmatched": 1}
    assert store.entries == 0


def test_a_flood_of_predictions_never_labelled_stays_within_the_bounds() -> None:
    store = JoinStore(max_entries=1000, max_bytes=1000 * (ENTRY_OVERHEAD_BYTES + 40))
    for i in range(50_000):
        store.add_prediction(("request-id-" + "x" * (i % 30), i), _prediction(i, float(i)), float(i))
        assert store.entries <= 1000
        assert store.bytes <= store.max_bytes
    assert store.counts["evicted"] == 50_000 - store.entries
    # A flood of labels for unknown ids is bounded too: here by the early labels' bytes.
    for i in range(50_000):
        store.add_label(("nobody", i), "yes", 60_000.0)
        assert store._early_bytes <= store.max_early_bytes
    assert len(store._early) < store.max_early
    assert store.counts["early"] == 50_000
    assert store.counts["unmatched"] == 50_000 - len(store._early)


def test_early_labels_are_bounded_in_number_and_in_bytes() -> None:
    """By number with small labels; by bytes with a ranker's (100 items of 256 characters: a
    count bound alone let 10 000 of them hold 300 MiB)."""
    small = JoinStore()
    for i in range(50_000):
        small.add_label(("nobody", i), "yes", 60_000.0)
    assert len(small._early) == small.max_early
    assert small.counts["unmatched"] == 50_000 - small.max_early

    ranked = JoinStore(max_bytes=4 * 1024 * 1024)
    items = tuple(f"{n:03d}" + "x" * 253 for n in range(100))
    for i in range(2000):
        ranked.add_label(("q", i), items, 60_000.0)
        assert ranked._early_bytes <= ranked.max_early_bytes == 1024 * 1024
    kept = len(ranked._early)
    assert 0 < kept <= 1024 * 1024 // (100 * 256)
    assert ranked.counts["unmatched"] == 2000 - kept
    # The kept ones are the latest, and still join.
    assert isinstance(ranked.add_prediction(("q", 1999), _prediction(1999, 60_001.0), 60_001.0), Joined)


def test_a_joined_key_keeps_no_label_and_still_tells_repeats_from_conflicts() -> None:
    store = JoinStore()
    items = ("a", "b", "c")
    store.add_prediction("k", _prediction(0, 0.0), 0.0)
    assert isinstance(store.add_label("k", items, 1.0), Joined)
    assert store._joined["k"][0] != items  # a digest, not the (possibly large) label
    assert store.add_label("k", ("a", "b", "c"), 2.0) == "duplicate"
    assert store.add_label("k", ("c", "b", "a"), 3.0) == "conflict"
    assert store.add_label("k", ("ab", "c"), 3.0) == "conflict"  # items, not their concatenation
    # Values whose Python hashes are equal are still told apart (hash(-1.0) == hash(-2.0)).
    store.add_prediction("r", _prediction(1, 0.0), 0.0)
    assert isinstance(store.add_label("r", -1.0, 1.0), Joined)
    assert store.add_label("r", -2.0, 2.0) == "conflict"
    assert store.add_label("r", -1.0, 2.0) == "duplicate"
    # An early label still waiting is told apart by the label itself.
    assert store.add_label("early", "yes", 4.0) == "early"
    assert store.add_label("early", "yes", 5.0) == "duplicate"
    assert store.add_label("early", "no", 6.0) == "conflict"


def test_the_byte_bound_evicts_oldest_first() -> None:
    store = JoinStore(max_entries=10_000, max_bytes=3 * (ENTRY_OVERHEAD_BYTES + 10))
    for i in range(5):
        store.add_prediction(f"k{i}", Prediction("m", "1", "yes", created_s=float(i)), float(i))
    assert store.entries == 3
    assert store.counts["evicted"] == 2
    assert store.add_label("k0", "yes", 10.0) == "early"  # evicted: the label waits as early
    assert isinstance(store.add_label("k4", "yes", 10.0), Joined)
