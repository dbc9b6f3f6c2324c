"""The monitor answers flush markers (a serving process stopping, or asking to flush) with one
export for those taken together, and does not retry an export that just failed."""

from __future__ import annotations

import json
from typing import Any

from modeltap.config import ModelTapConfig
from modeltap.handoff import framing
from modeltap.monitor.ingest import Feeder, Flush
from modeltap.monitor.process import Monitor


class Analyzer:
    def __init__(self, results: list[bool]) -> None:
        self.results = results
        self.exports = 0

    def publish(self, counts: Any, current_scores: bool = False) -> None:
        pass

    def flush_export(self, timeout_s: float) -> bool:
        self.exports += 1
        return self.results.pop(0)


def _monitor(analyzer: Analyzer) -> tuple[Monitor, list[tuple[Feeder, dict[str, Any]]]]:
    monitor = object.__new__(Monitor)  # only what `_flush` reads
    monitor.analyzer = analyzer  # type: ignore[assignment]
    monitor.config = ModelTapConfig()
    monitor._flush_failed_at = None
    monitor._serving_counts = lambda: None  # type: ignore[method-assign, assignment, return-value]
    answers: list[tuple[Feeder, dict[str, Any]]] = []

    def write(feeder: Feeder, data: bytes) -> None:
        ((kind, payload),) = framing.FrameReader().feed(data)
        assert kind == framing.FLUSHED
        answers.append((feeder, json.loads(bytes(payload))))

    monitor._write = write  # type: ignore[method-assign]
    return monitor, answers


def test_flushes_taken_together_share_one_export() -> None:
    analyzer = Analyzer([True])
    monitor, answers = _monitor(analyzer)
    a, b = Feeder(pid=1), Feeder(pid=2)
    a.processed, b.processed = 5, 7
    monitor._flush([Flush(a, "x"), Flush(b, 9)])
    assert analyzer.exports == 1
    assert answers == [(a, {"id": "x", "records": 5, "ok": True}), (b, {"id": 9, "records": 7, "ok": True})]


def test_an_export_that_just_failed_is_not_tried_again_at_once() -> None:
    """The collector down: one worker's flush waits out the export's timeout; those that follow
    within FLUSH_EXPORT_S are answered at once (not exported), and after it an export is tried."""
    analyzer = Analyzer([False, True])
    monitor, answers = _monitor(analyzer)
    feeders = [Feeder(pid=n) for n in range(3)]
    monitor._flush([Flush(feeders[0], 1)])
    monitor._flush([Flush(feeders[1], 2)])
    assert analyzer.exports == 1
    assert [answer["ok"] for _, answer in answers] == [False, False]
    assert monitor._flush_failed_at is not None
    monitor._flush_failed_at -= 10.0  # FLUSH_EXPORT_S later
    monitor._flush([Flush(feeders[2], 3)])
    assert analyzer.exports == 2
    assert answers[-1][1]["ok"] is True
    assert monitor._flush_failed_at is None
