"""The monitor's side of the hand-off: one asyncio protocol per serving process, and the sum of
what the serving processes count themselves.

Record batches go to the analysis inbox in arrival order, with flush requests between them so a
flush covers exactly what was sent before it. When the inbox holds more than its byte bound, every
connection stops reading: the serving processes' socket buffers fill, and their own bounded
queues drop and count. Nothing here blocks or grows without bound.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from modeltap.alerts.rollback import route_report
from modeltap.handoff import framing
from modeltap.handoff.rendezvous import peer_is_us
from modeltap.operations.process_resources import from_counts
from modeltap.snapshot import RouteReport, ServingCounts
from modeltap.worker.tap import cold_starts

_log = logging.getLogger("modeltap.monitor")


@dataclass
class Feeder:
    """One serving process's connection and its latest cumulative counts."""

    pid: int = 0
    counts: dict[str, Any] = field(default_factory=dict)
    received: int = 0  # records received on this connection
    processed: int = 0  # records the analysis has processed (written by the analysis thread)
    transport: asyncio.Transport | None = None
    leaving: bool = False


@dataclass(frozen=True)
class Flush:
    feeder: Feeder
    ident: Any


Item = tuple[Feeder, memoryview] | Flush


# What a flush marker is charged against the inbox's bound (a tap may send them in a loop).
FLUSH_CHARGE = 64


class Inbox:
    """Batches and flush markers for the analysis thread, bounded in bytes (back-pressure)."""

    def __init__(self, max_bytes: int, pause: Callable[[bool], None]) -> None:
        self._items: collections.deque[Item] = collections.deque()
        self._arrivals: collections.deque[float] = collections.deque()  # monotonic, per item
        self._bytes = 0
        self._max = max_bytes
        self._pause = pause
        self._paused = False
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def put(self, item: Item) -> None:
        """Event-loop thread."""
        with self._lock:
            self._items.append(item)
            self._arrivals.append(time.monotonic())
            self._bytes += FLUSH_CHARGE if isinstance(item, Flush) else len(item[1])
            over = self._bytes > self._max and not self._paused
            if over:
                self._paused = True
        if over:
            self._pause(True)
        self.ready.set()

    def take(self) -> Item | None:
        """Analysis thread."""
        with self._lock:
            if not self._items:
                self.ready.clear()
                return None
            item = self._items.popleft()
            self._arrivals.popleft()
            self._bytes -= FLUSH_CHARGE if isinstance(item, Flush) else len(item[1])
            # Below half the bound, or empty: with a bound under 2 bytes half of it is 0, and an
            # empty inbox must not stay paused for good.
            resume = self._paused and (self._bytes < self._max // 2 or not self._bytes)
            if resume:
                self._paused = False
        if resume and self._loop is not None:
            self._loop.call_soon_threadsafe(self._pause, False)
        return item

    def take_flushes(self) -> list[Flush]:
        """Analysis thread: the flush markers at the head of the inbox, taken together (serving
        processes stopping at once: one export answers them all, their records being in)."""
        taken: list[Flush] = []
        with self._lock:
            while self._items and isinstance(self._items[0], Flush):
                taken.append(self._items.popleft())  # type: ignore[arg-type]
                self._arrivals.popleft()
                self._bytes -= FLUSH_CHARGE
        return taken

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def paused(self) -> bool:
        """Whether the connections are paused for the bound (a new one must start paused)."""
        return self._paused

    def oldest_age_s(self) -> float:
        """How long the oldest item has waited for the analysis (the monitor's own lag)."""
        with self._lock:
            return time.monotonic() - self._arrivals[0] if self._arrivals else 0.0

    def __len__(self) -> int:
        return len(self._items)


class Feeders:
    """The live connections, and the last counts of every serving process that fed this monitor.

    Counts are cumulative per process, so a process that left keeps contributing its last counts
    (a counter never goes down when a worker exits), and one that reconnects replaces its own.
    """

    MAX_REMEMBERED = 1024

    def __init__(self) -> None:
        self.live: list[Feeder] = []
        self._last: dict[Any, dict[str, Any]] = {}
        self._forgotten: dict[str, Any] = {}  # sums of the oldest processes beyond the bound
        self.ever_connected = False
        self.last_left_cleanly = False
        # The earliest time a departed serving process needs its data exported by (monotonic).
        self.export_deadline: float | None = None
        # The event loop adds, removes and updates; the analysis thread reads.
        self.lock = threading.Lock()

    def add(self, feeder: Feeder) -> None:
        with self.lock:
            self.live.append(feeder)
            self.ever_connected = True

    def remove(self, feeder: Feeder) -> None:
        with self.lock:
            if feeder in self.live:
                self.live.remove(feeder)
            self._remember(feeder)
            self.last_left_cleanly = feeder.leaving

    def update(self, feeder: Feeder, counts: dict[str, Any]) -> None:
        with self.lock:
            feeder.counts = counts

    def note_deadline(self, deadline: float) -> None:
        with self.lock:
            if self.export_deadline is None or deadline < self.export_deadline:
                self.export_deadline = deadline

    def any_live(self, key: str) -> bool:
        """Whether a live serving process reports `key` as true (e.g. `draining`)."""
        with self.lock:
            return any(bool(feeder.counts.get(key)) for feeder in self.live)

    def total(self, key: str) -> int:
        """A cumulative per-process number summed over every process seen (live or gone)."""
        with self.lock:
            for feeder in self.live:
                self._remember(feeder)
            values = [self._forgotten.get(key, 0), *(doc.get(key, 0) for doc in self._last.values())]
        return sum(int(v) for v in values if isinstance(v, (int, float)))

    def route_report(self) -> RouteReport | None:
        """The rollback switch as the live data planes report it (None: none has one)."""
        with self.lock:
            return route_report([feeder.counts or {} for feeder in self.live])

    def snapshot_live(self) -> list[Feeder]:
        with self.lock:
            return list(self.live)

    def _remember(self, feeder: Feeder) -> None:
        key = feeder.pid or id(feeder)
        if not feeder.counts:
            # Nothing reported yet (just connected, or back after a reconnect): its earlier counts
            # are cumulative and still stand; replacing them with nothing would dip the totals.
            return
        self._last.pop(key, None)
        self._last[key] = feeder.counts
        if len(self._last) > self.MAX_REMEMBERED:
            # Fold the oldest departed process; never a live one, which is remembered again at
            # the next read and would then be counted twice.
            live = {f.pid or id(f) for f in self.live}
            oldest = next((k for k in self._last if k not in live), None)
            if oldest is not None:
                self._forgotten = _summed([self._forgotten, self._last.pop(oldest)])

    def serving_counts(self, control: dict[str, float]) -> ServingCounts:
        with self.lock:
            for feeder in self.live:
                self._remember(feeder)
            total = _summed([self._forgotten, *self._last.values()])
            live = [feeder.counts for feeder in self.live]
            pids = tuple(sorted(f.pid for f in self.live if f.pid))
            started = cold_starts([{**feeder.counts, "pid": feeder.pid} for feeder in self.live])
            costs = [from_counts(feeder.pid, feeder.counts) for feeder in self.live if feeder.counts]
        dropped = dict(total.get("dropped") or {})
        dropped.setdefault("queue_full", 0)
        dropped.setdefault("queue_bytes", 0)
        return ServingCounts(
            dropped=tuple(sorted(dropped.items())),
            internal_errors=tuple(
                sorted((k, v) for k, v in (total.get("internal_errors") or {}).items() if v)
            ),
            proxy_errors=None
            if total.get("proxy_errors") is None
            else tuple(sorted(total["proxy_errors"].items())),
            proxy_retries=total.get("proxy_retries"),
            queue_depth=sum(int(c.get("queue_depth", 0)) for c in live),
            queue_bytes=sum(int(c.get("queue_bytes", 0)) for c in live),
            worker_lag_s=max((float(c.get("worker_lag_s", 0.0)) for c in live), default=0.0),
            sampling_stride=max((int(c.get("sampling_stride", 1)) for c in live), default=1),
            payload_sampling_stride=max((int(c.get("payload_sampling_stride", 1)) for c in live), default=1),
            feeders=pids,
            control=tuple(sorted(control.items())),
            route=route_report(live),
            cold_starts=started,
            resources=tuple(cost for cost in costs if cost is not None),
        )


def _summed(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum count documents: counters by name, `proxy_errors` (None unless one has it), retries."""
    dropped: collections.Counter[str] = collections.Counter()
    internal: collections.Counter[str] = collections.Counter()
    proxy: collections.Counter[str] | None = None
    retries: int | None = None
    for document in documents:
        dropped.update({str(k): int(v) for k, v in (document.get("dropped") or {}).items()})
        internal.update({str(k): int(v) for k, v in (document.get("internal_errors") or {}).items()})
        if document.get("proxy_errors") is not None:
            proxy = proxy if proxy is not None else collections.Counter()
            proxy.update({str(k): int(v) for k, v in document["proxy_errors"].items()})
        if document.get("proxy_retries") is not None:
            retries = (retries or 0) + int(document["proxy_retries"])
    return {
        "dropped": dict(dropped),
        "internal_errors": dict(internal),
        "proxy_errors": None if proxy is None else dict(proxy),
        "proxy_retries": retries,
    }


class TapConnection(asyncio.Protocol):
    """One serving process's connection to the monitor."""

    def __init__(self, feeders: Feeders, inbox: Inbox, on_change: Callable[[], None]) -> None:
        self._feeders = feeders
        self._inbox = inbox
        self._on_change = on_change
        self._reader = framing.FrameReader()
        self.feeder = Feeder()
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and not peer_is_us(sock):
            # The run directory is private; a peer of another user got in some other way.
            _log.warning("modeltap monitor: refusing a connection from a process of another user")
            self._refused = True
            transport.close()
            return
        self.feeder.transport = transport  # type: ignore[assignment]
        self._feeders.add(self.feeder)
        if self._inbox.paused:
            # Accepted while the analysis is behind: held back as the others are, or its batches
            # would grow the inbox past its bound (a worker restarted, a tap reconnecting).
            transport.pause_reading()  # type: ignore[attr-defined]
        self._on_change()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
        except ValueError as exc:
            _log.warning("modeltap monitor: dropping a connection that broke the framing: %s", exc)
            self._close()
            return
        feeder = self.feeder
        for kind, payload in messages:
            if kind == framing.RECORDS:
                feeder.received += framing.COUNT.unpack_from(payload)[0] if len(payload) >= 4 else 0
                self._inbox.put((feeder, payload))
            elif kind == framing.COUNTS:
                document = _json(payload)
                if document is not None:
                    self._feeders.update(feeder, document)
            elif kind == framing.FLUSH:
                document = _json(payload)
                if document is not None:
                    self._inbox.put(Flush(feeder, document.get("id")))
            elif kind == framing.HELLO:
                document = _json(payload)
                if document is not None and isinstance(document.get("pid"), int):
                    feeder.pid = document["pid"]
            elif kind == framing.BYE:
                # Everything it sent is in the inbox already: let it go now, and export it within
                # the time it has left (a server bounds its exit).
                feeder.leaving = True
                document = _json(payload)
                within = document.get("within_s") if document is not None else None
                if isinstance(within, (int, float)):
                    self._feeders.note_deadline(time.monotonic() + float(within))
                self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return  # never a feeder
        feeder = self.feeder
        self._feeders.remove(feeder)
        feeder.transport = None
        self._on_change()

    def _close(self) -> None:
        transport = self.feeder.transport
        if transport is not None:
            transport.close()


def _json(payload: memoryview) -> dict[str, Any] | None:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None
