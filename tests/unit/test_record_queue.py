"""RecordQueue: drains bounded in records, and in bytes when asked (the shipper's batches); drops
counted by the exchanges a record stands for, raw or encoded. Every test runs against both forms
(`PyRecordQueue`, and the compiled one where the extension is built)."""

from __future__ import annotations

import gc
import sys
import time
import weakref

import pytest

from modeltap.capture.record_queue import RECORD_OVERHEAD_BYTES, PyRecordQueue, RecordQueue, new_record_queue
from modeltap.records import ENCODED_HEAD, weight_of

pytestmark = pytest.mark.usefixtures("each_capture_form")

MIB = 1024 * 1024


def filled(sizes: list[int]) -> RecordQueue:
    queue = new_record_queue(max_records=1000, max_bytes=256 * MIB)
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
    queue = new_record_queue(max_records=1, max_bytes=256 * MIB)
    assert queue.offer(weighted(8), 10)
    assert not queue.offer(weighted(8), 10)
    assert queue.dropped_full == 8
    small = new_record_queue(max_records=100, max_bytes=2 * RECORD_OVERHEAD_BYTES)
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
    queue = new_record_queue(max_records=1, max_bytes=256 * MIB)
    started = time.time_ns() - 10 * 10**9
    assert queue.offer(encoded(1, started, ended_s=2.0), 0)
    assert not queue.offer(encoded(16), 0)
    assert queue.dropped_full == 16
    assert 7.5 < queue.oldest_age_s() < 9.0  # ended 2 s after a start 10 s ago
    assert weight_of(b"short") == 1


def test_the_form_follows_the_capture(each_capture_form: str) -> None:
    queue = new_record_queue(max_records=10, max_bytes=MIB)
    assert isinstance(queue, PyRecordQueue) is (each_capture_form != "compiled")


def test_a_full_ring_grows_and_keeps_the_order() -> None:
    """The compiled ring starts small and doubles: records offered across a growth, with the ring
    wrapped around, come out in the order they went in."""
    queue = new_record_queue(max_records=5000, max_bytes=256 * MIB)
    expected: list[tuple[int]] = []
    taken: list[object] = []
    for index in range(4000):
        assert queue.offer((index,), 0)
        expected.append((index,))
        if index % 3 == 0:
            taken.extend(queue.drain(1))
    taken.extend(queue.drain(10_000))
    assert taken == expected
    assert queue.depth == 0
    assert queue.pending_bytes == 0


def test_records_are_let_go_once_drained_or_with_the_queue() -> None:
    record = (object(),)
    queue = new_record_queue(max_records=10, max_bytes=MIB)
    before = sys.getrefcount(record)
    assert queue.offer(record, 0)
    assert sys.getrefcount(record) == before + 1
    assert queue.drain(10) == [record]
    assert sys.getrefcount(record) == before
    assert queue.offer(record, 0)
    del queue
    gc.collect()
    assert sys.getrefcount(record) == before


def test_it_takes_part_in_garbage_collection() -> None:
    """A record that refers back to its queue (an app can put anything in a scope) is collected."""
    queue = new_record_queue(max_records=10, max_bytes=MIB)
    cycle: list[object] = [queue]
    assert queue.offer((cycle,), 0)
    gone = weakref.ref(queue)
    del queue, cycle
    gc.collect()
    assert gone() is None


def test_a_queue_without_room_for_one_record_is_refused() -> None:
    with pytest.raises(ValueError, match="max_records"):
        new_record_queue(max_records=0, max_bytes=MIB)


@pytest.mark.parametrize("kept", [2**62, 2**63 - 1, 2**63, 2**64])
def test_a_record_larger_than_any_bound_is_dropped_by_its_bytes(kept: int) -> None:
    """No sum overflows: a record too large for the queue (the capture's own are bounded by
    `max_body_bytes`) is dropped and counted like any other, never queued, never an error."""
    queue = new_record_queue(max_records=10, max_bytes=MIB)
    assert queue.offer(weighted(3), kept) is False
    assert (queue.dropped_bytes, queue.depth, queue.pending_bytes) == (3, 0, 0)


def test_bytes_held_by_the_shipper_count_against_the_bound_without_overflow() -> None:
    queue = new_record_queue(max_records=10, max_bytes=MIB)
    queue.worker_held_bytes = 2**63 - 100
    assert queue.offer(weighted(2), 10) is False
    assert queue.dropped_bytes == 2
    queue.worker_held_bytes = MIB - RECORD_OVERHEAD_BYTES - 10
    assert queue.offer(weighted(1), 10) is True
    assert queue.offer(weighted(1), 0) is False


def test_the_compiled_queue_never_raises_from_a_drop() -> None:
    """`offer` is on the request path: a weight that cannot be read (a record of another shape, a
    queue made without `__init__`) counts as one exchange instead of raising."""
    compiled_queue = pytest.importorskip("modeltap._speedups").RecordQueue

    def broken_weight(record: object) -> int:
        raise RuntimeError("no weight")

    queue = compiled_queue(1, MIB, broken_weight)
    assert queue.offer((0,), 0) is True
    assert queue.offer((1,), 0) is False
    assert queue.dropped_full == 1
    bare = compiled_queue.__new__(compiled_queue)  # never initialised: no ring at all
    assert bare.offer((0,), 0) is False
    assert bare.dropped_full == 1
    assert bare.drain(10) == []
