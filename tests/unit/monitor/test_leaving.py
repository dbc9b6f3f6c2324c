"""A monitor on its way out stops reading its serving processes' connections and keeps them
paused while its analysis drains the inbox (what they send from then on is theirs to count)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from modeltap.monitor.process import Monitor


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_a_leaving_monitor_does_not_resume_reading() -> None:
    transport = Transport()
    monitor = object.__new__(Monitor)  # only what `_pause_reading` reads
    monitor._stopping = threading.Event()
    monitor._connections = [SimpleNamespace(feeder=SimpleNamespace(transport=transport))]  # type: ignore[list-item]
    monitor._pause_reading(True)
    monitor._pause_reading(False)  # running: the inbox drained below half its bound
    monitor._pause_reading(True)
    monitor._stopping.set()
    monitor._pause_reading(False)  # leaving: the inbox drains for the last export, no more reading
    assert transport.calls == ["pause", "resume", "pause"]
