"""RecordQueue.drain: bounded in records, and in bytes when asked (the shipper's batches)."""

from __future__ import annotations

from modeltap.capture.record_queue import RECORD_OVERHEAD_BYTES, RecordQueue

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
