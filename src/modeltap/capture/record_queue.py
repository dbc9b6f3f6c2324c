"""A bounded, never-blocking hand-off from the request path to the worker thread.

Two forms with the same behaviour: `PyRecordQueue` below, and where the extension is built
`CompiledRecordQueue`, whose `offer` is a C call (the capture offers every record: about 0.25 µs
less per exchange than a Python frame). `new_record_queue` picks as the capture does
(`MODELTAP_PURE_PYTHON=1`: pure Python); the tests run both.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Protocol

from modeltap.capture import compiled
from modeltap.records import QueuedRecord, ended_unix_ns, weight_of

# Fixed per-record overhead charged against the byte bound (headers, tuple, scope refs). The
# capture adds to a record's kept body bytes what its head holds beyond this (a long query or
# many headers, which the client chooses: `exchange.head_charge`, or an encoded record's length).
RECORD_OVERHEAD_BYTES = 1024


class RecordQueue(Protocol):
    """What the tap, the worker and the shipper use of the hand-off (either form)."""

    max_records: int
    max_bytes: int
    worker_held_bytes: int
    drained_bytes: int
    dropped_full: int
    dropped_bytes: int
    dropped_unavailable: int
    unavailable: bool

    def offer(self, record: QueuedRecord, kept_bytes: int, /) -> bool: ...

    def drain(self, limit: int, max_bytes: int | None = None) -> list[QueuedRecord]: ...

    @property
    def depth(self) -> int: ...

    @property
    def pending_bytes(self) -> int: ...

    def oldest_age_s(self) -> float: ...


def new_record_queue(max_records: int, max_bytes: int) -> RecordQueue:
    """The compiled form where built and wanted, else the pure-Python one."""
    if compiled.wanted():
        return CompiledRecordQueue(max_records, max_bytes)
    return PyRecordQueue(max_records, max_bytes)


def _age_s(record: QueuedRecord | None) -> float:
    if record is None:
        return 0.0
    return max(0.0, (time.time_ns() - ended_unix_ns(record)) / 1e9)


class PyRecordQueue:
    """Bounded in records and in bytes; a full queue drops the new record and counts it.

    Each counter has a single writer (the event-loop thread writes the `offered`/`dropped_*` side,
    the worker writes the `taken` side), so plain integers stay exact without a lock.

    Example::

        queue = new_record_queue(max_records=10_000, max_bytes=64 << 20)
        queue.offer(record, 512)  # (record, kept bytes); False when full: dropped and counted
        batch = queue.drain(limit=1024)
    """

    def __init__(self, max_records: int, max_bytes: int) -> None:
        if max_records < 1 or max_bytes < 0:
            raise ValueError("RecordQueue needs max_records >= 1 and max_bytes >= 0")
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._items: collections.deque[tuple[QueuedRecord, int]] = collections.deque()
        self._bytes_in = 0
        self._bytes_out = 0
        # What the worker still holds of what it drained (the raw batch being processed, decoded
        # rows waiting for their numpy step): it counts against `max_bytes` too. Worker-owned.
        self.worker_held_bytes = 0
        self.drained_bytes = 0  # bytes of the last `drain`
        self.dropped_full = 0
        self.dropped_bytes = 0
        # Set by the shipper while no monitor takes records: drops then have that reason.
        self.unavailable = False
        self.dropped_unavailable = 0

    def offer(self, record: QueuedRecord, kept_bytes: int) -> bool:
        size = kept_bytes + RECORD_OVERHEAD_BYTES
        if len(self._items) >= self.max_records:
            # A record taken while sampling stands for `weight` exchanges: all of them are lost.
            if self.unavailable:
                self.dropped_unavailable += weight_of(record)
            else:
                self.dropped_full += weight_of(record)
            return False
        if self._bytes_in - self._bytes_out + self.worker_held_bytes + size > self.max_bytes:
            if self.unavailable:
                self.dropped_unavailable += weight_of(record)
            else:
                self.dropped_bytes += weight_of(record)
            return False
        self._bytes_in += size
        self._items.append((record, size))
        return True

    def drain(self, limit: int, max_bytes: int | None = None) -> list[QueuedRecord]:
        """Up to `limit` records, oldest first; with `max_bytes`, stop once that many bytes are
        taken (at least one record is)."""
        items = self._items
        count = min(limit, len(items))
        if max_bytes is None or self._bytes_in - self._bytes_out <= max_bytes:
            # All of them fit: taken with one C-level step each, no Python test per record
            # (the shipper holds the interpreter while it drains: the event loop waits).
            # Records offered meanwhile stay queued: only `count` are taken.
            popleft = items.popleft
            taken = [popleft() for _ in range(count)]
            out = [record for record, _ in taken]
            freed = sum([size for _, size in taken])
        else:
            out = []
            freed = 0
            while items and len(out) < limit and freed < max_bytes:
                record, size = items.popleft()
                out.append(record)
                freed += size
        self._bytes_out += freed
        self.drained_bytes = freed
        return out

    @property
    def depth(self) -> int:
        return len(self._items)

    @property
    def pending_bytes(self) -> int:
        """Bytes queued plus those the worker still holds."""
        return self._bytes_in - self._bytes_out + self.worker_held_bytes

    def oldest_age_s(self) -> float:
        """Seconds since the oldest queued exchange finished (the worker's lag)."""
        return _age_s(self._items[0][0] if self._items else None)


if TYPE_CHECKING or compiled.AVAILABLE:

    class CompiledRecordQueue(compiled._speedups.RecordQueue):
        """`PyRecordQueue` in C (`_speedups.RecordQueue`): the same rules, counters and methods."""

        def __init__(self, max_records: int, max_bytes: int) -> None:
            super().__init__(max_records, max_bytes, weight_of)

        def oldest_age_s(self) -> float:
            """Seconds since the oldest queued exchange finished (the worker's lag)."""
            return _age_s(self.oldest())
