"""`ModelTapMiddleware`: pure ASGI, so the app sees exactly the messages it would see alone.

Not `BaseHTTPMiddleware`: that breaks contextvars, buffers streams through memory channels and
costs a task group per request (measured, see DESIGN.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modeltap._types import ASGIApp, Message, Receive, Scope, Send
from modeltap.capture import compiled
from modeltap.config import ExportConfig, ModelTapConfig
from modeltap.export.local_views import LocalViews
from modeltap.handoff.views_client import MonitorViews
from modeltap.middleware.feedback_api import register as register_for_feedback
from modeltap.worker.tap import Tap

_log = logging.getLogger("modeltap")
_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(ModelTapConfig))

# Where the extension is built, the middleware's call is compiled (`_speedups.Dispatch`, and
# `compile_call` at the end of this module): an HTTP exchange outside the local views, once the
# tap has the compiled capture, reaches it with no Python frame of the middleware's own (at the
# weights `Sampling.admit()` gives under load); everything else, and every case where the
# extension is not built, runs `_dispatch`. One coroutine less per request: about 1.9 µs of the
# serving thread's CPU in process (`bench/inprocess.py`).
if TYPE_CHECKING:

    class _Dispatch:
        def _set_shortcut(self, tap: Tap | None, views_prefix: str | None, /) -> None: ...

elif compiled.AVAILABLE:
    _Dispatch = compiled._speedups.Dispatch
else:

    class _Dispatch:
        def _set_shortcut(self, tap, views_prefix, /):
            pass  # no compiled call: `__call__` is `_dispatch`


class ModelTapMiddleware(_Dispatch):
    """Monitor an ASGI model endpoint: capture, decode, drift statistics, OpenTelemetry export.

    Example::

        app = FastAPI()
        app.add_middleware(ModelTapMiddleware, model_name="churn", reference="reference.json")

        # or around any ASGI app
        app = ModelTapMiddleware(app, model_name="churn")

    Keyword options are the fields of `ModelTapConfig`; `MODELTAP_*` and `OTEL_*` environment
    variables fill in whatever is not passed. Pass `config=` to give a complete configuration
    (keywords then override its fields). `views_prefix=False` turns the local views off.
    Lifespan, websocket and unknown scopes pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: ModelTapConfig | None = None,
        tracer_provider: Any = None,
        enabled: bool | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
        reference: str | None = None,
        max_body_bytes: int | None = None,
        capture_payloads: bool | None = None,
        max_payload_attribute_bytes: int | None = None,
        capture_request_headers: tuple[str, ...] | None = None,
        capture_response_headers: tuple[str, ...] | None = None,
        protocol_routes: Mapping[str, str] | None = None,
        payload_mapping: Mapping[str, str] | None = None,
        version_header: str | None = None,
        request_id_header: str | None = None,
        queue_max_records: int | None = None,
        queue_max_bytes: int | None = None,
        worker_interval_s: float | None = None,
        overload_watermark: float | None = None,
        worker_cpu_budget: float | None = None,
        window_slots: int | None = None,
        window_slot_s: float | None = None,
        duration_buckets: tuple[float, ...] | None = None,
        psi_warning: float | None = None,
        psi_critical: float | None = None,
        drift_alpha: float | None = None,
        min_samples: int | None = None,
        sigma_k: float | None = None,
        views_prefix: str | bool | None = None,
        views_token: str | None = None,
        views_allow: tuple[str, ...] | None = None,
        series_limit: int | None = None,
        max_models: int | None = None,
        max_versions_per_model: int | None = None,
        max_features: int | None = None,
        max_outputs: int | None = None,
        expose_values: bool | None = None,
        snapshot_interval_s: float | None = None,
        monitor: str | None = None,
        monitor_id: str | None = None,
        monitor_memory_bytes: int | None = None,
        label_key: str | None = None,
        segment_feature: str | None = None,
        ranking_k: int | None = None,
        alert_webhooks: tuple[str, ...] | None = None,
        alertmanagers: tuple[str, ...] | None = None,
        alert_slack_webhooks: tuple[str, ...] | None = None,
        alert_for_s: float | None = None,
        alert_group_wait_s: float | None = None,
        alert_repeat_s: float | None = None,
        alert_resolve_s: float | None = None,
        alert_boost_s: float | None = None,
        alert_status_url: str | None = None,
        expected_model_version: str | None = None,
        cold_start_requests: int | None = None,
        freshness_key: str | None = None,
        freshness_max_age_s: float | None = None,
        alert_runbook_url: str | None = None,
        alert_runbooks: Mapping[str, str] | None = None,
        outcome_names: tuple[str, ...] | None = None,
        business_metric: str | None = None,
        business_floor: float | None = None,
        business_max_drop: float | None = None,
        business_alpha: float | None = None,
        business_baseline_version: str | None = None,
        label_ttl_s: float | None = None,
        label_store_bytes: int | None = None,
        gpu_memory_warning: float | None = None,
        gpu_memory_critical: float | None = None,
        export: ExportConfig | None = None,
    ) -> None:
        # Explicit keywords (not **options) so type checkers accept `app.add_middleware(...)`;
        # a test keeps them in step with ModelTapConfig's fields. None means "not given".
        given = {key: value for key, value in locals().items() if key in _CONFIG_FIELDS and value is not None}
        if given.get("views_prefix") is True:
            del given["views_prefix"]  # True: keep the default or configured prefix
        elif given.get("views_prefix") is False:
            given["views_prefix"] = None  # False: no local views
        self.app = app
        self.config = config.replace(**given) if config is not None else ModelTapConfig.from_env(**given)
        self._enabled = self.config.enabled
        self.tap = Tap(app, self.config, tracer_provider=tracer_provider)
        register_for_feedback(self)  # `modeltap.feedback(...)` finds it
        self._views: LocalViews | None = None
        if self.config.views_prefix is not None:
            self._views = LocalViews(
                self.config.views_prefix,
                self.tap.latest_snapshot,
                model_name=self.config.model_name,
                token=self.config.views_token,
                allow=self.config.views_allow,
            )
        self._shortcut()

    @property
    def enabled(self) -> bool:
        """Whether exchanges are captured (False: every scope passes straight to the app)."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value
        self._shortcut()

    def _shortcut(self) -> None:
        """Tell the compiled call which tap and views prefix to look at (nothing when disabled)."""
        views = self._views
        self._set_shortcut(self.tap if self._enabled else None, views.prefix if views is not None else None)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._enabled:
            if scope["type"] == "lifespan" and self._enabled:
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        tap = self.tap
        capture = tap.capture
        if capture is None:
            # The first request in this process (no lifespan, or after a fork).
            if not self._start_or_serve_without():
                await self.app(scope, receive, send)
                return
            capture = tap.capture
        views = self._views
        if views is not None and views.handles(scope):
            if views.remote is not None and tap.mode != "process":
                views.remote = None  # the tap fell back to analysing in this process
                self._serve_views_here(views)
            await views(scope, receive, send)
            return
        if capture is None:
            await self.app(scope, receive, send)
        elif tap.sampling.takes_everything:
            await capture(scope, receive, send, 1, 1)  # the normal case: everything captured
        else:
            weight, payload_weight = tap.sampling.admit()
            if weight:
                await capture(scope, receive, send, weight, payload_weight)
            else:
                await self.app(scope, receive, send)

    # What servers and tools see: uvicorn tells an ASGI 3 app by a coroutine function `__call__`.
    # Where the extension is built, the class is then called through the compiled call (below),
    # which takes HTTP exchanges itself and hands everything else to `_dispatch`.
    __call__ = _dispatch

    def start(self) -> None:
        """Start capturing now (else on the first request): the tap's threads and, in process
        mode, the connection to the server's monitor (started if none runs)."""
        tap = self.tap
        tap.start()
        tap.watch_event_loop()  # the serving loop's lag, when started on it (a request, the sidecar)
        views = self._views
        if views is not None:
            # Process mode: the monitor renders the views; this process only checks access.
            place = tap.place
            views.remote = MonitorViews(place.views_socket) if tap.mode == "process" and place else None
            if views.remote is None:
                self._serve_views_here(views)

    def _serve_views_here(self, views: LocalViews) -> None:
        """Inline mode: the analysis in this process serves the views' reads and writes (labels
        join here, drills run here)."""
        analyzer = self.tap.analyzer
        views.feedback = analyzer.feedback
        views.writes.update(analyzer.writes())
        views.reads.update(analyzer.reads())

    def _start_or_serve_without(self) -> bool:
        """Start (`start`); False when that failed: never into the app, this process serves
        unmonitored from now on, said once."""
        try:
            self.start()
        except Exception:
            _log.exception("modeltap: monitoring could not start; serving without it")
            self._enabled = False
            self._shortcut()
            return False
        return True

    def _start_with_the_server(self) -> None:
        """Start as the app's startup completes, before the server takes requests: inline mode
        loads the statistics (scipy, about half a second) here rather than on the first
        request, and process mode has its monitor starting. Without lifespan, the first request
        starts it (`_dispatch`)."""
        if self.tap.capture is None:
            self._start_or_serve_without()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass lifespan through unchanged, flushing telemetry once the app has shut down."""
        self.tap.watch_event_loop()  # lifespan runs on the serving loop before any request

        async def observe_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._start_with_the_server()
            elif message["type"] == "lifespan.shutdown.complete":
                try:
                    # Bounded by export.shutdown_timeout_s; off the loop so other tasks keep running.
                    await asyncio.get_running_loop().run_in_executor(None, self.tap.shutdown)
                except Exception:
                    _log.warning("modeltap shutdown failed", exc_info=True)
            await send(message)

        await self.app(scope, receive, observe_send)


if not TYPE_CHECKING and compiled.AVAILABLE:
    compiled._speedups.compile_call(ModelTapMiddleware)
