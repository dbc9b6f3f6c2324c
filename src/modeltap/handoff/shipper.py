"""The serving side of the hand-off: a thread that ships captured records to the monitor.

The request path only appends to the bounded `RecordQueue` (full: drop and count, never wait).
This thread drains it every 20 milliseconds while there is traffic, encodes a batch
(`framing.RecordEncoder`, the body bytes are not copied) and writes it with one `sendmsg`. It
also sends this process's own counts, asks for flushes, and applies the monitor's control
messages. When no monitor answers it starts one (`Rendezvous.spawn_monitor`); records wait in
the queue meanwhile, and those lost because the monitor went away (dropped while it was
unreachable, or sent and never acknowledged) are counted as `monitor_unavailable`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from modeltap._version import __version__
from modeltap.capture.record_queue import RecordQueue
from modeltap.handoff import framing
from modeltap.handoff.rendezvous import Rendezvous, peer_is_us

_log = logging.getLogger("modeltap")
BATCH_RECORDS = 256
BATCH_BYTES = 4 * 1024 * 1024
MAX_IOV = 1000  # below Linux's IOV_MAX (1024) buffers per sendmsg
# Between turns. Each turn costs the serving process a wake-up of this thread (the interpreter
# handed over, a send) and the monitor one of each of its threads, whatever the batch holds:
# under wrk, 20 ms instead of 5 took this thread from 2.3-2.6 to 1.4 µs a request for the
# reference app and from 7.1-7.4 to 3.5 µs for the logistic regression (fewer requests a turn),
# and the monitor from 12 to 10 and from 35-39 to 29-33 µs a record. Records wait at most this
# long for the monitor; flushes and stops wake the thread at once.
WAIT_S = 0.02
# Shipping per turn of the thread's loop: under sustained load the queue never empties, and each
# turn must still send the counts and flush requests and read the monitor's control messages.
TURN_S = 0.05
COUNTS_INTERVAL_S = 0.5
SEND_TIMEOUT_S = 5.0
# Monitors that exit with an error before one ever took a connection: then analyse inline.
MAX_FAILED_STARTS = 3
CONNECT_TIMEOUT_S = 1.0


class Shipper:
    """Example::

    shipper = Shipper(place, document, queue, encoder, counts=tap.counts_document,
                      on_control=tap.apply_control)
    shipper.start()
    shipper.flush(5.0)      # everything shipped, processed, published and exported
    shipper.stop(5.0)
    """

    def __init__(
        self,
        place: Rendezvous,
        config_document: Any,
        queue: RecordQueue,
        encoder: framing.RecordEncoder,
        *,
        counts: Callable[[], dict[str, Any]],
        on_control: Callable[[dict[str, Any]], None],
        hello: dict[str, Any] | None = None,
        spawn: bool = True,
        before_batch: Callable[[list[Any]], None] | None = None,
        on_give_up: Callable[[str], None] | None = None,
        after_ship: Callable[[], None] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self._place = place
        self._document = config_document
        self._queue = queue
        self._encoder = encoder
        self._counts = counts
        self._on_control = on_control
        self._hello = {"pid": os.getpid(), "version": __version__, **(hello or {})}
        self._spawn = spawn
        self._before_batch = before_batch
        self._on_give_up = on_give_up
        self.gave_up: str | None = None
        self._warned_peer = False
        self._failed_starts = 0
        self._after_ship = after_ship  # once per turn, after shipping (the tap's overload sampling)
        self._pass_fds = pass_fds
        self._sock: socket.socket | None = None
        self._reader = framing.FrameReader()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._flush_requests: list[tuple[int, threading.Event]] = []
        self._flush_waiting: dict[int, threading.Event] = {}
        self._flush_ids = 0
        self._spawned: subprocess.Popen[bytes] | None = None
        self._spawned_at = 0.0
        self._next_connect = 0.0
        self._last_counts = 0.0
        # Cumulative counts as last reported, and as the previous monitor last knew them: each
        # monitor's series counts from where the one before it stopped (see `since`).
        self._reported: dict[str, Any] = {}
        self._baseline: dict[str, Any] = {}
        # Counts written on this connection that the monitor has not answered since: a monitor
        # killed (or paused) before reading them never knew them.
        self._written: dict[str, Any] | None = None
        # Records sent and acknowledged on the current connection (the rest die with it).
        self._sent = 0
        self._acked = 0
        self.lost = 0  # records sent to a monitor that went away before processing them
        self.connections = 0
        self.control: dict[str, Any] = {}

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modeltap-shipper", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def push_counts(self) -> None:
        """Send this process's counts now (a state the monitor must see at once: draining)."""
        self._last_counts = 0.0
        self.wake()

    def wait_for_monitor(self, timeout_s: float) -> bool:
        """Wait for the monitor this process started (if it did) to exit; True if it has."""
        spawned = self._spawned
        if spawned is None:
            return True
        try:
            spawned.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def flush(self, timeout_s: float) -> bool:
        """Ship everything queued, and wait until the monitor processed, published and exported it."""
        done = threading.Event()
        with self._lock:
            self._flush_ids += 1
            self._flush_requests.append((self._flush_ids, done))
        self.wake()
        return done.wait(timeout_s)

    def stop(self, timeout_s: float) -> None:
        """Ship what is queued (bounded by `timeout_s`), say goodbye and close."""
        thread = self._thread
        if thread is None:
            return
        self._stop_deadline = time.monotonic() + max(0.0, timeout_s)
        self._stop.set()
        self.wake()
        thread.join(max(0.0, timeout_s) + 0.5)
        self._thread = None

    # ---- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        busy = False
        while True:
            stopping = self._stop.is_set()
            try:
                if self._sock is None and not self._connect():
                    # Stopping with records still queued: a monitor that is starting gets them,
                    # within the stop's bound.
                    if stopping and (not self._queue.depth or time.monotonic() >= self._stop_deadline):
                        return
                    self._wait(WAIT_S)
                    continue
                busy = self._ship()
                if self._after_ship is not None:
                    self._after_ship()
                self._send_counts(force=stopping)
                self._send_flushes()
                if stopping:
                    if self._queue.depth and busy:
                        continue  # more than a turn's batches queued: all of them go before goodbye
                    self._goodbye()
                    return
                self._wait(WAIT_S)
            except Exception:
                _log.exception("modeltap shipper iteration failed")
                self._disconnect()
                if stopping:
                    return
                self._wait(WAIT_S)

    def _wait(self, timeout_s: float) -> None:
        """Sleep until the timeout, a wake-up, or a message from the monitor (read here)."""
        sock = self._sock
        watched = [self._wake_r] if sock is None else [self._wake_r, sock]
        try:
            readable, _, _ = select.select(watched, [], [], timeout_s)
        except (OSError, ValueError):
            self._disconnect()
            return
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        if sock is not None and sock in readable:
            self._receive()

    # ---- connecting -----------------------------------------------------------------------------

    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self._next_connect or self.gave_up is not None:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(self._place.ingest_socket))
        except OSError as exc:
            sock.close()
            self._queue.unavailable = True
            self._maybe_spawn(exc)
            self._next_connect = now + 0.05
            return False
        if not peer_is_us(sock):
            # Someone else's process behind our socket's name: never hand it the exchanges.
            sock.close()
            self._queue.unavailable = True
            if not self._warned_peer:
                self._warned_peer = True
                _log.warning(
                    "modeltap: the process at %s runs as another user; not sending it anything",
                    self._place.ingest_socket,
                )
            self._next_connect = now + 1.0
            return False
        sock.settimeout(SEND_TIMEOUT_S)
        self._sock = sock
        self._reader = framing.FrameReader()
        self._sent = self._acked = 0
        self.connections += 1
        self._queue.unavailable = False
        try:
            self._send([framing.json_message(framing.HELLO, self._hello)])
        except OSError:
            self._disconnect()
            return False
        self._last_counts = 0.0
        return True

    def _maybe_spawn(self, error: OSError) -> None:
        """Start a monitor when none holds the server's lock (one that is starting holds it)."""
        if not self._spawn or error.errno not in (errno.ENOENT, errno.ECONNREFUSED):
            return
        spawned = self._spawned
        if spawned is not None and spawned.poll() is not None:
            self._spawned = None  # reap it: it exited (it lost the lock, or stopped)
            if spawned.returncode != 0 and not self.connections:
                self._failed_starts += 1
                if self._failed_starts >= MAX_FAILED_STARTS:
                    self._give_up(f"the monitor process exited with status {spawned.returncode} at start-up")
                    return
        if self._place.monitor_alive():
            return
        if time.monotonic() - self._spawned_at < 1.0:
            return  # ours was started a moment ago and has not taken the lock yet
        try:
            self._spawned = self._place.spawn_monitor(self._document, self._pass_fds)
            self._spawned_at = time.monotonic()
        except OSError as exc:
            self._spawned = None
            self._give_up(f"cannot start the monitor process: {exc}")

    def _give_up(self, reason: str) -> None:
        """No monitor can run here: the tap analyses in its own process from now on."""
        self.gave_up = reason
        self._stop.set()
        with self._lock:  # no monitor will answer these
            for _, done in self._flush_requests:
                done.set()
            self._flush_requests.clear()
        if self._on_give_up is not None:
            try:
                self._on_give_up(reason)
            except Exception:
                _log.exception("modeltap: falling back to the inline analysis failed")

    def abandon_after_fork(self) -> None:
        """In a child forked from the process that runs this shipper (its thread did not come
        along): close the inherited sockets, send nothing. A helper the server forked (a
        `multiprocessing` child, a pre-forking library) would otherwise hold the connection to
        the monitor open, and the monitor, which leaves when its last connection ends, would
        outlive a killed server for as long as the helper lives."""
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._sock = None
        self._spawned = None  # the parent's child, not ours to wait for

    def _disconnect(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self._read_what_is_left(sock)
        self._sock = None
        self._queue.unavailable = True
        # What the monitor that went away had been told dies with its series; the next monitor's
        # series starts from here, and counts the loss (records sent, never processed) below.
        self._baseline = self._reported
        self._written = None
        self.lost += max(0, self._sent - self._acked)
        self._sent = self._acked = 0
        with contextlib.suppress(OSError):
            sock.close()
        # Waiting flushes will not be answered by this monitor: ask the next one.
        with self._lock:
            for ident, done in self._flush_waiting.items():
                self._flush_requests.append((ident, done))
            self._flush_waiting.clear()

    # ---- sending --------------------------------------------------------------------------------

    def _send(self, buffers: list[bytes], total: int = -1) -> None:
        """Write all of `buffers` (`total`: their size, if known); one `sendmsg` in the usual case."""
        sock = self._sock
        assert sock is not None
        if total < 0:
            total = sum(map(len, buffers))
        start = 0  # buffers[:start] are written; `offset` bytes of buffers[start] too
        offset = 0
        while total > 0:
            chunk: list[Any] = buffers[start : start + MAX_IOV]
            if offset:
                chunk[0] = memoryview(chunk[0])[offset:]
            try:
                sent = sock.sendmsg(chunk)
            except TimeoutError:
                # A monitor that still holds its lock is slow (back-pressure, or paused by its
                # host), not gone: wait on. Dropping the connection would count as lost the
                # records it has yet to process, and then process them (counted twice).
                if self._place.monitor_alive():
                    continue
                raise
            total -= sent
            if total <= 0:
                return  # the usual case: no walk over a batch's buffers, one per record
            # Skip the buffers written in full; a partial one continues at its offset.
            sent += offset
            offset = 0
            while start < len(buffers) and sent >= len(buffers[start]):
                sent -= len(buffers[start])
                start += 1
            offset = sent

    def _ship(self) -> bool:
        """Send what is queued, in batches, for at most TURN_S; True if anything was sent."""
        queue = self._queue
        shipped = False
        turn_ends = time.monotonic() + TURN_S
        while self._sock is not None and time.monotonic() < turn_ends:
            # Bounded in bytes too: a batch of large bodies to a slow monitor is one long send.
            batch = queue.drain(BATCH_RECORDS, BATCH_BYTES)
            if not batch:
                return shipped
            queue.worker_held_bytes = queue.drained_bytes
            if self._before_batch is not None:
                self._before_batch(batch)
            try:
                buffers: list[bytes] = [b"", framing.COUNT.pack(len(batch))]
                total = framing.COUNT.size
                total += self._encoder.encode_batch(batch, buffers)
                buffers[0] = framing.FRAME.pack(total + 1, framing.RECORDS)
                total += framing.FRAME.size
                count = len(batch)
                del batch
                try:
                    self._send(buffers, total)
                except OSError:
                    self.lost += count
                    self._disconnect()
                    return shipped
                self._sent += count
                shipped = True
            finally:
                queue.worker_held_bytes = 0
        return shipped

    def _send_counts(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._sock is None or (not force and now - self._last_counts < COUNTS_INTERVAL_S):
            return
        self._last_counts = now
        counts = self._counts()
        try:
            self._send([framing.json_message(framing.COUNTS, since(counts, self._baseline))])
        except OSError:
            self._disconnect()
            return
        self._written = counts  # reported once the monitor answers (see `_handle`)

    def _send_flushes(self) -> None:
        with self._lock:
            requests, self._flush_requests = self._flush_requests, []
        if not requests:
            return
        self._send_counts(force=True)
        for ident, done in requests:
            if self._sock is None:
                with self._lock:
                    self._flush_requests.append((ident, done))
                continue
            try:
                self._send([framing.json_message(framing.FLUSH, {"id": ident})])
            except OSError:
                with self._lock:
                    self._flush_requests.append((ident, done))
                self._disconnect()
                continue
            with self._lock:
                self._flush_waiting[ident] = done

    def _goodbye(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            # How long the monitor may take to export what this process sent (its exit is bounded).
            within = max(0.0, self._stop_deadline - time.monotonic())
            self._send([framing.json_message(framing.BYE, {"within_s": within})])
            self._sock.shutdown(socket.SHUT_WR)
            # Wait (briefly) for the monitor to read everything before the socket goes.
            self._sock.settimeout(1.0)
            while self._sock.recv(65536):
                pass
        self._disconnect()

    # ---- receiving ------------------------------------------------------------------------------

    def _receive(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._disconnect()
            return
        if not data:
            self._disconnect()
            return
        try:
            messages = self._reader.feed(data)
        except ValueError:
            self._disconnect()
            return
        for kind, payload in messages:
            self._handle(kind, payload)

    def _read_what_is_left(self, sock: socket.socket) -> None:
        """What the monitor wrote before the connection ended (a failed send may end it first):
        its last acknowledgement says which records it processed, not to be counted as lost."""
        with contextlib.suppress(OSError, ValueError):
            sock.setblocking(False)
            for _ in range(64):  # bounded: a connection that keeps writing is not drained for ever
                data = sock.recv(65536)
                if not data:
                    break
                for kind, payload in self._reader.feed(data):
                    self._handle(kind, payload)

    def _handle(self, kind: int, payload: memoryview) -> None:
        # The monitor answered after the last counts were written: it has read them. Counts only
        # written never become the next monitor's baseline: a connection that a dying monitor's
        # listener accepted, or a monitor paused and then killed, would otherwise take with it
        # increments (the loss of its death among them) that no monitor ever counted.
        if self._written is not None:
            self._reported, self._written = self._written, None
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(document, dict):
            return
        if kind == framing.FLUSHED:
            acked = document.get("records")
            if isinstance(acked, int):
                self._acked = max(self._acked, acked)
            with self._lock:
                done = self._flush_waiting.pop(document.get("id"), None)  # type: ignore[arg-type]
            if done is not None:
                done.set()
        elif kind == framing.CONTROL:
            acked = document.pop("records", None)
            if isinstance(acked, int):
                self._acked = max(self._acked, acked)
            if document:
                self.control = document
                try:
                    self._on_control(document)
                except Exception:
                    _log.exception("modeltap: applying a control message failed")


def since(counts: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Cumulative counts relative to what an earlier monitor was told: counters (numbers, and
    numbers by reason) are reduced by the baseline; everything else (gauges, flags) is as is."""
    if not baseline:
        return counts
    relative: dict[str, Any] = {}
    for key, value in counts.items():
        before = baseline.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            relative[key] = {k: v - before.get(k, 0) for k, v in value.items()}
        elif key in _COUNTERS and isinstance(value, int) and isinstance(before, int):
            relative[key] = value - before
        else:
            relative[key] = value
    return relative


# Cumulative numbers of a serving process's counts (the others are gauges or flags).
_COUNTERS = frozenset({"proxy_retries", "connect_failures"})
