"""A bounded history of what the status page plots, per model version, kept on the server so the
page has its charts on the first load: latency p50/p95/p99 of the window, requests and error rate,
and the PSI of each monitored feature.

One point per interval (the drift window's slot, 60 s by default): each snapshot overwrites the
point of the interval in progress, so a finished interval keeps the values its last snapshot saw
and the newest point always equals the current view. At most `max_points` points (120: two hours
at the default slot) and `max_features` features, and only features with a reference distribution
(their names come from the reference, never from payloads). Finished points are frozen once, so a
snapshot costs one new point, not a copy of the history.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

from modeltap.snapshot import HistoryPoint, HistoryView, ModelView

MAX_POINTS = 120
MAX_FEATURES = 32


class ScoreHistory:
    """Example::

    history = ScoreHistory(interval_s=60.0)
    view = history.attach(view, now=time.monotonic())  # the view, with `view.history` filled
    """

    def __init__(
        self,
        interval_s: float,
        max_points: int = MAX_POINTS,
        max_features: int = MAX_FEATURES,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_points < 1:
            raise ValueError("max_points must be >= 1")
        self.interval_s = interval_s
        self._max_features = max_features
        self._wall_clock = wall_clock
        self._finished: collections.deque[HistoryPoint] = collections.deque(maxlen=max_points - 1)
        self._finished_tuple: tuple[HistoryPoint, ...] = ()
        self._interval: int | None = None
        self._features: dict[str, int] = {}  # name -> position in each point's psi
        self._feature_names: tuple[str, ...] = ()
        self._live: HistoryPoint | None = None
        # Cumulative counts when the interval in progress began: its requests are the difference.
        self._requests_before = 0
        self._errors_before = 0
        self._last_requests = 0
        self._last_errors = 0

    def attach(self, view: ModelView, now: float) -> ModelView:
        """Record `view` as the point of the interval `now` (the aggregator's clock) falls in;
        returns the view with its history."""
        interval = int(now // self.interval_s)
        if self._interval is None:
            self._interval = interval
        elif interval != self._interval:
            if self._live is not None:
                self._finished.append(self._live)
                self._finished_tuple = tuple(self._finished)
            self._interval = interval
            self._requests_before, self._errors_before = self._last_requests, self._last_errors
        self._last_requests, self._last_errors = view.requests, view.errors
        requests = view.requests - self._requests_before
        errors = view.errors - self._errors_before
        self._live = HistoryPoint(
            unix_s=self._wall_clock(),
            requests=requests,
            error_rate=errors / requests if requests > 0 else None,
            latency_p50_s=view.latency_p50_s,
            latency_p95_s=view.latency_p95_s,
            latency_p99_s=view.latency_p99_s,
            psi=self._psi(view),
        )
        history = HistoryView(self.interval_s, self._feature_names, (*self._finished_tuple, self._live))
        return dataclasses.replace(view, history=history)

    def _psi(self, view: ModelView) -> tuple[float | None, ...]:
        values: list[float | None] = [None] * len(self._features)
        seen: set[str] = set()
        for feature in view.features:
            # Without a reference distribution a name may come from a payload: never kept. A name
            # the reference gives to an input and an output is the first one listed.
            if not feature.monitored or feature.name in seen:
                continue
            seen.add(feature.name)
            position = self._features.get(feature.name)
            if position is None:
                if len(self._features) >= self._max_features:
                    continue
                position = self._features[feature.name] = len(self._features)
                self._feature_names = (*self._feature_names, feature.name)
                values.append(None)
            values[position] = feature.psi
        return tuple(values)
