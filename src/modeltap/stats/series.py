"""Bounded series tables: attribute values come from configuration and references, and even
then the number of series per instrument is capped, with one overflow series beyond it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from modeltap.snapshot import Attributes

T = TypeVar("T")

# The OpenTelemetry metrics SDK names its cardinality-overflow series this way.
OVERFLOW_ATTRIBUTES: Attributes = (("otel.metric.overflow", True),)


class SeriesTable(Generic[T]):
    """At most `limit` series; new keys beyond it share the overflow series.

    Example::

        table = SeriesTable(limit=2000, factory=lambda: [0])
        table.get((("http.route", "/predict"),))[0] += 1
    """

    def __init__(self, limit: int, factory: Callable[[], T]) -> None:
        self._limit = limit
        self._factory = factory
        self._series: dict[Attributes, T] = {}
        self.overflowed = 0

    def get(self, key: Attributes) -> T:
        state = self._series.get(key)
        if state is not None:
            return state
        if len(self._series) >= self._limit:
            self.overflowed += 1
            key = OVERFLOW_ATTRIBUTES
            state = self._series.get(key)
            if state is not None:
                return state
        state = self._series[key] = self._factory()
        return state

    def items(self) -> Iterator[tuple[Attributes, T]]:
        return iter(list(self._series.items()))

    def __len__(self) -> int:
        return len(self._series)
