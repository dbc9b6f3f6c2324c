"""The sliding window ring (STATS.md "Runtime state"): counts land in the slot of their time, the
window is the sum of the last `slots` slots, older slots are cleared (also after a long pause), and
an empty window is zeros. Time is always passed explicitly (`now`), never read from a clock."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeltap.stats.window import WindowRing


def one_hot(width: int, position: int, amount: int = 1) -> np.ndarray:
    vector = np.zeros(width, dtype=np.int64)
    vector[position] = amount
    return vector


def test_empty_window_is_zeros_of_the_width() -> None:
    ring = WindowRing(slots=15, slot_s=60.0, width=7)
    window = ring.window(now=1234.5)
    assert window.dtype == np.int64
    assert window.tolist() == [0] * 7
    # Asking again later (time moved) is still empty.
    assert ring.window(now=99_999.0).tolist() == [0] * 7


def test_counts_land_in_the_slot_of_their_time() -> None:
    # 4 slots of 10 s: slot k covers [10k, 10k + 10).
    ring = WindowRing(slots=4, slot_s=10.0, width=5)
    ring.add(one_hot(5, 0), now=0.0)  # slot 0
    ring.add(one_hot(5, 0), now=9.999)  # still slot 0
    ring.add(one_hot(5, 1), now=10.0)  # slot 1 starts exactly at 10
    ring.add(one_hot(5, 2, 5), now=25.0)  # slot 2
    ring.add(one_hot(5, 3), now=39.0)  # slot 3
    # At 39.5 the window is slots 0..3: everything.
    assert ring.window(now=39.5).tolist() == [2, 1, 5, 1, 0]
    # At 40.0 slot 4 begins: slot 0 (the two values at 0 and 9.999) leaves the window.
    assert ring.window(now=40.0).tolist() == [0, 1, 5, 1, 0]
    # At 50.0 slot 1 leaves too; at 60.0 slot 2; at 70.0 slot 3.
    assert ring.window(now=50.0).tolist() == [0, 0, 5, 1, 0]
    assert ring.window(now=60.0).tolist() == [0, 0, 0, 1, 0]
    assert ring.window(now=70.0).tolist() == [0, 0, 0, 0, 0]


def test_slot_reused_after_a_full_turn_starts_from_zero() -> None:
    ring = WindowRing(slots=3, slot_s=1.0, width=2)
    ring.add(np.array([7, 1], dtype=np.int64), now=0.5)  # slot number 0, position 0
    ring.add(np.array([0, 2], dtype=np.int64), now=1.5)  # slot number 1
    ring.add(np.array([0, 4], dtype=np.int64), now=2.5)  # slot number 2
    # Slot number 3 reuses position 0: the 7 + 1 of slot 0 must not survive into it.
    ring.add(np.array([1, 0], dtype=np.int64), now=3.0)
    assert ring.window(now=3.0).tolist() == [1, 6]


def test_pause_longer_than_the_window_clears_everything() -> None:
    ring = WindowRing(slots=15, slot_s=60.0, width=3)
    for minute in range(15):
        ring.add(np.array([1, 2, 3], dtype=np.int64), now=minute * 60.0 + 1.0)
    assert ring.window(now=899.0).tolist() == [15, 30, 45]
    # A pause of an hour: nothing from before is in the window, whichever positions it used.
    assert ring.window(now=899.0 + 3600.0).tolist() == [0, 0, 0]
    ring.add(np.array([0, 0, 9], dtype=np.int64), now=899.0 + 3600.0)
    assert ring.window(now=899.0 + 3600.0).tolist() == [0, 0, 9]


def test_pause_by_adding_only_after_the_gap_clears_stale_slots() -> None:
    # No window() call during the pause: the add itself must clear the old slots.
    ring = WindowRing(slots=5, slot_s=2.0, width=2)
    ring.add(np.array([3, 0], dtype=np.int64), now=0.0)  # slot 0
    ring.add(np.array([0, 4], dtype=np.int64), now=2.0)  # slot 1
    ring.add(np.array([1, 1], dtype=np.int64), now=1000.0)  # slot 500, position 0
    assert ring.window(now=1000.0).tolist() == [1, 1]


def test_pause_of_exactly_the_window_length() -> None:
    ring = WindowRing(slots=4, slot_s=5.0, width=1)
    ring.add(np.array([1], dtype=np.int64), now=0.0)  # slot 0
    ring.add(np.array([10], dtype=np.int64), now=5.0)  # slot 1
    # Slot 4 is 4 slots after slot 0: the window is slots 1..4, so slot 0 is out, slot 1 in.
    assert ring.window(now=20.0).tolist() == [10]
    # Slot 5: slot 1 is out as well.
    assert ring.window(now=25.0).tolist() == [0]


def test_pause_shorter_than_the_window_keeps_recent_slots_and_clears_skipped_ones() -> None:
    ring = WindowRing(slots=6, slot_s=1.0, width=6)
    for second in range(6):
        ring.add(one_hot(6, second, second + 1), now=second + 0.5)  # slot k holds k + 1 at position k
    assert ring.window(now=5.5).tolist() == [1, 2, 3, 4, 5, 6]
    # Jump 3 slots ahead (to slot 8): the window is slots 3..8, so slots 0, 1 and 2 are gone.
    assert ring.window(now=8.0).tolist() == [0, 0, 0, 4, 5, 6]
    ring.add(one_hot(6, 0, 100), now=8.9)
    assert ring.window(now=8.9).tolist() == [100, 0, 0, 4, 5, 6]


def test_window_length_and_memory_are_fixed() -> None:
    ring = WindowRing(slots=15, slot_s=60.0, width=103)
    assert ring.window_s == 900.0
    assert ring.nbytes == 15 * 103 * 8
    for t in range(0, 10_000, 7):
        ring.add(np.ones(103, dtype=np.int64), now=float(t))
    assert ring.nbytes == 15 * 103 * 8


@pytest.mark.parametrize(("slots", "slot_s"), [(0, 60.0), (-1, 60.0), (15, 0.0), (15, -1.0)])
def test_bad_configuration_is_rejected(slots: int, slot_s: float) -> None:
    with pytest.raises(ValueError, match="slots"):
        WindowRing(slots, slot_s, 3)


# A model of the ring: every add remembered with its absolute slot number.
events = st.lists(
    st.tuples(
        st.integers(0, 400),  # time step, in quarter slots (times are non-decreasing: sorted below)
        st.integers(0, 3),  # position in the counts vector
        st.integers(1, 1000),  # amount
        st.booleans(),  # True: also query the window at this time
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(events, st.integers(1, 8))
def test_window_equals_the_sum_of_adds_in_the_last_slots(
    script: list[tuple[int, int, int, bool]], slots: int
) -> None:
    slot_s = 4.0  # quarter-slot steps are exact binary fractions: no rounding at slot boundaries
    ring = WindowRing(slots=slots, slot_s=slot_s, width=4)
    added: list[tuple[int, np.ndarray]] = []
    for step, position, amount, query in sorted(script):
        now = step * 1.0
        counts = one_hot(4, position, amount)
        ring.add(counts, now=now)
        added.append((math.floor(now / slot_s), counts))
        if query:
            newest = math.floor(now / slot_s)
            expected = np.zeros(4, dtype=np.int64)
            for number, c in added:
                if newest - slots < number <= newest:
                    expected += c
            assert ring.window(now=now).tolist() == expected.tolist()
    # And once more well after the last add: only the slots still within the window count.
    last = sorted(script)[-1][0] * 1.0
    for later in sorted((last + slot_s, last + slots * slot_s - 1.0, last + slots * slot_s)):
        newest = math.floor(later / slot_s)
        expected = np.zeros(4, dtype=np.int64)
        for number, c in added:
            if newest - slots < number <= newest:
                expected += c
        assert ring.window(now=later).tolist() == expected.tolist()
