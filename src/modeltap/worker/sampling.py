"""Which exchanges are captured, and whose payloads are kept, while the worker cannot keep up.

Two strides, both counted on the request path (one writer, no lock):

- `stride`: the hand-off is filling (the worker is behind): capture 1 in N exchanges at all, each
  standing for N. Sampling before dropping keeps statistics unbiased; drops stay the last resort.
- `payload_stride`: the worker is over its CPU budget: keep bodies for 1 in M of the captured
  exchanges (time and count all of them); their payload statistics count M times.
"""

from __future__ import annotations

from modeltap.worker.budget import CpuBudget

MAX_STRIDE = 1024


class Sampling:
    """Example::

    sampling = Sampling(watermark=0.5)
    weight, payload_weight = sampling.admit()   # (0, 0): not captured
    sampling.follow_load(queue_load)            # after each worker iteration
    """

    def __init__(self, watermark: float) -> None:
        self.watermark = watermark
        self.stride = 1
        self.payload_stride = 1
        self._seq = 0
        self._payload_seq = 0

    @property
    def takes_everything(self) -> bool:
        return self.stride == 1 and self.payload_stride == 1

    def admit(self) -> tuple[int, int]:
        """(weight, payload_weight) of this exchange; (0, 0) = not captured, (w, 0) = timed and
        counted without its payload. Weights keep every statistic an unbiased estimate."""
        stride = self.stride
        if stride > 1:
            self._seq += 1
            if self._seq % stride:
                return 0, 0
        payload_stride = self.payload_stride
        if payload_stride > 1:
            self._payload_seq += 1
            if self._payload_seq % payload_stride:
                return stride, 0
        return stride, stride * payload_stride

    def follow_load(self, load: float) -> None:
        """Halve the captured share while the hand-off (0..1 full) sits above the watermark,
        restore it once the worker has caught up."""
        if load > self.watermark and self.stride < MAX_STRIDE:
            self.stride *= 2
        elif load < self.watermark / 8 and self.stride > 1:
            self.stride //= 2

    def follow_budget(self, budget: CpuBudget) -> None:
        """The payload stride the worker's CPU budget allows for the next window."""
        self.payload_stride = budget.next_stride(self.payload_stride)
