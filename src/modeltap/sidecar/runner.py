"""Assemble and run the sidecar: proxy port and admin port on one event loop, graceful drain.

SIGTERM (or Ctrl-C): readiness fails at once; requests are still served for `drain_delay_s`
(with `Connection: close`, so keep-alive clients move on while the endpoint is removed); then the
proxy port stops accepting and in-flight requests get `drain_timeout_s`; then telemetry is flushed
within `export.shutdown_timeout_s`; then the process exits. A second signal skips the waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from modeltap.alerts.rollback import RouteCommand, rollback_endpoints, route_report
from modeltap.config import ModelTapConfig
from modeltap.errors import ConfigError
from modeltap.guarded.protocol import ClientLimits, admin_protocol, protocol_class
from modeltap.middleware.asgi import ModelTapMiddleware
from modeltap.monitor.admin import AdminApp, Readiness, admin_views
from modeltap.sidecar.direct import DirectPath
from modeltap.sidecar.failure_log import FailureLog
from modeltap.sidecar.headers import TrustedPeers
from modeltap.sidecar.proxy import ProxyApp, ProxyLimits
from modeltap.sidecar.route import FALLBACK, RouteState, UpstreamRoute
from modeltap.sidecar.settings import SidecarSettings
from modeltap.sidecar.upstream import UpstreamPool
from modeltap.snapshot import RouteReport

if TYPE_CHECKING:
    from modeltap.worker.analyzer import Analyzer

_log = logging.getLogger("modeltap.sidecar")
# Set by the supervisor for the data planes it starts: "proxy_fd,admin_fd" they inherit.
WORKER_SOCKETS_VARIABLE = "MODELTAP_SIDECAR_WORKER_SOCKETS"
# After the proxy stopped, its exit waits for the monitor's final flush until the flush bound it
# gave the monitor, and this much more (the monitor's own start and stop).
MONITOR_EXIT_MARGIN_S = 0.5
# How long the tasks left at the exit get to end once cancelled.
LEFTOVER_WAIT_S = 2.0
# Upstream failures are logged once per code per this many seconds (with their count).
FAILURE_LOG_INTERVAL_S = 10.0


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: the sidecar orchestrates shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def listen(host: str, port: int, what: str, *, reuse_port: bool = False) -> socket.socket:
    """Bind now, so a port in use is one clear error at start-up. `reuse_port`: one of several
    sockets on the port, the kernel spreading connections over them (several data planes)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}", what) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Sidecar:
    """The assembled sidecar. `await sidecar.serve()` runs until `stop()` (or a signal)."""

    def __init__(
        self, settings: SidecarSettings, monitoring: ModelTapConfig, run_directory: Path | None = None
    ) -> None:
        self.settings = settings
        self.readiness = Readiness(
            settings.upstream_host,
            settings.upstream_port,
            interval_s=settings.probe_interval_s,
            failures_to_fail=settings.readiness_failures,
            timeout_s=min(settings.connect_timeout_s, 1.0),
            fallback=settings.fallback_address,
        )
        self.pool = self._pool(settings.upstream_host, settings.upstream_port)
        fallback = settings.fallback_address
        # The rollback switch (opt-in): new requests go to the fallback once it is turned.
        self.route = UpstreamRoute(
            self.pool, self._pool(*fallback) if fallback else None, on_change=self._route_changed
        )
        self.proxy = ProxyApp(
            self.route,
            ProxyLimits(
                response_timeout_s=settings.response_timeout_s,
                idle_timeout_s=settings.idle_timeout_s,
                max_request_body_bytes=settings.max_request_body_bytes,
                max_inflight=settings.max_inflight,
                via=b"1.1 modeltap" if settings.via else None,
            ),
            TrustedPeers(settings.trusted_proxies),
            self._count_error,
            self._count_retry,
        )
        # Process mode (the default): the monitor process analyses and serves the admin port, so
        # nothing but proxying and capture runs on this event loop. Inline: both run here.
        self.process_mode = monitoring.monitor == "process"
        if self.process_mode and monitoring.monitor_id is None:
            monitoring = monitoring.replace(monitor_id=f"sidecar-{os.getpid()}")
        self.middleware = ModelTapMiddleware(self.proxy, config=monitoring)
        self.tap = self.middleware.tap
        self.tap.run_directory = run_directory
        self.tap.enable_proxy_errors()
        self.tap.enable_proxy_retries()
        if self.route.available:
            self.tap.report_all(self.route.state.report())  # the monitor learns there is a switch
        # The analysis in this process, wired once it runs here (`_wire_analysis`: inline mode,
        # or a monitor that could not run); in process mode this process never loads it.
        self.tap.on_analysis = self._wire_analysis
        self.admin: AdminApp | None = None  # the admin port's app, when served here
        self.status_url: str | None = None  # where notifications point people (`serve`)
        self._loop: asyncio.AbstractEventLoop | None = None
        # The usual exchange skips the ASGI app (sidecar/direct.py); MODELTAP_SIDECAR_DIRECT=0
        # sends every request through it (to compare, or to rule the direct path out).
        self.direct = (
            DirectPath(self.proxy, self.middleware)
            if DirectPath.available() and os.environ.get("MODELTAP_SIDECAR_DIRECT", "1") != "0"
            else None
        )
        self._protocol = protocol_class(
            ClientLimits(
                max_url_bytes=settings.max_url_bytes,
                max_header_bytes=settings.max_header_bytes,
                max_headers=settings.max_headers,
                header_timeout_s=settings.header_timeout_s,
                body_timeout_s=settings.body_timeout_s,
                keepalive_timeout_s=settings.keepalive_timeout_s,
            ),
            self._count_error,
            self.direct,
        )
        self.failure_log = FailureLog(settings.upstream, FAILURE_LOG_INTERVAL_S)
        self._connect_failures = 0
        self.resolve_check: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._force = False
        self.proxy_server: _Server | None = None
        self.admin_server: _Server | None = None
        self._admin_task: asyncio.Future[None] | None = None
        self._common: dict[str, Any] = {}
        self.proxy_socket: socket.socket | None = None
        self.admin_socket: socket.socket | None = None

    def _count_error(self, code: str) -> None:
        self.tap.note_proxy_error(code)
        self.failure_log.note(code)
        if code in ("upstream_connect_failure", "upstream_connect_timeout"):
            self.readiness.note_connect_failure()
            self._connect_failures += 1
            if self.process_mode:
                self.tap.report("connect_failures", self._connect_failures)

    def _count_retry(self) -> None:
        self.tap.note_proxy_retry()

    def _pool(self, host: str, port: int) -> UpstreamPool:
        settings = self.settings
        return UpstreamPool(
            host,
            port,
            connect_timeout_s=settings.connect_timeout_s,
            keepalive_expiry_s=settings.pool_keepalive_s,
            max_idle=settings.pool_max_idle,
            # Upstream responses may carry more header bytes than clients may send; still bounded.
            max_header_bytes=max(64 * 1024, settings.max_header_bytes),
            # Upstream deadlines fire within a tick of their bound.
            deadline_tick_s=min(
                0.25, max(0.01, min(settings.response_timeout_s, settings.idle_timeout_s) / 10)
            ),
        )

    # ---- the rollback switch ---------------------------------------------------------------

    def _follow_route(self, command: dict[str, Any]) -> None:
        """On the event loop: turn the switch as the monitor (or the analysis here) asks."""
        target, cause, by = command.get("target"), command.get("cause"), command.get("by")
        if isinstance(target, str):
            self.route.switch(target, str(cause or ""), str(by or "operator"))

    def _route_changed(self, state: RouteState) -> None:
        self.readiness.use_fallback = state.target == FALLBACK
        self.tap.report_all(state.report())  # the monitor (and /status) learns at once

    def _status_url(self) -> str:
        """Where notifications point people: the configured page, else this admin port's."""
        configured = self.tap.config.alert_status_url
        if configured:
            return configured
        host = self.settings.admin_host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.admin_port}/"

    def _route_report(self) -> RouteReport | None:
        return route_report([self.route.state.report()])

    def adopt(self, proxy_socket: socket.socket, admin_socket: socket.socket) -> None:
        """Serve sockets bound by a supervisor (`--workers N`) instead of binding."""
        self.proxy_socket, self.admin_socket = proxy_socket, admin_socket

    def bind(self) -> None:
        settings = self.settings
        self.proxy_socket = listen(settings.host, settings.port, "port")
        try:
            self.admin_socket = listen(settings.admin_host, settings.admin_port, "admin_port")
        except ConfigError:
            self.proxy_socket.close()
            raise

    @property
    def port(self) -> int:
        assert self.proxy_socket is not None
        return int(self.proxy_socket.getsockname()[1])

    @property
    def admin_port(self) -> int:
        assert self.admin_socket is not None
        return int(self.admin_socket.getsockname()[1])

    def stop(self, force: bool = False) -> None:
        """Begin the drain (idempotent); `force` skips the delays."""
        if force and not self._force:
            _log.info("modeltap sidecar: stopping now, without waiting for requests in flight")
        self._force = self._force or force
        if self._stopping is not None:
            self._stopping.set()
        if force and self.proxy_server is not None:
            self.proxy_server.force_exit = True

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        if self.proxy_socket is None:
            self.bind()
        assert self.proxy_socket is not None
        assert self.admin_socket is not None
        settings = self.settings
        self._stopping = asyncio.Event()
        common: dict[str, Any] = {
            "loop": "none",
            "ws": "none",
            "log_config": None,
            "access_log": False,
            "server_header": False,
            "date_header": False,
            "proxy_headers": False,  # the proxy writes X-Forwarded-* itself; never rewrite the peer
        }
        self._common = common
        proxy_config = uvicorn.Config(
            self.middleware,
            http=self._protocol,
            lifespan="on",
            timeout_keep_alive=int(max(1, settings.keepalive_timeout_s)),
            timeout_graceful_shutdown=int(max(1, round(settings.drain_timeout_s))),
            backlog=2048,
            **common,
        )
        proxy_config.timeout_keep_alive = settings.keepalive_timeout_s  # type: ignore[assignment]
        # uvicorn takes whole seconds; the drain deadline is honoured as configured (0.5 s is 0.5 s).
        proxy_config.timeout_graceful_shutdown = settings.drain_timeout_s  # type: ignore[assignment]
        self.proxy_server = _Server(proxy_config)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.status_url = self._status_url()
        if self.route.available:
            # The switch is turned on this loop, whoever asks: the monitor's control messages
            # (shipper thread) or, inline, the analysis (its own thread) or the admin endpoint.

            def from_monitor(command: dict[str, Any]) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed: the sidecar is gone
                    loop.call_soon_threadsafe(self._follow_route, command)

            self.tap.on_route = from_monitor
        if self.process_mode:
            # A monitor that cannot run here after all: the admin port is served here then.
            self.tap.on_fallback = lambda: loop.call_soon_threadsafe(self._serve_admin_here)
            self._hand_admin_port_to_the_monitor()
            # No monitor could be started (the run directory is unusable): serve it all here.
            self.process_mode = self.tap.mode == "process"
        if not self.process_mode:
            self._serve_admin_here()
        admin_task = self._admin_task
        proxy_task = asyncio.ensure_future(self.proxy_server.serve(sockets=[self.proxy_socket]))
        self.resolve_check = self.warn_if_upstream_does_not_resolve()
        admin_server = self.admin_server
        while not (self.proxy_server.started and (admin_server is None or admin_server.started)):
            if proxy_task.done() or (admin_task is not None and admin_task.done()):
                break
            await asyncio.sleep(0.01)
        if on_ready is not None:
            on_ready()
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({stop_wait, proxy_task}, return_when=asyncio.FIRST_COMPLETED)
        await self._drain(proxy_task)
        if self.admin_server is not None and self._admin_task is not None:
            self.admin_server.should_exit = True
            with contextlib.suppress(Exception):
                await self._admin_task
        stop_wait.cancel()
        self.failure_log.flush()  # what the last interval counted, before the process ends
        if self._force and self.proxy_server.started:
            # uvicorn skips the lifespan shutdown on a forced exit, and cancelling the lifespan
            # task would log a traceback. Requests still in flight end first (503 draining, or
            # aborted), so they are in the final flush; then the lifespan shutdown flushes (bounded).
            requests = list(self.proxy_server.server_state.tasks)
            for task in requests:
                task.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            await self.proxy_server.lifespan.shutdown()
        # Whatever a forced exit left behind ends here, not at loop close; bounded, since a task
        # may swallow its cancellation (asyncio.wait_for could, before Python 3.12).
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        if leftovers:
            done, pending = await asyncio.wait(leftovers, timeout=LEFTOVER_WAIT_S)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: ending with an error is expected here
            if pending:
                _log.warning(
                    "modeltap sidecar: %d task(s) did not end within %g s of being cancelled: %s",
                    len(pending),
                    LEFTOVER_WAIT_S,
                    ", ".join(sorted(task.get_name() for task in pending)),
                )
        if self._force:
            # Had the lifespan flush not run (it returns at once if it did): flush here, bounded.
            await asyncio.get_running_loop().run_in_executor(None, self.tap.shutdown)
        shipper = self.tap.shipper
        if shipper is not None:
            # The monitor exits once this process has left; the container must not end first.
            await asyncio.get_running_loop().run_in_executor(
                None,
                shipper.wait_for_monitor,
                max(0.0, self.tap.shutdown_deadline - time.monotonic()) + MONITOR_EXIT_MARGIN_S,
            )
        if self.process_mode and self.admin_socket is not None:
            self.admin_socket.close()  # held for the monitor, which is gone now
        _log.info("modeltap sidecar: shutdown complete")

    def _wire_analysis(self, analyzer: Analyzer) -> None:
        """The analysis runs in this process (the tap calls this before it starts it, on the
        thread that starts it): its notifications' link, its rollback switch, and the admin
        port's views it serves."""
        if self.admin is not None:
            return  # wired already (inline mode: by the admin port, then by the tap's start)
        settings = self.settings
        analyzer.status_url = self.status_url
        views = admin_views(
            self.tap.latest_snapshot, self.tap.config, analyzer.feedback, analyzer.writes(), analyzer.reads()
        )
        if self.route.available:
            # Inline mode's switch: the analysis here asks this event loop directly.
            analyzer.rollback.configure(settings.fallback_upstream, settings.auto_rollback)
            views.writes.update(rollback_endpoints(analyzer.rollback, self._route_report))

            loop = self._loop
            assert loop is not None  # the analysis starts once the sidecar serves

            def from_analysis(command: RouteCommand) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed: the sidecar is gone
                    loop.call_soon_threadsafe(self._follow_route, command.document())

            analyzer.rollback.apply = from_analysis
        self.admin = AdminApp(views, self.readiness)

    def _serve_admin_here(self) -> None:
        """The admin port from this process (inline mode, or the monitor process fell through)."""
        if self._admin_task is not None or self.admin_socket is None:
            return
        self.process_mode = False
        self._wire_analysis(self.tap.analyzer)  # the analysis runs here from now on
        assert self.admin is not None
        # The proxy port's client limits (head size and fields, head, body and keep-alive
        # timeouts), its refusals not counted as the proxy's errors; `_common` never rewrites the peer.
        config = uvicorn.Config(
            self.admin, http=admin_protocol(self._protocol.limits), lifespan="off", **self._common
        )
        self.admin_server = _Server(config)
        self._admin_task = asyncio.ensure_future(self.admin_server.serve(sockets=[self.admin_socket]))
        self.readiness.start()

    def _hand_admin_port_to_the_monitor(self) -> None:
        """Process mode: the monitor serves the admin port on the socket bound here (kept open
        here, never accepted on, so a restarted monitor gets it again; meanwhile connections wait
        in its backlog instead of being refused)."""
        assert self.admin_socket is not None
        settings = self.settings
        tap = self.tap
        tap.monitor_extras = {
            "admin": {
                "fd": self.admin_socket.fileno(),
                "upstream_host": settings.upstream_host,
                "upstream_port": settings.upstream_port,
                "probe_interval_s": settings.probe_interval_s,
                "readiness_failures": settings.readiness_failures,
                "probe_timeout_s": min(settings.connect_timeout_s, 1.0),
                "status_url": self.status_url,
                # The monitor serves the admin port with the proxy port's client limits.
                "client_limits": dataclasses.asdict(self._protocol.limits),
            }
        }
        fallback = settings.fallback_address
        if fallback is not None:
            tap.monitor_extras["admin"].update(
                {
                    "fallback_upstream": settings.fallback_upstream,
                    "fallback_address": list(fallback),
                    "auto_rollback": settings.auto_rollback,
                }
            )
        tap.monitor_pass_fds = (self.admin_socket.fileno(),)
        self.middleware.start()

    def warn_if_upstream_does_not_resolve(self) -> threading.Thread | None:
        """A start-up warning for an upstream name the resolver does not know (a typo, a
        service not created yet): requests are answered 502 upstream_connect_failure until it
        resolves. Looked up on a daemon thread, so a slow resolver delays neither the start
        nor the exit; the thread is returned (None for an address: nothing to resolve)."""
        host, port = self.settings.upstream_host, self.settings.upstream_port
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            return None

        def lookup() -> None:
            try:
                socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            except OSError as exc:  # socket.gaierror
                _log.warning(
                    "modeltap sidecar: the upstream host %r does not resolve (%s); requests will "
                    "be answered 502 upstream_connect_failure until it does",
                    host,
                    exc.strerror or exc,
                )

        thread = threading.Thread(target=lookup, name="modeltap-resolve-upstream", daemon=True)
        thread.start()
        return thread

    async def _drain(self, proxy_task: asyncio.Future[None]) -> None:
        assert self.proxy_server is not None
        self.readiness.draining = True
        if self.process_mode:
            self.tap.report("draining", True)
        self.proxy.draining = True
        if self.direct is not None:
            self.direct.hand_over_all()  # the app's drain: its deadline, its 503 draining
        settings = self.settings
        if not self._force and not proxy_task.done():
            # Info, in words that do not read as a failure: this is the planned shutdown.
            _log.info(
                "modeltap sidecar: shutting down gracefully: /readyz now answers 503 draining so "
                "load balancers move away; requests are still served for %g s, then those in "
                "flight get up to %g s to finish",
                settings.drain_delay_s,
                settings.drain_timeout_s,
            )
            with contextlib.suppress(asyncio.TimeoutError):
                assert self._stopping is not None
                self._stopping.clear()
                await asyncio.wait_for(self._stopping.wait(), self.settings.drain_delay_s)
        # uvicorn: stop accepting, close idle connections, let in-flight requests finish within
        # timeout_graceful_shutdown, cancel the rest; then lifespan shutdown flushes telemetry.
        self.proxy_server.should_exit = True
        if self._force:
            self.proxy_server.force_exit = True
        with contextlib.suppress(Exception):
            await proxy_task
        self.readiness.stop()
        self.route.close()


def install_signal_handlers(sidecar: Sidecar) -> None:
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(sig: int) -> None:
        received.append(sig)
        sidecar.stop(force=len(received) > 1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


def run_sidecar(settings: SidecarSettings, monitoring: ModelTapConfig) -> None:
    """Run until SIGTERM/SIGINT; raises ConfigError for start-up problems (before serving)."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.log_level != "debug":
        # Per-request parser warnings would let any client flood the log; they are counted instead.
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    inherited = os.environ.get(WORKER_SOCKETS_VARIABLE, "").strip()
    if settings.workers > 1 and not inherited:
        from modeltap.sidecar.supervisor import run_supervisor

        run_supervisor(settings, monitoring)
        return
    sidecar = Sidecar(settings, monitoring)
    if inherited:
        # A data plane started by the supervisor: its sockets are inherited, its monitor shared.
        proxy_fd, admin_fd = (int(part) for part in inherited.split(","))
        sidecar.adopt(socket.socket(fileno=proxy_fd), socket.socket(fileno=admin_fd))
    else:
        sidecar.bind()
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is part of uvicorn[standard]
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def announce() -> None:
        # The process is the sidecar's own: everything allocated by now (modules, numpy, scipy,
        # the reference) lives as long as it does, so keep it out of the collector's sight and a
        # full collection under load scans only what requests allocate (whole-heap collections
        # were tens of ms of p99). Not done by `Sidecar.serve`, which may run inside a host process.
        gc.collect()
        gc.freeze()
        if inherited:
            return  # the supervisor announced the sidecar
        print(
            f"modeltap sidecar: http://{settings.host}:{sidecar.port} -> {settings.upstream}; "
            f"admin http://{settings.admin_host}:{sidecar.admin_port} (/healthz /readyz /status /metrics)",
            flush=True,
        )

    async def main() -> None:
        install_signal_handlers(sidecar)
        await sidecar.serve(on_ready=announce)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
