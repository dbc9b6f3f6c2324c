"""The monitor's ingest: the sum of the serving processes' own cumulative counts (live and departed,
bounded, never going down), the byte-bounded inbox that pauses and resumes reading, and the
per-process protocol over a real socket."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modeltap.handoff import framing
from modeltap.handoff.framing import RecordEncoder, decode_records
from modeltap.monitor import ingest
from modeltap.monitor.ingest import FLUSH_CHARGE, Feeder, Feeders, Flush, Inbox, Item, TapConnection
from modeltap.records import RawRecord


def counts(
    queue_full: int = 0,
    unavailable: int = 0,
    capture_errors: int = 0,
    proxy_errors: dict[str, int] | None = None,
    proxy_retries: int | None = None,
    **gauges: Any,
) -> dict[str, Any]:
    """A counts document as a serving process sends it (`ModelTapTap.counts_document`)."""
    return {
        "dropped": {"queue_full": queue_full, "queue_bytes": 0, "monitor_unavailable": unavailable},
        "internal_errors": {"capture": capture_errors},
        "proxy_errors": proxy_errors,
        "proxy_retries": proxy_retries,
        "queue_depth": 0,
        "queue_bytes": 0,
        "worker_lag_s": 0.0,
        "sampling_stride": 1,
        "payload_sampling_stride": 1,
        **gauges,
    }


def connected(feeders: Feeders, pid: int, document: dict[str, Any] | None = None) -> Feeder:
    feeder = Feeder(pid=pid)
    feeders.add(feeder)
    if document is not None:
        feeders.update(feeder, document)
    return feeder


def dropped(feeders: Feeders) -> dict[str, int]:
    return dict(feeders.serving_counts({}).dropped)


# ---- Feeders ----------------------------------------------------------------------------------------


def test_counts_of_live_and_departed_processes_add_up() -> None:
    feeders = Feeders()
    a = connected(feeders, 11, counts(queue_full=3, capture_errors=1))
    connected(feeders, 12, counts(queue_full=5, unavailable=2))
    total = feeders.serving_counts({"payload_stride": 4.0})
    assert dict(total.dropped) == {"queue_full": 8, "queue_bytes": 0, "monitor_unavailable": 2}
    assert total.internal_errors == (("capture", 1),)
    assert total.feeders == (11, 12)
    assert total.control == (("payload_stride", 4.0),)
    feeders.update(a, counts(queue_full=4, capture_errors=1))  # cumulative: replaces, not adds
    assert dropped(feeders)["queue_full"] == 9
    feeders.remove(a)
    after = feeders.serving_counts({})
    assert dict(after.dropped)["queue_full"] == 9  # a departed process's counts stay
    assert after.internal_errors == (("capture", 1),)
    assert after.feeders == (12,)


def test_a_departed_process_that_never_was_snapshotted_still_counts() -> None:
    feeders = Feeders()
    gone = connected(feeders, 21, counts(queue_full=7))
    feeders.remove(gone)
    assert dropped(feeders)["queue_full"] == 7
    assert feeders.serving_counts({}).feeders == ()


def test_a_reconnect_with_the_same_pid_replaces_its_counts() -> None:
    feeders = Feeders()
    first = connected(feeders, 31, counts(queue_full=10))
    connected(feeders, 32, counts(queue_full=1))
    assert dropped(feeders)["queue_full"] == 11
    feeders.remove(first)
    again = connected(feeders, 31, counts(queue_full=12))  # the same process, counting on
    assert dropped(feeders)["queue_full"] == 13
    feeders.remove(again)
    assert dropped(feeders)["queue_full"] == 13


def test_a_reconnected_process_that_has_not_reported_yet_keeps_its_last_counts() -> None:
    """Between its hello and its first counts a returning process reports nothing; its counts are
    cumulative, so the total must not dip (Prometheus would read a counter reset)."""
    feeders = Feeders()
    first = connected(feeders, 41, counts(queue_full=10))
    assert dropped(feeders)["queue_full"] == 10
    feeders.remove(first)
    again = connected(feeders, 41)
    assert dropped(feeders)["queue_full"] == 10
    feeders.update(again, counts(queue_full=11))
    assert dropped(feeders)["queue_full"] == 11


def test_a_process_before_its_hello_adds_nothing_and_is_not_listed() -> None:
    feeders = Feeders()
    connected(feeders, 51, counts(queue_full=2))
    anonymous = Feeder()  # connected, hello not read yet
    feeders.add(anonymous)
    total = feeders.serving_counts({})
    assert total.feeders == (51,)
    assert dict(total.dropped)["queue_full"] == 2
    anonymous.pid = 52
    feeders.update(anonymous, counts(queue_full=3))
    assert dropped(feeders)["queue_full"] == 5


def test_proxy_errors_are_none_unless_a_process_has_them() -> None:
    feeders = Feeders()
    app = connected(feeders, 61, counts(queue_full=1))
    assert feeders.serving_counts({}).proxy_errors is None
    assert feeders.serving_counts({}).proxy_retries is None
    sidecar = connected(feeders, 62, counts(proxy_errors={"upstream_timeout": 2}, proxy_retries=3))
    connected(
        feeders, 63, counts(proxy_errors={"upstream_timeout": 1, "upstream_refused": 4}, proxy_retries=0)
    )
    total = feeders.serving_counts({})
    assert total.proxy_errors == (("upstream_refused", 4), ("upstream_timeout", 3))
    assert total.proxy_retries == 3
    feeders.remove(sidecar)
    feeders.remove(app)
    assert feeders.serving_counts({}).proxy_errors == (("upstream_refused", 4), ("upstream_timeout", 3))


def test_gauges_come_from_live_processes_only() -> None:
    feeders = Feeders()
    a = connected(feeders, 71, counts(queue_depth=5, queue_bytes=500, worker_lag_s=0.5, sampling_stride=2))
    connected(
        feeders, 72, counts(queue_depth=1, queue_bytes=100, worker_lag_s=0.25, payload_sampling_stride=8)
    )
    total = feeders.serving_counts({})
    assert (total.queue_depth, total.queue_bytes, total.worker_lag_s) == (6, 600, 0.5)
    assert (total.sampling_stride, total.payload_sampling_stride) == (2, 8)
    feeders.remove(a)
    total = feeders.serving_counts({})
    assert (total.queue_depth, total.queue_bytes, total.worker_lag_s) == (1, 100, 0.25)
    assert (total.sampling_stride, total.payload_sampling_stride) == (1, 8)


@pytest.fixture
def small_memory(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(Feeders, "MAX_REMEMBERED", 4)
    return 4


def test_the_remembered_processes_are_bounded_without_losing_counts(small_memory: int) -> None:
    feeders = Feeders()
    for pid in range(100, 130):
        feeders.remove(connected(feeders, pid, counts(queue_full=1, capture_errors=2, proxy_retries=1)))
        if pid % 3 == 0:
            feeders.serving_counts({})
    total = feeders.serving_counts({})
    assert dict(total.dropped)["queue_full"] == 30
    assert total.internal_errors == (("capture", 60),)
    assert total.proxy_retries == 30
    assert len(feeders._last) <= small_memory


def test_many_departures_between_two_reads_do_not_count_a_live_process_twice(small_memory: int) -> None:
    feeders = Feeders()
    live = connected(feeders, 1, counts(queue_full=100))
    assert dropped(feeders)["queue_full"] == 100
    for pid in range(200, 200 + 2 * small_memory):
        feeders.remove(connected(feeders, pid, counts(queue_full=1)))
    assert dropped(feeders)["queue_full"] == 100 + 2 * small_memory
    feeders.update(live, counts(queue_full=101))
    assert dropped(feeders)["queue_full"] == 101 + 2 * small_memory
    feeders.remove(live)
    assert dropped(feeders)["queue_full"] == 101 + 2 * small_memory


# ---- Inbox ------------------------------------------------------------------------------------------


@pytest.fixture
def loop_thread() -> Iterator[tuple[asyncio.AbstractEventLoop, threading.Thread]]:
    """A real event loop running in a thread of its own (the monitor's event-loop thread)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()
    yield loop, thread
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def on_loop(loop: asyncio.AbstractEventLoop, call: Callable[[], None]) -> None:
    """Run `call` on the loop's thread and wait for it (and for anything scheduled before it)."""
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    loop.call_soon_threadsafe(run)
    assert done.wait(5)


class PauseLog:
    def __init__(self, loop_thread: threading.Thread) -> None:
        self.calls: list[bool] = []
        self.threads: set[str] = set()
        self._loop_thread = loop_thread

    def __call__(self, pause: bool) -> None:
        self.calls.append(pause)
        self.threads.add(threading.current_thread().name)


def batch(size: int) -> tuple[Feeder, memoryview]:
    return (Feeder(pid=1), memoryview(b"x" * size))


def test_inbox_pauses_above_its_bound_and_resumes_below_half(
    loop_thread: tuple[asyncio.AbstractEventLoop, threading.Thread],
) -> None:
    loop, thread = loop_thread
    log = PauseLog(thread)
    inbox = Inbox(100 + FLUSH_CHARGE, log)
    inbox.bind(loop)
    items: list[Item] = [batch(40), batch(40), Flush(Feeder(), "f"), batch(40), batch(40)]
    for item in items[:2]:
        on_loop(loop, lambda item=item: inbox.put(item))  # type: ignore[misc]
    assert log.calls == []
    assert inbox.pending_bytes == 80
    on_loop(loop, lambda: inbox.put(items[2]))  # a flush marker weighs its fixed charge
    assert inbox.pending_bytes == 80 + FLUSH_CHARGE
    assert log.calls == []
    on_loop(loop, lambda: inbox.put(items[3]))
    assert log.calls == [True]
    on_loop(loop, lambda: inbox.put(items[4]))
    assert log.calls == [True]  # once, not per batch
    assert inbox.ready.is_set()

    taken: list[Item | None] = []
    analysis = threading.Thread(target=lambda: taken.extend(inbox.take() for _ in range(2)), name="analysis")
    analysis.start()
    analysis.join(5)
    assert inbox.pending_bytes == 80 + FLUSH_CHARGE  # not below half yet
    on_loop(loop, lambda: None)
    assert log.calls == [True]
    analysis = threading.Thread(target=lambda: taken.extend(inbox.take() for _ in range(4)), name="analysis")
    analysis.start()
    analysis.join(5)
    assert inbox.pending_bytes == 0
    on_loop(loop, lambda: None)
    assert log.calls == [True, False]
    assert log.threads == {"test-loop"}  # the resume went through the loop, never the analysis thread
    assert taken == [*items, None]  # in order; an empty inbox answers None
    assert not inbox.ready.is_set()
    # And again.
    for _ in range(5):
        on_loop(loop, lambda: inbox.put(batch(40)))
    assert log.calls == [True, False, True]


def test_inbox_with_a_tiny_bound_resumes_once_drained(
    loop_thread: tuple[asyncio.AbstractEventLoop, threading.Thread],
) -> None:
    """With a bound of one byte, half of it is 0 bytes: an empty inbox still resumes reading."""
    loop, thread = loop_thread
    log = PauseLog(thread)
    inbox = Inbox(1, log)
    inbox.bind(loop)
    on_loop(loop, lambda: inbox.put(batch(10)))
    assert log.calls == [True]
    assert inbox.take() is not None
    on_loop(loop, lambda: None)
    assert log.calls == [True, False]


# ---- TapConnection over a real socket ---------------------------------------------------------------


def raw(path: str) -> RawRecord:
    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    return (scope, "", 1, 0.0, 0.1, 0.2, 0.3, 200, [], [b"{}"], 2, [b"[]"], 2, None, False, None, 1, 1, 0.15)


def records_payload(*paths: str) -> bytes:
    encoder = RecordEncoder((), ())
    parts = [framing.COUNT.pack(len(paths))]
    for path in paths:
        head, bodies = encoder.encode(raw(path))
        parts += [head, *bodies]
    return b"".join(parts)


class Session:
    """One TapConnection on the monitor's side of a socketpair, the serving process's end here."""

    def __init__(self) -> None:
        self.feeders = Feeders()
        self.paused: list[bool] = []
        self.inbox = Inbox(1 << 20, self.paused.append)
        self.changes = 0
        self.peer: socket.socket
        self.connection: TapConnection

    def changed(self) -> None:
        self.changes += 1

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.inbox.bind(loop)
        ours, self.peer = socket.socketpair()
        self.peer.setblocking(False)
        _, protocol = await loop.connect_accepted_socket(
            lambda: TapConnection(self.feeders, self.inbox, self.changed), sock=ours
        )
        assert isinstance(protocol, TapConnection)
        self.connection = protocol

    async def send(self, *messages: bytes, piece: int = 0) -> None:
        data = b"".join(messages)
        loop = asyncio.get_running_loop()
        step = piece or len(data) or 1
        for start in range(0, len(data), step):
            await loop.sock_sendall(self.peer, data[start : start + step])
            if piece:
                await asyncio.sleep(0)

    def drain(self) -> list[Item]:
        items = []
        while (item := self.inbox.take()) is not None:
            items.append(item)
        return items

    async def closed_by_monitor(self) -> bool:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.peer, 100), 5)
        return data == b""


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.002)


@pytest.mark.parametrize("piece", [0, 1, 7])
def test_records_and_flushes_reach_the_inbox_in_order(piece: int) -> None:
    async def main() -> None:
        session = Session()
        await session.open()
        assert session.changes == 1
        feeder = session.connection.feeder
        assert session.feeders.live == [feeder]
        first, second = records_payload("/a", "/b"), records_payload("/c")
        await session.send(
            framing.json_message(framing.HELLO, {"pid": 4242}),
            framing.message(framing.RECORDS, first),
            framing.json_message(framing.FLUSH, {"id": "one"}),
            framing.message(framing.RECORDS, second),
            framing.json_message(framing.COUNTS, counts(queue_full=6)),
            framing.message(framing.COUNTS, b"{not json"),  # ignored
            framing.json_message(framing.COUNTS, [1, 2]),  # not an object: ignored
            framing.json_message(framing.FLUSH, {"id": 7}),
            piece=piece,
        )
        await until(lambda: len(session.inbox) == 4)
        items = session.drain()
        assert [type(item) for item in items] == [tuple, Flush, tuple, Flush]
        assert items[1] == Flush(feeder, "one")
        assert items[3] == Flush(feeder, 7)
        batches = [item for item in items if isinstance(item, tuple)]
        assert [(owner, bytes(payload)) for owner, payload in batches] == [(feeder, first), (feeder, second)]
        paths = [r[0]["path"] for _, payload in batches for r in decode_records(payload)]
        assert paths == ["/a", "/b", "/c"]
        assert feeder.pid == 4242
        assert feeder.received == 3
        total = session.feeders.serving_counts({})
        assert total.feeders == (4242,)
        assert dict(total.dropped)["queue_full"] == 6
        assert feeder.transport is not None
        assert not feeder.transport.is_closing()
        session.peer.close()
        await until(lambda: feeder.transport is None)
        assert session.feeders.live == []
        assert dropped(session.feeders)["queue_full"] == 6  # it left; its counts stay

    asyncio.run(main())


def test_bye_closes_the_connection_after_what_came_before_it() -> None:
    async def main() -> None:
        session = Session()
        await session.open()
        feeder = session.connection.feeder
        await session.send(
            framing.json_message(framing.HELLO, {"pid": 99}),
            framing.message(framing.RECORDS, records_payload("/x")),
            framing.json_message(framing.COUNTS, counts(queue_full=2)),
            framing.message(framing.BYE, b""),
        )
        assert await session.closed_by_monitor()
        await until(lambda: feeder.transport is None)
        assert feeder.leaving
        assert len(session.drain()) == 1
        assert session.feeders.live == []
        assert session.changes == 2
        assert dropped(session.feeders)["queue_full"] == 2
        session.peer.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "broken",
    [
        framing.FRAME.pack(0, framing.RECORDS),  # a zero length
        framing.FRAME.pack(framing.MAX_MESSAGE_BYTES + 1, framing.RECORDS),  # over the maximum
    ],
)
def test_a_broken_frame_closes_the_connection(broken: bytes) -> None:
    async def main() -> None:
        session = Session()
        await session.open()
        feeder = session.connection.feeder
        await session.send(framing.message(framing.RECORDS, records_payload("/ok")))
        await until(lambda: len(session.inbox) == 1)
        await session.send(broken + framing.message(framing.RECORDS, records_payload("/late")))
        assert await session.closed_by_monitor()
        await until(lambda: feeder.transport is None)
        assert session.feeders.live == []
        items = session.drain()
        assert len(items) == 1
        assert isinstance(items[0], tuple)
        assert decode_records(items[0][1])[0][0]["path"] == "/ok"
        session.peer.close()

    asyncio.run(main())


def test_a_hello_without_an_integer_pid_is_ignored() -> None:
    async def main() -> None:
        session = Session()
        await session.open()
        await session.send(
            framing.json_message(framing.HELLO, {"pid": "12"}),
            framing.json_message(framing.FLUSH, {"id": 1}),
        )
        await until(lambda: len(session.inbox) == 1)
        assert session.connection.feeder.pid == 0
        session.peer.close()
        await until(lambda: session.connection.feeder.transport is None)

    asyncio.run(main())


def test_the_inbox_says_how_long_its_oldest_batch_has_waited() -> None:
    paused: list[bool] = []
    inbox = Inbox(1 << 20, paused.append)
    assert inbox.oldest_age_s() == 0.0
    inbox.put((Feeder(), memoryview(b"abc")))
    time.sleep(0.05)
    inbox.put((Feeder(), memoryview(b"def")))
    assert inbox.oldest_age_s() >= 0.05
    inbox.take()
    assert inbox.oldest_age_s() < 0.05
    inbox.take()
    assert inbox.oldest_age_s() == 0.0


def test_a_connection_made_while_the_inbox_is_paused_starts_paused() -> None:
    """A worker restarted (or a tap reconnecting) while the analysis is behind: its connection is
    held back as the others are, or its batches would grow the inbox past its bound (49 times
    it, in a review's run)."""

    async def main() -> None:
        first = Session()
        first.inbox = Inbox(100, first.paused.append)
        await first.open()
        await first.send(framing.message(framing.RECORDS, records_payload("/a", "/b", "/c")))
        await until(lambda: first.inbox.paused)
        assert first.paused == [True]
        loop = asyncio.get_running_loop()
        ours, peer = socket.socketpair()
        transport, protocol = await loop.connect_accepted_socket(
            lambda: TapConnection(first.feeders, first.inbox, first.changed), sock=ours
        )
        assert isinstance(protocol, TapConnection)
        assert protocol.feeder in first.feeders.live
        assert not transport.is_reading()
        peer.close()
        first.peer.close()

    asyncio.run(main())


def test_a_peer_of_another_user_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "peer_is_us", lambda sock: False)

    async def main() -> None:
        session = Session()
        await session.open()
        assert await session.closed_by_monitor()
        assert session.feeders.live == []
        assert session.changes == 0
        assert len(session.inbox) == 0
        session.peer.close()

    asyncio.run(main())


def test_flush_markers_at_the_head_are_taken_together_and_only_those() -> None:
    """Serving processes stopping at once: their flush markers, one after the other, are answered
    by one export; a marker behind a batch waits for the batch to be processed first."""
    inbox = Inbox(1 << 20, lambda pause: None)
    a, b, c = Feeder(), Feeder(), Feeder()
    items: list[Item] = [Flush(a, 1), Flush(b, 2), batch(40), Flush(c, 3)]
    for item in items:
        inbox.put(item)
    first = inbox.take()
    assert first == Flush(a, 1)
    assert inbox.take_flushes() == [Flush(b, 2)]
    assert inbox.pending_bytes == 40 + FLUSH_CHARGE
    assert inbox.take() == items[2]
    assert inbox.take_flushes() == [Flush(c, 3)]
    assert inbox.take_flushes() == []
    assert inbox.pending_bytes == 0
    assert inbox.oldest_age_s() == 0.0
