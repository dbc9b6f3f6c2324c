"""The alert state machine: for, hysteresis, escalation, grouping, repeats, resolution."""

from __future__ import annotations

from modeltap.alerts.state import AlertBook, AlertKey, Notification, Observation
from modeltap.stats.scores import Level


def key(subject: str, version: str = "1") -> AlertKey:
    return AlertKey("churn", version, subject)


def run(
    book: AlertBook, levels: dict[str, Level], start: float, end: float, step: float = 1.0
) -> list[Notification]:
    """Evaluate every `step` seconds from `start` to `end` with constant levels."""
    sent: list[Notification] = []
    now = start
    while now <= end:
        sent += book.evaluate([Observation(key(s), level, 0.3, 0.2) for s, level in levels.items()], now)
        now += step
    return sent


def test_a_critical_shift_notifies_once_within_40_s_grouping_the_features_that_moved_together() -> None:
    book = AlertBook()
    shifted = {f"f{i}": Level.CRITICAL for i in range(12)}
    sent = run(book, shifted, 0.0, 39.0)
    assert sent == []  # pending 30 s, then a 10 s group wait
    sent = run(book, shifted, 40.0, 120.0)
    assert len(sent) == 1
    [notification] = sent
    assert (notification.kind, notification.severity) == ("firing", "critical")
    assert [a.key.subject for a in notification.alerts] == sorted(shifted)
    assert all(a.state == "firing" for a in notification.alerts)


def test_a_blip_shorter_than_for_never_fires() -> None:
    book = AlertBook(for_s=30.0)
    assert run(book, {"f0": Level.CRITICAL}, 0.0, 20.0) == []
    assert run(book, {"f0": Level.OK}, 21.0, 100.0) == []
    assert book.alerts() == []


def test_hysteresis_keeps_a_flapping_level_firing_then_resolves_once() -> None:
    book = AlertBook(for_s=0.0, resolve_s=30.0, group_wait_s=0.0)
    assert [n.kind for n in run(book, {"f0": Level.CRITICAL}, 0.0, 5.0)] == ["firing"]
    sent: list[Notification] = []
    for t in range(6, 60):  # flaps every 10 s: never 30 s below
        level = Level.OK if (t // 10) % 2 else Level.CRITICAL
        sent += book.evaluate([Observation(key("f0"), level)], float(t))
    assert sent == []
    sent = run(book, {"f0": Level.OK}, 60.0, 100.0)
    assert [n.kind for n in sent] == ["resolved"]
    assert book.alerts() == []


def test_a_firing_warning_that_turns_critical_is_announced_at_once() -> None:
    book = AlertBook(for_s=0.0, group_wait_s=0.0)
    assert [(n.kind, n.severity) for n in run(book, {"f0": Level.WARNING}, 0.0, 3.0)] == [
        ("firing", "warning")
    ]
    assert [(n.kind, n.severity) for n in run(book, {"f0": Level.CRITICAL}, 4.0, 6.0)] == [
        ("firing", "critical")
    ]


def test_a_firing_alert_repeats_at_the_repeat_interval_only() -> None:
    book = AlertBook(for_s=0.0, group_wait_s=0.0, repeat_s=3600.0)
    sent = run(book, {"f0": Level.CRITICAL}, 0.0, 3 * 3600.0, step=60.0)
    assert [n.kind for n in sent] == ["firing", "repeat", "repeat", "repeat"]


def test_versions_and_severities_are_notified_apart() -> None:
    book = AlertBook(for_s=0.0, group_wait_s=5.0)
    observations = [
        Observation(key("f0", "1"), Level.CRITICAL),
        Observation(key("f1", "1"), Level.WARNING),
        Observation(key("f0", "2"), Level.CRITICAL),
    ]
    sent: list[Notification] = []
    for t in range(10):
        sent += book.evaluate(observations, float(t))
    assert sorted((n.version, n.severity, len(n.alerts)) for n in sent) == [
        ("1", "critical", 1),
        ("1", "warning", 1),
        ("2", "critical", 1),
    ]
    assert {a.state for a in book.alerts()} == {"firing"}


def test_a_level_hovering_at_the_critical_threshold_is_announced_once() -> None:
    """CRITICAL and WARNING in turn as the scores are recomputed (every 5 s), for ten minutes:
    one "firing critical" (it was one every 20 s), then the resolution, once."""
    book = AlertBook()
    sent: list[Notification] = []
    for second in range(600):
        level = Level.CRITICAL if (second // 5) % 2 == 0 else Level.WARNING
        sent += book.evaluate([Observation(key("f0"), level, 0.2, 0.2)], float(second))
    assert [(n.kind, n.severity) for n in sent] == [("firing", "critical")]
    sent = run(book, {"f0": Level.OK}, 600.0, 700.0)
    assert [(n.kind, n.severity) for n in sent] == [("resolved", "critical")]


def test_a_critical_alert_that_fell_to_warning_resolves_as_critical() -> None:
    """The resolution closes what was announced: receivers that route by severity (a pager for
    critical) see the critical incident end."""
    book = AlertBook(for_s=0.0, group_wait_s=0.0, resolve_s=30.0)
    assert [(n.kind, n.severity) for n in run(book, {"f0": Level.CRITICAL}, 0.0, 60.0)] == [
        ("firing", "critical")
    ]
    assert run(book, {"f0": Level.WARNING}, 61.0, 120.0) == []  # the fall is silent
    assert [a.severity for a in book.alerts()] == ["warning"]  # and shown as it is now
    sent = run(book, {"f0": Level.OK}, 121.0, 200.0)
    assert [(n.kind, n.severity) for n in sent] == [("resolved", "critical")]
    # A warning that never was critical resolves as a warning.
    book = AlertBook(for_s=0.0, group_wait_s=0.0, resolve_s=30.0)
    run(book, {"f1": Level.WARNING}, 0.0, 10.0)
    assert [(n.kind, n.severity) for n in run(book, {"f1": Level.OK}, 11.0, 60.0)] == [
        ("resolved", "warning")
    ]
