"""A middleware-wrapped app with the analysis inline and its export pointed at a test receiver:
for tests that look at what one process reports about itself (resources, GPUs, loop lag)."""

from __future__ import annotations

from modeltap import ExportConfig, ModelTapConfig


async def empty_json_app(scope: object, receive: object, send: object) -> None:
    """Answers every request `{}` with a 200."""
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]


def inline_config(endpoint: str) -> ModelTapConfig:
    """Inline analysis, snapshots every 50 ms, metrics to `endpoint` only when flushed."""
    export = ExportConfig(
        endpoint=endpoint,
        timeout_s=2.0,
        shutdown_timeout_s=1.0,
        metric_export_interval_s=60.0,
        span_export_interval_s=60.0,
        traces_enabled=False,
    )
    return ModelTapConfig(monitor="inline", model_name="churn", snapshot_interval_s=0.05, export=export)
