"""What the monitor files a record timed and counted only by (`framing.decode_grouped`'s groups),
defined from the outside, for tests that hold the grouping to the records one by one."""

from __future__ import annotations

from typing import Any

from modeltap.records import COLD_START_KEY, PROXY_ERROR_KEY, ROUTE_TEMPLATE_KEY, ExchangeRecord, RawRecord


def timed_only(raw: RawRecord) -> bool:
    """Untraced, its payload sampled out: what the decoder groups."""
    return raw[17] == 0 and raw[15] is None


def shape_of(raw: RawRecord) -> tuple[Any, ...]:
    """A decoded record's shape: every field the monitor files a timed record by."""
    record = ExchangeRecord._make(raw)
    return (
        record.method,
        record.scheme,
        record.http_version,
        record.path,
        record.scope.get(ROUTE_TEMPLATE_KEY),
        record.exception_type,
        record.scope.get(PROXY_ERROR_KEY),
        [tuple(pair) for pair in record.response_headers],
        record.status,
        record.weight,
        record.disconnected,
        bool(record.scope.get(COLD_START_KEY)),
        record.ended is None,
    )


def in_filing_order(batch: list[RawRecord]) -> list[RawRecord]:
    """A decoded batch in the order the monitor files it by group: the records it takes one by one
    first, then each shape's timed records together, shapes in the order they first appear."""
    shapes: dict[str, list[RawRecord]] = {}
    for raw in batch:
        if timed_only(raw):
            shapes.setdefault(repr(shape_of(raw)), []).append(raw)
    return [raw for raw in batch if not timed_only(raw)] + [raw for alike in shapes.values() for raw in alike]
