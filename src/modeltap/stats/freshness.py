"""Data freshness: how old each row's event time is when the model sees it.

`freshness_key` names an input column holding the event time, as epoch seconds or an RFC 3339
/ ISO 8601 text (`2026-12-05T21:51:28Z`, with an offset, or naive meaning UTC). The age is the
exchange's start time minus the event time. Ages go into a per-window sketch (p50, p95, max);
the p95 is WARNING above the configured bound and CRITICAL above twice the bound. Values that
are not a time are counted as `type` violations; event times in the future (clock skew) count as
age 0 and are counted apart.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from modeltap.stats.scores import Level


def event_seconds(value: object) -> float | None:
    """Epoch seconds of an event time, or None when the value is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text) if text and text[0].isdigit() and "-" not in text else _iso(text)
        except ValueError:
            return None
    return None


def _iso(text: str) -> float | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


# A window's p95 age is judged on at least this many rows: below 20 it is the window's oldest
# row, and one stale row made the model CRITICAL.
MIN_FRESHNESS_ROWS = 20


def freshness_level(p95_s: float | None, bound_s: float | None, rows: int = MIN_FRESHNESS_ROWS) -> Level:
    """WARNING when the window's p95 age is over `bound_s`, CRITICAL over twice it; OK on fewer
    than `MIN_FRESHNESS_ROWS` rows."""
    if p95_s is None or bound_s is None or rows < MIN_FRESHNESS_ROWS:
        return Level.OK
    if p95_s > 2 * bound_s:
        return Level.CRITICAL
    if p95_s > bound_s:
        return Level.WARNING
    return Level.OK
