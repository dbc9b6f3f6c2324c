"""The monitor process: one per server, beside it, doing everything but capture.

It holds the server's lock (one monitor per key), listens on the ingest socket for the serving
processes' record batches and on the views socket for `/status`, `/metrics` and the page,
analyses on a thread of its own (decode, statistics, spans, OTLP export), and tells the serving
processes how much to sample. It runs at a lower CPU priority, optionally pinned
(`MODELTAP_MONITOR_CPUS`), and sheds work rather than grow past its memory budget.

Lifetime: it exits (after a flush bounded by `shutdown_timeout_s`) shortly after its last serving
process left, or if none connects within `FIRST_FEEDER_WAIT_S`; when those were workers of a
supervisor that still runs, it waits up to `LINGER_WHILE_SERVER_S` for their replacement.
SIGTERM or SIGINT (the server's process group being stopped) make it wait for the serving
processes to leave, bounded, so their last records are flushed once; a second signal stops it
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Generator
from typing import Any

import uvicorn
from opentelemetry.sdk.resources import Resource

from modeltap.alerts.rollback import rollback_endpoints
from modeltap.config import ModelTapConfig
from modeltap.export.local_views import LocalViews
from modeltap.guarded.protocol import ClientLimits, admin_protocol
from modeltap.handoff import framing
from modeltap.handoff.rendezvous import Rendezvous
from modeltap.monitor.admin import MAX_NOTED_FAILURES, AdminApp, Readiness, admin_views
from modeltap.monitor.ingest import Feeder, Feeders, Flush, Inbox, TapConnection
from modeltap.monitor.resources import MemoryGuard, lower_priority
from modeltap.operations.proc_stat import stat_fields
from modeltap.operations.process_resources import ResourceSampler
from modeltap.reference.document import load_reference
from modeltap.snapshot import ServingCounts
from modeltap.worker.analyzer import Analyzer
from modeltap.worker.budget import CpuBudget

_log = logging.getLogger("modeltap.monitor")
# After the last serving process left: cleanly (it said goodbye: a stop, or a worker restart
# that other workers survive), or abruptly (a crash its supervisor may repair in a moment).
LINGER_AFTER_GOODBYE_S = 0.25
LINGER_AFTER_LOSS_S = 2.0
# ... unless the server those processes were workers of still runs: then one is being replaced
# (gunicorn's --max-requests, a crash its supervisor repairs, a worker loading its model), and
# the monitor waits this long for it, so that the server's series, windows and alerts go on.
LINGER_WHILE_SERVER_S = 60.0
# A flush a serving process asked for waits at most this long for the collector.
FLUSH_EXPORT_S = 5.0
FIRST_FEEDER_WAIT_S = 30.0
DRAIN_S = 20.0  # after SIGTERM, the longest wait for the serving processes to leave
CONTROL_INTERVAL_S = 0.2
BATCH = 256
INBOX_BYTES = 64 * 1024 * 1024


class _ViewsServer(uvicorn.Server):
    """uvicorn without its own signal handling: the monitor decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Monitor:
    """Example::

    place = Rendezvous(Path(run_dir), key)
    document = place.read_config()
    sys.exit(Monitor(place, document).run())
    """

    def __init__(self, place: Rendezvous, document: dict[str, Any], lock_fd: int = -1) -> None:
        from modeltap.config import config_from_document

        self.place = place
        self.config: ModelTapConfig = config_from_document(document["config"])
        self._document = document
        self._server = _ServerProcess.named(document.get("server_pid"))
        self._flush_failed_at: float | None = None  # when the last flush's export failed
        self.feeders = Feeders()
        self.inbox = Inbox(min(INBOX_BYTES, self.config.queue_max_bytes), self._pause_reading)
        self.control: dict[str, float] = {}
        self._budget = CpuBudget(self.config.worker_cpu_budget)
        self._payload_stride = 1
        self._memory = MemoryGuard(self.config.monitor_memory_bytes)
        self._resources = ResourceSampler("monitor")
        self._stopping = threading.Event()
        self._terminating_at: float | None = None
        self._connections: list[TapConnection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.analyzer: Analyzer | None = None
        self.readiness: Readiness | None = None
        self._connect_failures = 0
        self._lock_fd = lock_fd  # taken already by the entry point, or by `run`

    # ---- entry point ----------------------------------------------------------------------------

    def run(self) -> int:
        if self._lock_fd < 0 and not self._take_lock():
            return 0  # another monitor serves this key
        lower_priority()
        config = self.config
        reference = load_reference(config.reference) if config.reference else None
        self.analyzer = Analyzer(config, reference, mode="process")
        admin = self._document.get("admin")
        if isinstance(admin, dict) and isinstance(admin.get("status_url"), str):
            self.analyzer.status_url = self.analyzer.alertmanager.status_url = admin["status_url"]
        if isinstance(admin, dict) and isinstance(admin.get("fallback_upstream"), str):
            # A sidecar with a rollback switch: this monitor asks its data planes to turn it.
            auto = str(admin.get("auto_rollback", "off"))
            self.analyzer.rollback.configure(admin["fallback_upstream"], auto)
            # A request goes to the data planes at once, not at the next control message.
            self.analyzer.rollback.on_request = self._send_control
        resource = self._document.get("resource")
        self.analyzer.start(
            base_resource=Resource(resource) if isinstance(resource, dict) else None,
            # With the app's own tracer provider, spans are built and sent in the serving process.
            build_spans=not self._document.get("local_spans", False),
        )
        try:
            asyncio.run(self._serve())
        finally:
            self._remove_files()
        return 0

    def _take_lock(self) -> bool:
        fd = os.open(self.place.lock_file, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd  # held until the process exits
        return True

    def _unlink_sockets(self) -> None:
        # Only while holding the lock: the sockets are this monitor's, not a successor's.
        for path in (self.place.ingest_socket, self.place.views_socket):
            with contextlib.suppress(OSError):
                path.unlink()

    def _remove_files(self) -> None:
        """At exit, still holding the lock: nothing of this server is left in the run directory.
        (A successor that opened the lock file just before it went finds the lock held, exits,
        and its serving process starts another: a moment's delay, never two monitors.)"""
        self._unlink_sockets()
        for path in (self.place.config_file, self.place.lock_file):
            with contextlib.suppress(OSError):
                path.unlink()

    # ---- the event loop -------------------------------------------------------------------------

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.inbox.bind(loop)
        self._unlink_sockets()  # stale ones from a monitor that died (we hold the lock now)
        previous = os.umask(0o077)
        try:
            ingest = await loop.create_unix_server(self._connection, path=str(self.place.ingest_socket))
            views = self._views_server()
            views_task = loop.create_task(views.serve())
        finally:
            os.umask(previous)
        admin = self._admin_server()
        admin_task = None
        if admin is not None:
            server, sock = admin
            if self.readiness is not None:
                await self.readiness.first_probe()  # probes wait in the backlog meanwhile
            admin_task = loop.create_task(server.serve(sockets=[sock]))
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._terminate)
        analysis = threading.Thread(target=self._analyze, name="modeltap-monitor-analysis", daemon=True)
        analysis.start()
        try:
            await self._lifetime()
        finally:
            ingest.close()
            views.should_exit = True
            if admin is not None:
                admin[0].should_exit = True
            if self.readiness is not None:
                self.readiness.stop()
            # Serving processes still connected (the drain ran out) keep their connections until
            # what they sent is processed, exported and acknowledged below; reading stops now,
            # so what they send from here on is theirs to count as lost.
            self._pause_reading(True)
            self._stopping.set()
            self.inbox.ready.set()
            deadline = time.monotonic() + self.config.export.shutdown_timeout_s
            if self.feeders.export_deadline is not None:
                # A serving process that left is bounding its own exit: finish within its time.
                deadline = min(deadline, max(self.feeders.export_deadline, time.monotonic() + 0.5))
            await loop.run_in_executor(None, analysis.join, max(0.1, deadline - time.monotonic()))
            assert self.analyzer is not None
            await loop.run_in_executor(None, self.analyzer.shutdown, deadline - time.monotonic())
            for connection in list(self._connections):
                feeder = connection.feeder
                if feeder.transport is not None:
                    # The last acknowledgement, then the close: a tap counts as lost only what
                    # was never processed (it counted the processed and exported ones too).
                    final = framing.json_message(framing.CONTROL, {"records": feeder.processed})
                    with contextlib.suppress(RuntimeError, OSError):
                        feeder.transport.write(final)
                    feeder.transport.close()
            for task in (views_task, admin_task):
                if task is not None:
                    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                        await asyncio.wait_for(task, 2.0)

    def _views_server(self) -> _ViewsServer:
        assert self.analyzer is not None
        config = self.config
        app = LocalViews(
            "",
            self.analyzer.latest_snapshot,
            model_name=config.model_name,
            trust_peer=True,
            feedback=self.analyzer.feedback,
            writes=self.analyzer.writes(),
            reads=self.analyzer.reads(),
        )
        settings = uvicorn.Config(
            app,
            uds=str(self.place.views_socket),
            lifespan="off",
            log_level="warning",
            access_log=False,
            loop="asyncio",
            http="h11",
        )
        return _ViewsServer(settings)

    def _admin_server(self) -> tuple[_ViewsServer, socket.socket] | None:
        """The sidecar's admin port, when the sidecar passed its listening socket to us."""
        admin = self._document.get("admin")
        if not isinstance(admin, dict):
            return None
        assert self.analyzer is not None
        config = self.config
        try:
            sock = socket.socket(fileno=int(admin["fd"]))
        except (KeyError, ValueError, OSError) as exc:
            _log.error("modeltap monitor: the admin port was not handed over: %s", exc)
            return None
        fallback = admin.get("fallback_address")
        readiness = self.readiness = Readiness(
            str(admin["upstream_host"]),
            int(admin["upstream_port"]),
            interval_s=float(admin["probe_interval_s"]),
            failures_to_fail=int(admin["readiness_failures"]),
            timeout_s=float(admin["probe_timeout_s"]),
            fallback=(str(fallback[0]), int(fallback[1])) if isinstance(fallback, list) else None,
        )
        readiness.start()
        analyzer = self.analyzer
        views = admin_views(
            analyzer.latest_snapshot, config, analyzer.feedback, analyzer.writes(), analyzer.reads()
        )
        views.writes.update(rollback_endpoints(analyzer.rollback, self.feeders.route_report))
        settings = uvicorn.Config(
            AdminApp(views, readiness),
            # The proxy port's client limits, as the sidecar handed them over: the admin port
            # may face the network (the container image binds it on every interface).
            http=admin_protocol(ClientLimits.handed(admin.get("client_limits"))),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,  # never rewrite the peer: the views' access check reads it
            loop="none",
        )
        return _ViewsServer(settings), sock

    def _follow_serving(self) -> None:
        """Readiness from what the serving processes report: draining, and connect failures."""
        readiness = self.readiness
        if readiness is None:
            return
        readiness.draining = self.feeders.any_live("draining")
        route = self.feeders.route_report()
        readiness.use_fallback = route is not None and route.active
        failures = self.feeders.total("connect_failures")
        for _ in range(min(MAX_NOTED_FAILURES, failures - self._connect_failures)):
            readiness.note_connect_failure()
        self._connect_failures = max(self._connect_failures, failures)

    def _connection(self) -> TapConnection:
        connection = TapConnection(self.feeders, self.inbox, self._feeders_changed)
        self._connections.append(connection)
        return connection

    def _feeders_changed(self) -> None:
        self._connections = [c for c in self._connections if c.feeder.transport is not None]

    def _pause_reading(self, pause: bool) -> None:
        if not pause and self._stopping.is_set():
            return  # leaving: what the inbox drains makes no room for more
        for connection in self._connections:
            transport = connection.feeder.transport
            if transport is not None:
                with contextlib.suppress(RuntimeError):
                    transport.pause_reading() if pause else transport.resume_reading()

    def _terminate(self) -> None:
        if self._terminating_at is not None:
            self._terminating_at = -DRAIN_S  # a second signal: stop now
            return
        self._terminating_at = time.monotonic()
        _log.info("modeltap monitor: stopping once the serving processes have left (at most %.0f s)", DRAIN_S)

    async def _lifetime(self) -> None:
        started = time.monotonic()
        empty_since: float | None = None
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            live = len(self.feeders.live)
            if live:
                empty_since = None
            elif empty_since is None:
                empty_since = now
            if empty_since is not None:
                linger = LINGER_AFTER_GOODBYE_S if self.feeders.last_left_cleanly else LINGER_AFTER_LOSS_S
                if self._server is not None and self._server.runs():
                    linger = LINGER_WHILE_SERVER_S
                if self.feeders.ever_connected and now - empty_since >= linger:
                    return
                if not self.feeders.ever_connected and now - started >= FIRST_FEEDER_WAIT_S:
                    return
            if self._terminating_at is not None and (live == 0 or now - self._terminating_at >= DRAIN_S):
                return
            self._memory.check(now)
            self._follow_serving()

    # ---- the analysis thread --------------------------------------------------------------------

    def _analyze(self) -> None:
        analyzer = self.analyzer
        assert analyzer is not None
        interval = self.config.snapshot_interval_s
        next_publish = next_control = 0.0
        while True:
            item = self.inbox.take()
            now = time.monotonic()
            try:
                if item is None:
                    if self._stopping.is_set():
                        break
                    self.inbox.ready.wait(min(interval, CONTROL_INTERVAL_S))
                elif isinstance(item, Flush):
                    self._flush([item, *self.inbox.take_flushes()])
                else:
                    self._process(*item)
                if now >= next_publish:
                    analyzer.publish(self._serving_counts())
                    # WARNING's response: snapshots (and alert evaluations) twice as often.
                    next_publish = now + (interval / 2 if analyzer.boosted(now) else interval)
                if now >= next_control:
                    self._send_control()
                    next_control = now + CONTROL_INTERVAL_S
            except Exception:
                analyzer.errors["monitor"] += 1
                _log.exception("modeltap monitor: analysis step failed")
        analyzer.publish(self._serving_counts(), current_scores=True)

    def _serving_counts(self) -> ServingCounts:
        counts = self.feeders.serving_counts(self.control)
        # The backlog is the serving processes' queues and this monitor's inbox together: a
        # monitor that falls behind shows it in `queue_bytes` and `worker_lag_s`.
        counts = dataclasses.replace(
            counts,
            queue_bytes=counts.queue_bytes + self.inbox.pending_bytes,
            worker_lag_s=max(counts.worker_lag_s, self.inbox.oldest_age_s()),
        )
        if self._memory.shed_records:
            dropped = {**dict(counts.dropped), "monitor_memory": self._memory.shed_records}
            counts = dataclasses.replace(counts, dropped=tuple(sorted(dropped.items())))
        # What the monitor itself costs, beside what the serving processes report.
        return dataclasses.replace(counts, resources=(*counts.resources, self._resources.sample()))

    def _process(self, feeder: Feeder, payload: memoryview) -> None:
        analyzer = self.analyzer
        assert analyzer is not None
        started = self._budget.measure()
        try:
            records, groups = framing.decode_grouped(payload)
        except ValueError:
            analyzer.errors["decode_batch"] += 1
            return
        if self._memory.shedding:
            records = self._memory.shed(records)  # groups hold no payload
        for start in range(0, len(records), BATCH):
            analyzer.process(records[start : start + BATCH])
        exchanges = len(records) + analyzer.process_timed(groups)
        feeder.processed += exchanges
        self._budget.charge(started, exchanges)
        self._payload_stride = self._budget.next_stride(self._payload_stride)

    def _flush(self, flushes: list[Flush]) -> None:
        """One export for these flush markers (taken together), then each one answered. An export
        that failed less than FLUSH_EXPORT_S ago is not tried again: with the collector down, every
        worker of a stopping server (or each one recycled) held the analysis for a whole export
        timeout; the periodic export sends the same cumulative numbers once it is back."""
        analyzer = self.analyzer
        assert analyzer is not None
        analyzer.publish(self._serving_counts(), current_scores=True)
        now = time.monotonic()
        if self._flush_failed_at is not None and now - self._flush_failed_at < FLUSH_EXPORT_S:
            ok = False
        else:
            ok = analyzer.flush_export(min(self.config.export.timeout_s, FLUSH_EXPORT_S))
            self._flush_failed_at = None if ok else time.monotonic()
        for flush in flushes:
            reply = framing.json_message(
                framing.FLUSHED, {"id": flush.ident, "records": flush.feeder.processed, "ok": ok}
            )
            self._write(flush.feeder, reply)

    def _send_control(self) -> None:
        stride = self._payload_stride * (4 if self._memory.shedding else 1)
        now = time.monotonic()
        boosted = self.analyzer is not None and self.analyzer.boosted(now)
        if boosted and not self._memory.shedding:
            stride = max(1, stride // 2)  # WARNING: decode up to twice as many payloads
        ratio = self.analyzer.boost_trace_ratio(now) if self.analyzer is not None else None
        self.control = {"payload_stride": float(stride)} if stride > 1 else {}
        if boosted and ratio is not None:
            self.control["trace_ratio"] = ratio
        rollback = self.analyzer.rollback if self.analyzer is not None else None
        for feeder in self.feeders.snapshot_live():
            document: dict[str, Any] = {"records": feeder.processed, "payload_stride": stride}
            if ratio is not None:
                document["trace_ratio"] = ratio
            # The rollback switch, to each data plane that does not follow the last request yet.
            route = rollback.pending_for(feeder.counts.get("route")) if rollback is not None else None
            if route is not None:
                document["route"] = route
            self._write(feeder, framing.json_message(framing.CONTROL, document))

    def _write(self, feeder: Feeder, data: bytes) -> None:
        loop = self._loop
        transport = feeder.transport
        if loop is None or transport is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_write_if_open, transport, data)


def _write_if_open(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


@dataclasses.dataclass(frozen=True)
class _ServerProcess:
    """The server the serving processes are workers of (their supervisor), told apart from a
    later process that reuses its pid by its start time."""

    pid: int
    started: str

    @classmethod
    def named(cls, pid: object) -> _ServerProcess | None:
        """The server process `pid` names, if it runs now and is not this monitor."""
        if type(pid) is not int or pid <= 0 or pid == os.getpid():
            return None
        started = _start_time(pid)
        return cls(pid, started) if started is not None else None

    def runs(self) -> bool:
        return _start_time(self.pid) == self.started


def _start_time(pid: int) -> str | None:
    """A live process's start time (`/proc/<pid>/stat`, field 22), None once it has exited (or
    is a zombie) or where /proc cannot tell."""
    fields = stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]
