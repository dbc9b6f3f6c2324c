"""Which exchanges are captured, and whose payloads are kept, while the worker cannot keep up.

Two strides, both counted on the request path (one writer, no lock):

- `stride`: the hand-off is filling (the worker is behind): capture 1 in N exchanges at all, each
  standing for N. Sampling before dropping keeps statistics unbiased; drops stay the last resort.
- `payload_stride`: the worker is over its CPU budget: keep bodies for 1 in M of the captured
  exchanges (time and count all of them); their payload statistics count M times.

The strides and their counters live in an `Admission`: the compiled one (`_speedups.Admission`)
where the extension is built and wanted, which the middleware's compiled call reads with no Python
call (under load every exchange is admitted there: 0.4-0.9 µs less per exchange in a loop than
calling `Sampling.admit`, bench/README.md), else `PyAdmission` below. Both give the same weights
in the same order.
"""

from __future__ import annotations

from typing import Protocol

from modeltap.capture import compiled
from modeltap.worker.budget import CpuBudget

MAX_STRIDE = 1024
# The monitor may ask for this many at most (`Tap.apply_control`); the budget's own steps stop
# at budget.MAX_PAYLOAD_STRIDE. Both bounds keep a weight (their product) within 32 bits.
MAX_PAYLOAD_STRIDE = 1 << 16


class Admission(Protocol):
    """The strides, their counters and `admit()` (either form)."""

    stride: int
    payload_stride: int

    def admit(self) -> tuple[int, int]: ...


class PyAdmission:
    """The pure-Python form of `_speedups.Admission`: the same checks, the same weights."""

    def __init__(self, max_stride: int, max_payload_stride: int) -> None:
        if max_stride < 1 or max_payload_stride < 1 or max_stride * max_payload_stride >= 1 << 31:
            raise ValueError("the largest strides must be at least 1, their product below 2**31")
        self._max_stride = max_stride
        self._max_payload_stride = max_payload_stride
        self._stride = 1
        self._payload_stride = 1
        self._seq = 0  # exchanges since the last one captured, modulo the stride
        self._payload_seq = 0  # captured since the last payload kept, modulo the payload stride

    @property
    def stride(self) -> int:
        return self._stride

    @stride.setter
    def stride(self, value: int) -> None:
        self._stride = _checked(value, self._max_stride, "stride")

    @property
    def payload_stride(self) -> int:
        return self._payload_stride

    @payload_stride.setter
    def payload_stride(self, value: int) -> None:
        self._payload_stride = _checked(value, self._max_payload_stride, "payload_stride")

    def admit(self) -> tuple[int, int]:
        stride = self._stride
        if stride > 1:
            self._seq = (self._seq + 1) % stride
            if self._seq:
                return 0, 0
        payload_stride = self._payload_stride
        if payload_stride > 1:
            self._payload_seq = (self._payload_seq + 1) % payload_stride
            if self._payload_seq:
                return stride, 0
        return stride, stride * payload_stride


def _checked(value: object, bound: int, name: str) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if not 1 <= value <= bound:
        raise ValueError(f"{name} must be between 1 and {bound}")
    return value


def new_admission(max_stride: int = MAX_STRIDE, max_payload_stride: int = MAX_PAYLOAD_STRIDE) -> Admission:
    """The compiled form where built and wanted, else the pure-Python one."""
    if compiled.wanted():
        admission: Admission = compiled._speedups.Admission(max_stride, max_payload_stride)
        return admission
    return PyAdmission(max_stride, max_payload_stride)


class Sampling:
    """Example::

    sampling = Sampling(watermark=0.5)
    weight, payload_weight = sampling.admit()   # (0, 0): not captured
    sampling.follow_load(queue_load)            # after each worker iteration
    """

    def __init__(self, watermark: float) -> None:
        self.watermark = watermark
        self.admission = new_admission()

    @property
    def stride(self) -> int:
        return self.admission.stride

    @stride.setter
    def stride(self, value: int) -> None:
        self.admission.stride = value

    @property
    def payload_stride(self) -> int:
        return self.admission.payload_stride

    @payload_stride.setter
    def payload_stride(self, value: int) -> None:
        self.admission.payload_stride = value

    @property
    def takes_everything(self) -> bool:
        return self.stride == 1 and self.payload_stride == 1

    def admit(self) -> tuple[int, int]:
        """(weight, payload_weight) of this exchange; (0, 0) = not captured, (w, 0) = timed and
        counted without its payload. Weights keep every statistic an unbiased estimate. (The
        middleware's compiled call asks `admission` itself for instances of this class, and this
        method of a subclass.)"""
        return self.admission.admit()

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


if compiled.AVAILABLE:
    compiled._speedups.compile_admit(Sampling)
