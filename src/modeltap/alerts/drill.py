"""Fire drills: prove, on demand, that an alert fires, reaches every receiver, and resolves.

`modeltap drill` asks the monitor (`POST /drill`) to run one. The drill builds a *shadow* copy of
the model's statistics (a statistics state of its own, with the same reference, thresholds and
window as the real one, on a clock of its own) and feeds it synthetic exchanges: a history of
normal traffic, then, per scenario, traffic that must raise an alert:

- `covariate`: the first monitored input drawn 3 standard deviations off (a categorical input:
  all rows its rarest category);
- `prediction`: the first monitored output moved likewise;
- `latency`: requests 20 times slower than the history's;
- `errors`: half the requests answered 5xx.

The shadow's levels go through an alert book of their own with the configured `for`, group wait
and resolve durations (so the drill times the real path), and its notifications go to every
configured receiver, marked `drill: true` (Alertmanager: the label `modeltap_drill="true"`).
Once every expected alert fired, the shadow gets normal traffic again and the alerts must
resolve. The real windows, series, alerts and the rollback switch are never touched.

The drill passes when every expected alert fired and resolved, and every receiver acknowledged
the firing and the resolved notifications; its report says what fired, where and how long it
took, and what failed.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from modeltap.alerts.alertmanager import AlertmanagerSender
from modeltap.alerts.observations import observations
from modeltap.alerts.runbooks import DEFAULT_RUNBOOKS, Runbooks, feature_subject
from modeltap.alerts.slack import slack_message
from modeltap.alerts.state import AlertBook, Notification
from modeltap.alerts.webhook import WebhookSender, close_all, notification_document
from modeltap.redaction import redact_url
from modeltap.reference.document import ReferenceFeature, ReferenceProfile
from modeltap.snapshot import Snapshot
from modeltap.stats import StatsAggregator
from modeltap.stats.scores import MIN_SIGMA_HISTORY

SCENARIOS = ("covariate", "prediction", "latency", "errors")
DEFAULT_TIMEOUT_S = 120.0
EVALUATE_EVERY_S = 0.25
HISTORY_REQUESTS = 80  # per history slot: above the 50 a slot needs to be judged
NORMAL_LATENCY_S = 0.01


@dataclass(frozen=True)
class DrillSettings:
    """What the drill copies from the monitor's configuration."""

    model: str
    version: str
    window_slots: int
    window_slot_s: float
    min_samples: int
    psi_warning: float
    psi_critical: float
    for_s: float
    group_wait_s: float
    resolve_s: float
    webhooks: tuple[str, ...] = ()
    alertmanagers: tuple[str, ...] = ()
    slack_webhooks: tuple[str, ...] = ()
    status_url: str | None = None
    runbooks: Runbooks = DEFAULT_RUNBOOKS


@dataclass
class _Expected:
    scenario: str
    subject: str
    fired_s: float | None = None
    severity: str | None = None
    resolved_s: float | None = None


@dataclass
class _Receiver:
    kind: str  # webhook | alertmanager | slack
    url: str
    acked: dict[str, float] = field(default_factory=dict)  # firing / resolved -> seconds in
    refused: dict[str, float] = field(default_factory=dict)


class Drill:
    """One drill, run on a thread of its own (`start`); `report()` at any time."""

    def __init__(
        self,
        ident: int,
        scenarios: tuple[str, ...],
        settings: DrillSettings,
        reference: ReferenceProfile | None,
        new_stats: Callable[[Callable[[], float]], StatsAggregator],
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.ident = ident
        self.settings = settings
        self.reference = reference
        self.timeout_s = timeout_s
        self._new_stats = new_stats
        self._clock_s = time.monotonic()  # the shadow's own clock, moved by the drill
        self.started_unix_s = time.time()
        self._started = time.monotonic()
        self.state = "running"
        self.problems: list[str] = []
        self.skipped: dict[str, str] = {}
        self.expected: list[_Expected] = []
        self.receivers: list[_Receiver] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._book: AlertBook | None = None
        self._plan(scenarios)
        self.webhooks = self._sender("webhook", settings.webhooks)
        self.slack = self._sender("slack", settings.slack_webhooks)
        self.alertmanager = AlertmanagerSender(
            settings.alertmanagers, settings.status_url, drill=True, runbooks=settings.runbooks
        )
        self._watch(self.alertmanager.poster, "alertmanager", settings.alertmanagers)

    # ---- plan -----------------------------------------------------------------------------------

    def _plan(self, scenarios: tuple[str, ...]) -> None:
        reference = self.reference
        monitored = [f for f in reference.features if f.has_distribution] if reference else []
        inputs = [f for f in monitored if f.role == "input"]
        outputs = [f for f in monitored if f.role == "output"]
        self.shifted_input = inputs[0] if inputs else None
        self.shifted_output = outputs[0] if outputs else None
        for scenario in scenarios:
            if scenario == "covariate":
                if self.shifted_input is None:
                    self.skipped[scenario] = "no reference profile with a monitored input"
                else:
                    subject = feature_subject("input", self.shifted_input.name)
                    self.expected.append(_Expected(scenario, subject))
            elif scenario == "prediction":
                if self.shifted_output is None:
                    self.skipped[scenario] = "no reference profile with a monitored output"
                else:
                    subject = feature_subject("output", self.shifted_output.name)
                    self.expected.append(_Expected(scenario, subject))
            elif scenario == "latency":
                self.expected.append(_Expected(scenario, "latency"))
            elif scenario == "errors":
                self.expected.append(_Expected(scenario, "error_rate"))
        if not self.expected:
            self.problems.append(
                "no scenario can run: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items())
            )
        if not (self.settings.webhooks or self.settings.alertmanagers or self.settings.slack_webhooks):
            self.problems.append(
                "no receiver is configured (alert_webhooks, alertmanagers, alert_slack_webhooks): "
                "an alert would reach nobody"
            )

    def _sender(self, kind: str, urls: tuple[str, ...]) -> WebhookSender:
        sender = WebhookSender(urls)
        self._watch(sender, kind, urls)
        return sender

    def _watch(self, sender: WebhookSender, kind: str, urls: tuple[str, ...]) -> None:
        receivers = {url: _Receiver(kind, url) for url in sender.urls}
        self.receivers.extend(receivers.values())

        def result(url: str, tag: str | None, ok: bool) -> None:
            receiver = receivers.get(url)
            if receiver is None or tag is None:
                return
            with self._lock:
                (receiver.acked if ok else receiver.refused).setdefault(tag, self._elapsed())

        sender.on_result = result

    # ---- run ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modeltap-drill", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _run(self) -> None:
        try:
            if self.expected:  # without receivers too: what fires is worth knowing
                self._drill()
        except Exception as exc:  # the drill reports what broke; the monitor goes on
            self.problems.append(f"the drill itself failed: {type(exc).__name__}: {exc}")
        finally:
            self._resolve_leftovers()
            # Closed together: in turn, a receiver that hangs took 2 s each.
            close_all((self.webhooks, self.slack, self.alertmanager.poster), time.monotonic() + 2.0)
            self._finish()

    def _resolve_leftovers(self) -> None:
        """A drill that ended early (timed out, failed) resolves what it fired, so no receiver
        keeps a drill incident open."""
        book = self._book
        if book is None:
            return
        firing = [alert for alert in book.alerts() if alert.state == "firing"]
        now = time.monotonic()
        groups: dict[tuple[str, str, str], list[Any]] = {}
        for alert in firing:
            groups.setdefault((alert.severity, alert.key.model, alert.key.version), []).append(alert)
        for (severity, model, version), alerts in groups.items():
            resolved = tuple(replace(a, state="resolved", since_s=now) for a in alerts)
            self._notify(Notification("resolved", severity, model, version, resolved), now)

    def _drill(self) -> None:
        settings = self.settings
        rng = np.random.default_rng(self.ident)
        stats = self._new_stats(lambda: self._clock_s)
        identity = stats.identity(settings.model, settings.version, accepted=True)
        book = self._book = AlertBook(
            for_s=settings.for_s,
            resolve_s=settings.resolve_s,
            repeat_s=math.inf,
            group_wait_s=settings.group_wait_s,
        )
        deadline = self._started + self.timeout_s
        slot_s = settings.window_slot_s
        # A history of normal traffic: enough slots for latency and error rate to be judged,
        # and a full drift window.
        for _ in range(MIN_SIGMA_HISTORY + 2):
            self._feed(stats, identity, rng, drifted=False)
            self._clock_s += slot_s
        # The incident: a full window of drifted traffic; latency and errors in the last slot.
        for slot in range(settings.window_slots):
            self._feed(stats, identity, rng, drifted=True, incident=slot == settings.window_slots - 1)
            if slot < settings.window_slots - 1:
                self._clock_s += slot_s
        if not self._watch_alerts(stats, book, deadline, want="firing"):
            return
        # Recovery: normal traffic until the window holds nothing else.
        for _ in range(settings.window_slots + 1):
            self._clock_s += slot_s
            self._feed(stats, identity, rng, drifted=False)
        self._watch_alerts(stats, book, deadline, want="resolved")

    def _watch_alerts(self, stats: StatsAggregator, book: AlertBook, deadline: float, want: str) -> bool:
        """Evaluate the shadow's levels until every expected alert reached `want` and every
        receiver acknowledged it (or refused it); False when the time ran out first."""
        settings = self.settings
        while True:
            now = time.monotonic()
            stats.invalidate_scores()
            snapshot = Snapshot(
                taken_unix_ns=time.time_ns(), start_unix_ns=0, instance_id="drill", pid=0,
                models=stats.model_views(),
            )  # fmt: skip
            observed = observations(snapshot, settings.psi_warning, settings.psi_critical)
            due = book.evaluate(observed, now)
            firing = {a.key.subject: a for a in book.alerts() if a.state == "firing"}
            for expected in self.expected:
                alert = firing.get(expected.subject)
                if want == "firing" and alert is not None and expected.fired_s is None:
                    expected.fired_s, expected.severity = self._elapsed(), alert.severity
            for notification in due:
                self._notify(notification, now)
                if notification.kind == "resolved":
                    resolved = {a.key.subject for a in notification.alerts}
                    for expected in self.expected:
                        if expected.subject in resolved and expected.resolved_s is None:
                            expected.resolved_s = self._elapsed()
            reached = all(
                (e.fired_s if want == "firing" else e.resolved_s) is not None for e in self.expected
            )
            with self._lock:
                answered = all(want in r.acked or want in r.refused for r in self.receivers)
            if reached and answered:
                return True
            if now >= deadline:
                self._timed_out(want)
                return False
            time.sleep(EVALUATE_EVERY_S)

    def _timed_out(self, want: str) -> None:
        missing = [
            e.subject for e in self.expected if (e.fired_s if want == "firing" else e.resolved_s) is None
        ]
        if missing:
            self.problems.append(f"not {want} within {self.timeout_s:g} s: {', '.join(missing)}")
        with self._lock:
            silent = [r for r in self.receivers if want not in r.acked and want not in r.refused]
        for receiver in silent:
            self.problems.append(
                f"{receiver.kind} {redact_url(receiver.url)}: no answer to the {want} notification "
                f"within {self.timeout_s:g} s"
            )

    def _notify(self, notification: Notification, now: float) -> None:
        offset = time.time() - now
        to_unix: Callable[[float], float] = lambda t: t + offset  # noqa: E731
        tag = "resolved" if notification.kind == "resolved" else "firing"
        settings = self.settings
        window_s = settings.window_slots * settings.window_slot_s
        document = notification_document(
            notification, to_unix, settings.status_url, settings.runbooks, drill=True, window_s=window_s
        )
        self.webhooks.offer(document, tag)
        slack = slack_message(
            notification, to_unix, settings.runbooks, drill=True, status_url=settings.status_url
        )
        self.slack.offer(slack, tag)
        self.alertmanager.notify(notification, now, to_unix, None, tag)

    # ---- synthetic traffic ----------------------------------------------------------------------

    def _feed(
        self,
        stats: StatsAggregator,
        identity: Any,
        rng: np.random.Generator,
        *,
        drifted: bool,
        incident: bool = False,
    ) -> None:
        """One slot's synthetic exchanges into the shadow."""
        settings = self.settings
        scenarios = {e.scenario for e in self.expected}
        rows = max(HISTORY_REQUESTS, math.ceil(2 * settings.min_samples / settings.window_slots))
        reference = self.reference
        if reference is not None:
            for role in ("input", "output"):
                features = [f for f in reference.features if f.role == role]
                if not features:
                    continue
                shifted = self.shifted_input if role == "input" else self.shifted_output
                move = drifted and ("covariate" if role == "input" else "prediction") in scenarios
                columns = {
                    f.name: _sample(
                        f, rows, rng, shifted=move and shifted is not None and f.name == shifted.name
                    )
                    for f in features
                }
                stats.observe_columns(identity, role, columns, 1, True)
        durations = rng.lognormal(math.log(NORMAL_LATENCY_S), 0.25, HISTORY_REQUESTS)
        errors = int(rng.binomial(HISTORY_REQUESTS, 0.01))
        if incident and "latency" in scenarios:
            durations = durations * 20.0
        if incident and "errors" in scenarios:
            errors = HISTORY_REQUESTS // 2
        http = (("http.request.method", "POST"), ("http.response.status_code", 200))
        stats.observe_latency(identity, http, durations, 1, errors)

    # ---- report ---------------------------------------------------------------------------------

    def _finish(self) -> None:
        with self._lock:
            for receiver in self.receivers:
                for kind in ("firing", "resolved"):
                    if kind in receiver.refused and kind not in receiver.acked:
                        self.problems.append(
                            f"{receiver.kind} {redact_url(receiver.url)} refused the {kind} notification"
                        )
        for expected in self.expected:
            if expected.fired_s is None and not any(expected.subject in p for p in self.problems):
                self.problems.append(f"{expected.subject} did not fire")
        self.state = "failed" if self.problems else "passed"

    def report(self) -> dict[str, Any]:
        with self._lock:
            receivers = [
                {
                    "kind": r.kind,
                    "url": redact_url(r.url),
                    "firing_acknowledged_after_s": r.acked.get("firing"),
                    "resolved_acknowledged_after_s": r.acked.get("resolved"),
                    "refused": sorted(r.refused),
                }
                for r in self.receivers
            ]
        return {
            "id": self.ident,
            "state": self.state,
            "drill": True,
            "model": self.settings.model,
            "version": self.settings.version,
            "started_unix_s": self.started_unix_s,
            "elapsed_s": round(self._elapsed(), 3),
            "timeout_s": self.timeout_s,
            "alerts": [
                {
                    "scenario": e.scenario,
                    "subject": e.subject,
                    "severity": e.severity,
                    "fired_after_s": e.fired_s,
                    "resolved_after_s": e.resolved_s,
                }
                for e in self.expected
            ],
            "skipped": dict(self.skipped),
            "receivers": receivers,
            "problems": list(self.problems),
        }


def _sample(feature: ReferenceFeature, rows: int, rng: np.random.Generator, *, shifted: bool) -> list[Any]:
    """Values drawn like the reference's (or, `shifted`, well off it)."""
    counts = np.asarray(feature.counts, dtype=np.float64)
    if feature.kind == "categorical":
        vocabulary = list(feature.vocabulary)
        if not vocabulary:
            return [None] * rows
        weights = counts[: len(vocabulary)]
        if shifted:
            rarest = vocabulary[int(np.argmin(weights))] if weights.size else vocabulary[-1]
            return [rarest] * rows
        p = weights / weights.sum() if weights.sum() > 0 else None
        return [vocabulary[i] for i in rng.choice(len(vocabulary), rows, p=p)]
    # Each value at the upper bound of a bucket drawn by the reference's counts: the window then
    # has the reference's histogram exactly (integer features stay integers), so an unshifted
    # feature never drifts. The open last bucket takes the reference's maximum.
    edges = np.asarray(feature.fine_edges, dtype=np.float64)
    high = feature.max if feature.max is not None else float(edges[-1])
    uppers = np.concatenate((edges, [max(high, float(edges[-1]))]))
    values = uppers[rng.choice(len(counts), rows, p=counts / counts.sum())]
    if shifted:
        values = values + 3.0 * (feature.std or 1.0)
    return [float(v) for v in values]


class DrillDesk:
    """The drill endpoints: `POST /drill` starts one (one at a time), `GET /drill` reports the
    last one. Body of the POST: empty, or `{"scenario": "all" | "covariate" | …, "timeout_s": 120}`."""

    def __init__(
        self,
        settings: Callable[[], DrillSettings],
        reference: ReferenceProfile | None,
        new_stats: Callable[[Callable[[], float]], StatsAggregator],
    ) -> None:
        self._settings = settings
        self._reference = reference
        self._new_stats = new_stats
        self._lock = threading.Lock()
        self._ids = 0
        self.current: Drill | None = None

    def start(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        try:
            request = json.loads(body) if body.strip() else {}
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return _answer(400, {"error": 'the body must be empty or JSON: {"scenario": "all"}'})
        scenario = request.get("scenario", "all")
        if scenario != "all" and scenario not in SCENARIOS:
            return _answer(400, {"error": f"scenario must be all or one of {', '.join(SCENARIOS)}"})
        timeout = request.get("timeout_s", DEFAULT_TIMEOUT_S)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 1 <= timeout <= 3600:
            return _answer(400, {"error": "timeout_s must be a number of seconds within 1..3600"})
        with self._lock:
            if self.current is not None and self.current.state == "running":
                return _answer(409, {"error": "a drill is running", "drill": self.current.report()})
            self._ids += 1
            scenarios = SCENARIOS if scenario == "all" else (scenario,)
            drill = Drill(
                self._ids, scenarios, self._settings(), self._reference, self._new_stats, float(timeout)
            )
            self.current = drill
        drill.start()
        return _answer(202, drill.report())

    def status(self) -> tuple[int, bytes]:
        drill = self.current
        if drill is None:
            return _answer(404, {"error": "no drill has run since the monitor started"})
        return _answer(200, drill.report())


def _answer(status: int, document: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(document).encode() + b"\n"
