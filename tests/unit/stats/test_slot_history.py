"""Latency p99 and error rate judged by their own history: the value's own noise is the least
spread it is judged by, so a quiet history does not turn a request or two into an alert."""

from __future__ import annotations

import numpy as np
import pytest

from modeltap.stats.scores import Level
from modeltap.stats.slot_history import SlotHistory

SLOT_S = 60.0
REQUESTS = 100


def _history(errors_per_slot: list[int], latency_s: float = 0.01) -> tuple[SlotHistory, float]:
    history = SlotHistory(SLOT_S)
    now = 0.0
    for errors in errors_per_slot:
        history.add(np.full(REQUESTS, latency_s), errors, 1, now)
        now += SLOT_S
    return history, now


@pytest.mark.parametrize(
    ("past", "errors", "level"),
    [
        ([0] * 30, 1, Level.OK),  # one error in 100 after 30 clean slots: noise (it was WARNING)
        ([0] * 30, 2, Level.OK),  # (it was CRITICAL)
        ([0] * 30, 3, Level.WARNING),  # 3 % over 0 %: beyond 3 binomial errors of 1 in 100
        ([0] * 30, 6, Level.CRITICAL),
        ([0, 1] * 15, 3, Level.OK),  # 0.5 % before: 3 in 100 is within its noise
        ([0, 1] * 15, 8, Level.CRITICAL),
    ],
)
def test_the_error_rate_is_judged_against_at_least_its_binomial_noise(
    past: list[int], errors: int, level: Level
) -> None:
    history, now = _history(past)
    history.add(np.full(REQUESTS, 0.01), errors, 1, now)
    assert history.levels(now, k=3.0)[1] is level


def test_a_p99_within_the_sketchs_accuracy_of_a_flat_history_is_ok() -> None:
    history, now = _history([0] * 30, latency_s=0.010)
    history.add(np.full(REQUESTS, 0.0101), 0, 1, now)  # 1 % slower: the sketch cannot tell
    assert history.levels(now, k=3.0)[0] is Level.OK
    history, now = _history([0] * 30, latency_s=0.010)
    history.add(np.full(REQUESTS, 0.013), 0, 1, now)  # 30 % slower
    assert history.levels(now, k=3.0)[0] is Level.CRITICAL
