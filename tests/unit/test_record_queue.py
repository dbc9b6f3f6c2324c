"""RecordQueue: drains bounded in records, and in bytes when asked (the shipper's batches); drops
counted by the exchanges a record stands for, raw or encoded."""

from __future__ import annotations

import time

from modeltap.capture.record_queue import RECORD_OVERHEAD_BYTES, RecordQueue
from modeltap.records import ENCODED_HEAD, weight_of

MIB = 1024 * 1024


def filled(sizes: list[int]) -> RecordQueue:
    queue = RecordQueue(max_records=1000, max_bytes=256 * MIB)
    for index, size in enumerate(sizes):
        assert queue.offer((index,), size)
    return queue


def test_drain_takes_up_to_the_record_limit_oldest_first() -> None:
    queue = filled([10] * 5)
    assert queue.drain(3) == [(0,), (1,), (2,)]
    assert queue.drained_bytes == 3 * (10 + RECORD_OVERHEAD_BYTES)
    assert queue.drain(10) == [(3,), (4,)]
    assert queue.drain(10) == []


def test_drain_stops_once_the_byte_bound_is_taken() -> None:
    queue = filled([MIB] * 10)
    batch = queue.drain(256, max_bytes=4 * MIB)
    # Four records are just over 4 MiB with their overhead: the bound is reached at the fourth.
    assert batch == [(0,), (1,), (2,), (3,)]
    assert queue.drained_bytes == 4 * (MIB + RECORD_OVERHEAD_BYTES)
    assert queue.depth == 6
    assert queue.pending_bytes == 6 * (MIB + RECORD_OVERHEAD_BYTES)


def test_drain_takes_one_record_larger_than_the_byte_bound() -> None:
    queue = filled([8 * MIB, 10])
    assert queue.drain(256, max_bytes=4 * MIB) == [(0,)]
    assert queue.drain(256, max_bytes=4 * MIB) == [(1,)]


def weighted(weight: int) -> tuple[object, ...]:
    """A raw record (ExchangeRecord field order) that stands for `weight` exchanges."""
    return (*([None] * 16), weight, weight, None)


def test_a_dropped_record_counts_the_exchanges_it_stands_for() -> None:
    # While sampling 1 in 8, a record dropped on a full queue loses 8 exchanges, not 1.
    queue = RecordQueue(max_records=1, max_bytes=256 * MIB)
    assert queue.offer(weighted(8), 10)
    assert not queue.offer(weighted(8), 10)
    assert queue.dropped_full == 8
    small = RecordQueue(max_records=100, max_bytes=2 * RECORD_OVERHEAD_BYTES)
    assert small.offer(weighted(1), 0)
    assert not small.offer(weighted(4), RECORD_OVERHEAD_BYTES)
    assert small.dropped_bytes == 4
    small.unavailable = True
    assert not small.offer(weighted(2), RECORD_OVERHEAD_BYTES)
    assert (small.dropped_unavailable, small.dropped_bytes) == (2, 4)


def test_a_batch_that_fits_the_byte_bound_is_taken_whole_up_to_the_limit() -> None:
    queue = filled([100] * 300)
    assert queue.drain(256, max_bytes=4 * MIB) == [(i,) for i in range(256)]
    assert queue.drained_bytes == 256 * (100 + RECORD_OVERHEAD_BYTES)
    assert queue.drain(256, max_bytes=4 * MIB) == [(i,) for i in range(256, 300)]
    assert queue.pending_bytes == 0


def encoded(weight: int, start_ns: int = 0, ended_s: float = 0.5) -> bytes:
    """An encoded record's head (what the compiled capture queues), as `framing` lays it out."""
    nan = float("nan")
    return ENCODED_HEAD.pack(start_ns, nan, ended_s, 1.0, nan, 200, 0, 0, weight, weight, 0, -1, -1)


def test_an_encoded_record_counts_its_weight_when_dropped_and_its_age_from_its_end() -> None:
    queue = RecordQueue(max_records=1, max_bytes=256 * MIB)
    started = time.time_ns() - 10 * 10**9
    assert queue.offer(encoded(1, started, ended_s=2.0), 0)
    assert not queue.offer(encoded(16), 0)
    assert queue.dropped_full == 16
    assert 7.5 < queue.oldest_age_s() < 9.0  # ended 2 s after a start 10 s ago
    assert weight_of(b"short") == 1
