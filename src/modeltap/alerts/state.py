"""The alert state machine: per (model, version, subject), pending -> firing -> resolved.

A subject (a feature, the prediction, latency, error rate, performance, telemetry health) whose
level is WARNING or above is *pending*; held for `for_s` seconds it *fires*; once its level has
stayed below WARNING for `resolve_s` seconds it *resolves* (hysteresis: a score hovering at the
threshold does not flap). A firing alert whose level rises above every severity announced for
it is announced again at once; one that falls to a lower non-OK level keeps firing at the lower
severity, silently, and a return to a severity already announced is not announced again (a score
hovering at the CRITICAL threshold sent a new "firing critical" every 20 s). A resolution is sent
with the highest severity announced, so that it closes what people were told.

Notifications are deduplicated and grouped: alerts of one model version and severity that start
firing within `group_wait_s` of the first go out as one notification (twelve features drifting
together make one message listing them); a firing alert is repeated every `repeat_s`; each
resolution is sent once. With the defaults (30 s, 10 s) a CRITICAL shift notifies within 40 s of
the level first being CRITICAL. No I/O and no clock: the caller passes `now` (monotonic seconds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from modeltap.stats.scores import Level

SEVERITIES = {Level.WARNING: "warning", Level.CRITICAL: "critical", Level.EMERGENCY: "emergency"}


@dataclass(frozen=True, order=True)
class AlertKey:
    model: str
    version: str
    subject: str  # feature name, "prediction", "latency", "error_rate", "performance", "telemetry"


@dataclass(frozen=True)
class Observation:
    """One evaluation of a subject: its level and the number behind it."""

    key: AlertKey
    level: Level
    score: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Alert:
    key: AlertKey
    state: str  # pending | firing | resolved
    severity: str
    level: Level
    score: float | None
    threshold: float | None
    since_s: float  # when the current state began
    active_since_s: float  # when the condition first held (pending)


@dataclass(frozen=True)
class Notification:
    kind: str  # firing | resolved | repeat
    severity: str
    model: str
    version: str
    alerts: tuple[Alert, ...]


@dataclass
class _Tracked:
    alert: Alert
    below_since: float | None = None  # when the level last dropped below the alert's
    last_sent: float | None = None
    announced: Level = Level.OK  # the highest level announced as firing


@dataclass
class _Group:
    opened: float
    alerts: dict[AlertKey, Alert] = field(default_factory=dict)


class AlertBook:
    """Every subject's alert, evaluated once per snapshot. Not thread-safe (the monitor's loop)."""

    def __init__(
        self,
        for_s: float = 30.0,
        resolve_s: float = 30.0,
        repeat_s: float = 4 * 3600.0,
        group_wait_s: float = 10.0,
    ) -> None:
        if min(for_s, resolve_s, group_wait_s) < 0 or repeat_s <= 0:
            raise ValueError("alert durations must be >= 0 (repeat > 0)")
        self.for_s = for_s
        self.resolve_s = resolve_s
        self.repeat_s = repeat_s
        self.group_wait_s = group_wait_s
        self._tracked: dict[AlertKey, _Tracked] = {}
        self._groups: dict[tuple[str, str, str, str], _Group] = {}  # (kind, severity, model, version)

    def alerts(self) -> list[Alert]:
        """Pending and firing alerts, for /status and the page."""
        return sorted((t.alert for t in self._tracked.values()), key=lambda a: a.key)

    def evaluate(self, observations: Iterable[Observation], now: float) -> list[Notification]:
        """Advance every alert to `now`; returns the notifications due (grouped)."""
        seen: dict[AlertKey, Observation] = {o.key: o for o in observations}
        for observation in seen.values():
            if observation.level >= Level.WARNING:
                self._raise(observation, now)
        for key in list(self._tracked):
            current = seen.get(key)
            self._advance(key, current.level if current is not None else Level.OK, now)
        return self._due(now)

    def _raise(self, observation: Observation, now: float) -> None:
        key = observation.key
        level = observation.level
        severity = SEVERITIES[min(level, Level.EMERGENCY)]
        tracked = self._tracked.get(key)
        if tracked is None:
            alert = Alert(key, "pending", severity, level, observation.score, observation.threshold, now, now)
            self._tracked[key] = _Tracked(alert)
            return
        alert = tracked.alert
        score, threshold = observation.score, observation.threshold
        if alert.state == "pending":
            tracked.alert = replace(alert, severity=severity, level=level, score=score, threshold=threshold)
        elif level > alert.level:
            tracked.alert = replace(
                alert, severity=severity, level=level, since_s=now, score=score, threshold=threshold
            )
            if level > tracked.announced:  # a firing warning that turns critical: at once
                self._enqueue("firing", tracked.alert, now)
                tracked.last_sent = now
                tracked.announced = level
        else:
            tracked.alert = replace(alert, score=score, threshold=threshold)

    def _advance(self, key: AlertKey, level: Level, now: float) -> None:
        tracked = self._tracked[key]
        alert = tracked.alert
        if alert.state == "pending":
            if level < Level.WARNING:
                del self._tracked[key]  # never fired: nothing to resolve
            elif now - alert.active_since_s >= self.for_s:
                tracked.alert = replace(alert, state="firing", since_s=now)
                self._enqueue("firing", tracked.alert, now)
                tracked.last_sent = now
                tracked.announced = alert.level
            return
        # Firing: hold until the level has stayed below the alert's severity for resolve_s.
        if level >= alert.level:
            tracked.below_since = None
        elif level >= Level.WARNING:
            tracked.below_since = None
            tracked.alert = replace(alert, level=level, severity=SEVERITIES[min(level, Level.EMERGENCY)])
        else:
            if tracked.below_since is None:
                tracked.below_since = now
            if now - tracked.below_since >= self.resolve_s:
                announced = min(max(tracked.announced, alert.level), Level.EMERGENCY)
                resolved = replace(
                    alert, state="resolved", since_s=now, level=announced, severity=SEVERITIES[announced]
                )
                self._enqueue("resolved", resolved, now)
                del self._tracked[key]
                return
        if tracked.last_sent is not None and now - tracked.last_sent >= self.repeat_s:
            self._enqueue("repeat", tracked.alert, now)
            tracked.last_sent = now

    def _enqueue(self, kind: str, alert: Alert, now: float) -> None:
        group_key = (kind, alert.severity, alert.key.model, alert.key.version)
        group = self._groups.get(group_key)
        if group is None:
            group = self._groups[group_key] = _Group(opened=now)
        group.alerts[alert.key] = alert

    def _due(self, now: float) -> list[Notification]:
        due = []
        for group_key, group in list(self._groups.items()):
            # Resolutions and repeats need no wait; a new firing waits for its companions.
            wait = self.group_wait_s if group_key[0] == "firing" else 0.0
            if now - group.opened >= wait:
                kind, severity, model, version = group_key
                alerts = tuple(sorted(group.alerts.values(), key=lambda a: a.key))
                due.append(Notification(kind, severity, model, version, alerts))
                del self._groups[group_key]
        return due
