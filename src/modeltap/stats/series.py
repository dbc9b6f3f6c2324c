"""Bounded series tables: attribute values come from configuration and references, and even
then the number of series per instrument is capped, with one overflow series beyond it."""

from __future__ import annotations

import time
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
        # When each series (re)started: a cumulative series removed and created again restarts
        # from zero, and its exported start time must say so.
        self._created: dict[Attributes, int] = {}
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
        self._created[key] = time.time_ns()
        return state

    def created_unix_ns(self, key: Attributes) -> int:
        return self._created.get(key, 0)

    def remove_if(self, doomed: Callable[[Attributes], bool]) -> int:
        """Forget the series whose key `doomed` accepts; returns how many."""
        keys = [key for key in self._series if doomed(key)]
        for key in keys:
            del self._series[key]
            self._created.pop(key, None)
        return len(keys)

    def items(self) -> Iterator[tuple[Attributes, T]]:
        return iter(list(self._series.items()))

    def __len__(self) -> int:
        return len(self._series)
