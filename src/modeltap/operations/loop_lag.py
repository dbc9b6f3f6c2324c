"""How late the serving process's asyncio event loop runs what is due: its lag.

A loop blocked by synchronous work (a model called without an executor, a slow JSON encode, a
long garbage collection) delays every request it serves, and neither the request latency of one
route nor the CPU figures say why. A probe measures it directly: a callback scheduled every
`INTERVAL_S` with `call_later` notes how long after its due time it actually ran. The request path
pays nothing; the loop runs one tiny callback twice a second.

The figures are the largest lag and the 99th percentile over the last `WINDOW_S` seconds (a
sliding window, so a stall stays visible until an export every minute has carried it), and a
probe still waiting on a stalled loop counts with how overdue it is already: a loop stuck for
ten seconds shows it while it is stuck, read from another thread.

Times are `time.monotonic()` on both sides (not `loop.time()`, which uvloop caches per iteration
and which another thread should not call).
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from dataclasses import dataclass

INTERVAL_S = 0.5
WINDOW_S = 60.0


@dataclass(frozen=True)
class LoopLag:
    """The lag over the window: the largest and the 99th percentile (nearest rank), seconds."""

    max_s: float
    p99_s: float
    probes: int  # completed probes in the window


class LoopLagProbe:
    """Example::

    probe = LoopLagProbe()
    probe.watch(asyncio.get_running_loop())  # on the loop: once per loop, later calls are no-ops
    probe.lag()  # from any thread: LoopLag, or None before the first probe ran
    """

    def __init__(self, interval_s: float = INTERVAL_S, window_s: float = WINDOW_S) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0  # when the pending probe should run (monotonic); 0: none pending
        self._lock = threading.Lock()
        # (when it ran, its lag); a bound the window never reaches at the probe's rate.
        self._lags: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=int(window_s / interval_s) + 16
        )

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Probe `loop` from now on (call it on that loop's thread). A new loop replaces the old
        one: the old chain of probes stops at its next run."""
        if loop is self._loop:
            return
        self._loop = loop
        self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = time.monotonic() + self.interval_s
        loop.call_later(self.interval_s, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return  # a loop no longer watched
        now = time.monotonic()
        # uvloop's timers have millisecond resolution: a probe may run a hair early.
        lag = max(0.0, now - self._due)
        with self._lock:
            self._lags.append((now, lag))
        self._schedule(loop)

    def lag(self) -> LoopLag | None:
        """The window's figures now (any thread); None when no probe ran within the window."""
        now = time.monotonic()
        with self._lock:
            lags = sorted(lag for at, lag in self._lags if now - at <= self.window_s)
        loop = self._loop
        overdue = 0.0
        if loop is not None and self._due and loop.is_running():
            overdue = max(0.0, now - self._due)  # the pending probe, on a loop stalled right now
        if not lags and not overdue:
            return None
        p99 = lags[max(0, math.ceil(0.99 * len(lags)) - 1)] if lags else overdue
        return LoopLag(max_s=max(lags[-1] if lags else 0.0, overdue), p99_s=p99, probes=len(lags))
