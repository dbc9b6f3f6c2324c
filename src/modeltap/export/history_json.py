"""The `history` of `/status`: one model version's bounded history, column by column, for the
status page's plots (time axis in unix seconds)."""

from __future__ import annotations

import math
from typing import Any

from modeltap.snapshot import ModelView


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def history_document(view: ModelView | None) -> dict[str, Any] | None:
    """Columns of equal length, oldest first; the last entry is the interval in progress."""
    if view is None or view.history is None:
        return None
    history = view.history
    points = history.points
    return {
        "name": view.name,
        "version": view.version,
        "interval_s": history.interval_s,
        "t": [round(p.unix_s, 3) for p in points],
        "requests": [p.requests for p in points],
        "error_rate": [_finite(p.error_rate) for p in points],
        "latency_s": {
            "p50": [_finite(p.latency_p50_s) for p in points],
            "p95": [_finite(p.latency_p95_s) for p in points],
            "p99": [_finite(p.latency_p99_s) for p in points],
        },
        "psi": {
            name: [_finite(p.psi[j]) if j < len(p.psi) else None for p in points]
            for j, name in enumerate(history.features)
        },
    }
