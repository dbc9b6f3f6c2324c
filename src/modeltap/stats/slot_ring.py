"""Per-slot values over a tumbling window: the window is the last `slots` slots of `slot_s`
seconds; older slots are dropped as time moves on. The clock is passed in (no time source here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SlotRing(Generic[T]):
    """Per-slot values over a tumbling window of `slots` slots of `slot_s` seconds."""

    def __init__(self, factory: Callable[[], T], slots: int, slot_s: float) -> None:
        self.factory = factory
        self.slots = slots
        self.slot_s = slot_s
        self.ring: dict[int, T] = {}

    def current(self, now: float) -> T:
        slot = int(now // self.slot_s)
        for old in [s for s in self.ring if s <= slot - self.slots]:
            del self.ring[old]
        value = self.ring.get(slot)
        if value is None:
            value = self.ring[slot] = self.factory()
        return value

    def window(self, now: float, merge: Callable[[T, T], None]) -> T:
        slot = int(now // self.slot_s)
        merged = self.factory()
        for index, value in self.ring.items():
            if index > slot - self.slots:
                merge(merged, value)
        return merged

    def at(self, when: float, now: float) -> T | None:
        """The slot holding time `when` (created if needed), or None once it has left the window
        (or lies in the future)."""
        slot, current = int(when // self.slot_s), int(now // self.slot_s)
        if slot <= current - self.slots or slot > current:
            return None
        self.current(now)  # drop the slots that left the window
        value = self.ring.get(slot)
        if value is None:
            value = self.ring[slot] = self.factory()
        return value
