"""The demo says when its run is too short for its phases to be judged (each verdict needs
`min_samples` values in the phase's window), and how long would do."""

from __future__ import annotations

import re

from modeltap.config import ModelTapConfig
from modeltap.demo.runner import Demo, DemoOptions, too_short

MIN_SAMPLES = ModelTapConfig().min_samples


def test_the_default_run_is_long_enough() -> None:
    options = DemoOptions()
    assert too_short(options, Demo(options).phase_s, MIN_SAMPLES) is None


def test_a_short_run_is_told_how_long_would_do() -> None:
    options = DemoOptions(duration_s=6, rate_per_s=50)

    note = too_short(options, Demo(options).phase_s, MIN_SAMPLES)

    assert note is not None
    assert "--duration" in note
    match = re.search(r"at least (\d+) s", note)
    assert match is not None
    needed = float(match.group(1))

    def note_at(duration_s: float) -> str | None:
        longer = DemoOptions(duration_s=duration_s, rate_per_s=50)
        return too_short(longer, Demo(longer).phase_s, MIN_SAMPLES)

    assert note_at(needed + 1) is None
    assert note_at(needed - 1) is not None


def test_a_window_of_one_slot_is_judged_whole() -> None:
    """One slot: the phase's whole traffic is in it (no division by the slots left)."""
    options = DemoOptions(duration_s=6, rate_per_s=50, window_slots=1)
    assert too_short(options, Demo(options).phase_s, MIN_SAMPLES) is not None
    options = DemoOptions(duration_s=60, rate_per_s=50, window_slots=1)
    assert too_short(options, Demo(options).phase_s, MIN_SAMPLES) is None
