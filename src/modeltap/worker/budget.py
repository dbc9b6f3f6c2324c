"""The worker's CPU budget: keep modeltap cheap however much traffic arrives.

The worker thread's CPU time spent on exchanges (`time.thread_time` around each micro-batch) is
compared with wall time over windows of about a second. While its share of one core stays above
the budget, the share of exchanges whose payloads are kept and decoded is divided by the power of
two at or above how many times over the budget it is (halved when just over); once well below,
it doubles back, one window at a time. Timing, status and counts are still taken for every
exchange; payload statistics are weighted by the stride, so they stay unbiased. Short bursts do
not trigger it: only a whole window over budget does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

MAX_PAYLOAD_STRIDE = 256
WINDOW_S = 1.0
# Below this many exchanges per second sampling never starts: the worker's cost is then its
# fixed per-batch work, which sampling payloads would not reduce.
MIN_RATE_PER_S = 500.0


class CpuBudget:
    """Example::

    budget = CpuBudget(0.05)          # 5 % of one core
    stride = budget.next_stride(stride)  # call after each worker iteration
    """

    def __init__(
        self,
        share_of_core: float | None,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._share = share_of_core
        self._clock = clock
        self._cpu_clock = cpu_clock  # CPU time of the calling (worker) thread
        self._window_start = clock()
        self._charged = 0.0
        self._exchanges = 0
        self.last_share = 0.0

    def measure(self) -> float:
        """Start timing per-exchange work; pass the result to `charge` when it is done."""
        return self._cpu_clock()

    def charge(self, started_cpu: float, exchanges: int = 0) -> None:
        """Count the worker CPU spent since `measure()` on `exchanges` exchanges (snapshots and
        scoring are not charged: they do not grow with traffic)."""
        self._charged += self._cpu_clock() - started_cpu
        self._exchanges += exchanges

    def next_stride(self, stride: int) -> int:
        """The payload stride for the next window (unchanged until a window completes)."""
        if not self._share:
            return 1
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return stride
        self.last_share = self._charged / elapsed
        rate = self._exchanges / elapsed
        self._window_start, self._charged, self._exchanges = now, 0.0, 0
        if self.last_share > self._share and stride < MAX_PAYLOAD_STRIDE and rate >= MIN_RATE_PER_S:
            # As many doublings as the share is times over the budget: a burst that finds the
            # worker decoding every payload at seven times its budget is sampled 1 in 8 after
            # one window, not after three. The per-exchange floor (timing, counts) does not
            # shrink with the stride, so the share falls by at most that factor, to no less than
            # half the budget: above the third of it that brings the stride back down.
            over = self.last_share / self._share
            return min(MAX_PAYLOAD_STRIDE, stride << max(1, math.ceil(math.log2(over))))
        if self.last_share < self._share / 3 and stride > 1:
            return stride // 2
        return stride
