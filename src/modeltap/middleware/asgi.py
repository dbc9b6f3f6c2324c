"""`ModelTapMiddleware`: pure ASGI, so the app sees exactly the messages it would see alone.

Not `BaseHTTPMiddleware`: that breaks contextvars, buffers streams through memory channels and
costs a task group per request (measured, see DESIGN.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from modeltap._tap import Tap
from modeltap._types import ASGIApp, Message, Receive, Scope, Send
from modeltap.config import ModelTapConfig
from modeltap.export.local_views import LocalViews

_log = logging.getLogger("modeltap")


class ModelTapMiddleware:
    """Monitor an ASGI model endpoint: capture, decode, drift statistics, OpenTelemetry export.

    Example::

        app = FastAPI()
        app.add_middleware(ModelTapMiddleware, model_name="churn", reference="reference.json")

        # or around any ASGI app
        app = ModelTapMiddleware(app, model_name="churn")

    Keyword options are the fields of `ModelTapConfig`; `MODELTAP_*` and `OTEL_*` environment
    variables fill in whatever is not passed. Pass `config=` to give a complete configuration.
    Lifespan, websocket and unknown scopes pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: ModelTapConfig | None = None,
        tracer_provider: Any = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.config = config.replace(**options) if config is not None else ModelTapConfig.from_env(**options)
        self.enabled = self.config.enabled
        self.tap = Tap(self.config, tracer_provider=tracer_provider)
        self._views: LocalViews | None = None
        if self.config.views_prefix is not None:
            self._views = LocalViews(
                self.config.views_prefix,
                self.tap.latest_snapshot,
                model_name=self.config.model_name,
                token=self.config.views_token,
                allow=self.config.views_allow,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled:
            await self.app(scope, receive, send)
            return
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        views = self._views
        if views is not None and views.handles(scope):
            await views(scope, receive, send)
            return
        tap = self.tap
        if not tap.started:
            tap.start()
        weight = tap.admit()
        capture = tap.capture
        if weight == 0 or capture is None:
            await self.app(scope, receive, send)
            return
        await capture(self.app, scope, receive, send, weight)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass lifespan through unchanged, flushing telemetry once the app has shut down."""

        async def observe_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                try:
                    # Bounded by export.shutdown_timeout_s; off the loop so other tasks keep running.
                    await asyncio.get_running_loop().run_in_executor(None, self.tap.shutdown)
                except Exception:
                    _log.warning("modeltap shutdown failed", exc_info=True)
            await send(message)

        await self.app(scope, receive, observe_send)
