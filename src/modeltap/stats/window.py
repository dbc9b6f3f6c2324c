"""A ring of tumbling slots: the sliding window of STATS.md ("15 x 60 s" by default).

Counts go to the slot of the current time; the window is the sum of the last `slots` slots
(the current, partial one included). Memory is `slots` x `width` int64, whatever the traffic.
"""

from __future__ import annotations

import numpy as np


class WindowRing:
    """Example::

    ring = WindowRing(slots=15, slot_s=60.0, width=102)
    ring.add(counts, now=time.monotonic())
    window_counts = ring.window(now=time.monotonic())
    """

    def __init__(self, slots: int, slot_s: float, width: int) -> None:
        if slots < 1 or slot_s <= 0:
            raise ValueError(f"need slots >= 1 and slot_s > 0, got {slots} and {slot_s}")
        self.slots = slots
        self.slot_s = slot_s
        self._counts = np.zeros((slots, width), dtype=np.int64)
        self._slot_number: int | None = None  # absolute number of the newest slot

    @property
    def window_s(self) -> float:
        return self.slots * self.slot_s

    def _advance(self, now: float) -> int:
        number = int(now // self.slot_s)
        if self._slot_number is None:
            self._slot_number = number
        elif number > self._slot_number:
            # Clear every slot that time moved past (all of them after a long pause).
            for skipped in range(self._slot_number + 1, min(number, self._slot_number + self.slots) + 1):
                self._counts[skipped % self.slots] = 0
            if number - self._slot_number > self.slots:
                self._counts[:] = 0
            self._slot_number = number
        return self._slot_number % self.slots

    def add(self, counts: np.ndarray, now: float) -> None:
        self._counts[self._advance(now)] += counts

    def window(self, now: float) -> np.ndarray:
        self._advance(now)
        result: np.ndarray = self._counts.sum(axis=0)
        return result

    @property
    def nbytes(self) -> int:
        return int(self._counts.nbytes)
