"""The monitor's side of the sidecar's rollback switch (EMERGENCY's response, opt-in).

The data planes own the switch (`modeltap.sidecar.route`) and report its state; the monitor keeps
what was last asked of them (by the operator, `POST /rollback` and `POST /rollback/cancel` on the
admin port, or by an EMERGENCY alert when `auto_rollback` is `emergency`) and sends it with its
control messages to every data plane that does not follow it yet, a restarted one included.
Each change is also an event the analysis turns into a log line and a notification.

Thread-safe: the admin endpoints call `request` from their own threads, the analysis thread
calls the rest.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modeltap.snapshot import RouteReport

PRIMARY, FALLBACK = "primary", "fallback"
MAX_CAUSE_CHARS = 500


@dataclass(frozen=True)
class RouteCommand:
    """What the data planes are asked to do: send new requests to `target`."""

    target: str  # primary | fallback
    cause: str
    by: str  # operator | auto
    ident: int

    def document(self) -> dict[str, Any]:
        return {"target": self.target, "cause": self.cause, "by": self.by, "id": self.ident}


def route_report(counts: list[dict[str, Any]]) -> RouteReport | None:
    """The data planes' reports (`route`, `route_cause`, ...) in one; None when none has a switch.
    `processes` counts every data plane, those that have not reported yet (just started) too."""
    reporting = [c for c in counts if c.get("route") in (PRIMARY, FALLBACK)]
    if not reporting:
        return None
    moved = [c for c in reporting if c.get("route") == FALLBACK]
    latest = max(reporting, key=lambda c: float(c.get("route_since_unix_s") or 0.0))
    since = latest.get("route_since_unix_s")
    return RouteReport(
        processes=len(counts),
        on_fallback=len(moved),
        cause=str(latest.get("route_cause") or ""),
        by=str(latest.get("route_by") or ""),
        since_unix_s=float(since) if isinstance(since, (int, float)) else None,
    )


def clean_cause(text: object) -> str:
    """An operator's words, bounded and printable (they reach logs and notifications)."""
    if not isinstance(text, str):
        return ""
    return "".join(c for c in text if c.isprintable())[:MAX_CAUSE_CHARS].strip()


class RollbackControl:
    """Off until `configure` names a fallback (a sidecar started with `--fallback-upstream`)."""

    def __init__(self) -> None:
        self.fallback: str | None = None
        self.auto = "off"
        self.command: RouteCommand | None = None
        # Applied at once where the switch lives in this process (inline mode), else None.
        self.apply: Callable[[RouteCommand], None] | None = None
        # Told of each request at once (the monitor sends it to its data planes without waiting
        # for the next control message).
        self.on_request: Callable[[], None] | None = None
        self._ids = 0
        self._lock = threading.Lock()
        self._events: collections.deque[RouteCommand] = collections.deque(maxlen=64)

    @property
    def available(self) -> bool:
        return self.fallback is not None

    def configure(self, fallback: str, auto: str = "off") -> None:
        self.fallback = fallback
        self.auto = auto if auto in ("off", "emergency") else "off"

    def request(self, target: str, cause: str, by: str) -> RouteCommand | None:
        """Ask the data planes to send new requests to `target`; None without a fallback."""
        if not self.available or target not in (PRIMARY, FALLBACK):
            return None
        with self._lock:
            self._ids += 1
            command = RouteCommand(target, clean_cause(cause), by, self._ids)
            previous = self.command
            changed = previous is None or previous.target != target
            self.command = command
            # A rollback asked again for a new reason is news; the same one again (a retrying
            # script) is not: each was a notification and a restarted ModelTapRollback.
            if changed or (target == FALLBACK and (previous is None or previous.cause != command.cause)):
                self._events.append(command)
        if self.apply is not None:
            self.apply(command)
        if self.on_request is not None:
            self.on_request()
        return command

    def adopt(self, report: RouteReport) -> RouteCommand | None:
        """A monitor that (re)started finds its data planes rolled back: it takes their state as
        its own request (no new event), so a data plane that restarts follows it too."""
        if self.command is not None or not report.active or not self.available:
            return None
        with self._lock:
            self.command = RouteCommand(FALLBACK, report.cause, report.by or "operator", 0)
        return self.command

    def on_emergency(self, model: str, version: str, subjects: list[str]) -> RouteCommand | None:
        """An EMERGENCY alert fired: roll back by itself when the user enabled it."""
        if self.auto != "emergency" or not self.available:
            return None
        if self.command is not None and self.command.target == FALLBACK:
            return None  # already rolled back
        cause = f"EMERGENCY on {model} version {version}: {', '.join(subjects)}"
        return self.request(FALLBACK, cause, "auto")

    def pending_for(self, reported: str | None) -> dict[str, Any] | None:
        """The command for a data plane that reports `reported` (None: it follows already)."""
        command = self.command
        if command is None or reported == command.target:
            return None
        return command.document()

    def drain_events(self) -> list[RouteCommand]:
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events


def rollback_notification(
    command: RouteCommand, fallback: str, model: str, version: str, at_unix_s: float
) -> dict[str, Any]:
    """The webhook document for a switch: `kind` rollback or rollback_cancelled."""
    rolled_back = command.target == FALLBACK
    return {
        "source": "modeltap",
        "kind": "rollback" if rolled_back else "rollback_cancelled",
        "severity": "emergency" if command.by == "auto" else "critical",
        "model": model,
        "version": version,
        "drill": False,
        "status_url": None,
        "rollback": {
            "target": command.target,
            "fallback_upstream": fallback,
            "cause": command.cause,
            "by": command.by,
            "at_unix_s": at_unix_s,
        },
        "alerts": [],
    }


def rollback_slack(document: dict[str, Any]) -> dict[str, Any]:
    switch = document["rollback"]
    if switch["target"] == FALLBACK:
        head = f":rewind: *modeltap rollback: {document['severity']}* — {document['model']}"
        line = f"new requests go to `{switch['fallback_upstream']}` (by {switch['by']}): {switch['cause']}"
    else:
        head = f":arrow_forward: *modeltap rollback cancelled* — {document['model']}"
        line = f"new requests go to the upstream again (by {switch['by']}): {switch['cause']}"
    return {"text": f"{head}\n• {line}"}


def rollback_alert(document: dict[str, Any], starts_at: str, runbook_url: str) -> dict[str, Any]:
    """The switch as an Alertmanager alert, `ModelTapRollback`: active while rolled back (its
    `endsAt` is set by `AlertmanagerSender.hold`, which keeps it alive)."""
    switch = document["rollback"]
    return {
        "labels": {
            "alertname": "ModelTapRollback",
            "severity": document["severity"] if switch["target"] == FALLBACK else "critical",
            "modeltap_model_name": document["model"],
        },
        "annotations": {
            "summary": f"{document['model']}: traffic rolled back to {switch['fallback_upstream']} "
            f"by {switch['by']}: {switch['cause']}",
            "runbook_url": runbook_url,
        },
        "startsAt": starts_at,
    }


APPLY_WAIT_S = 2.0


def rollback_endpoint(
    control: RollbackControl, target: str, report: Callable[[], RouteReport | None]
) -> Callable[[bytes, str], tuple[int, bytes]]:
    """`POST /rollback` (target fallback) or `POST /rollback/cancel` (target primary) on the
    sidecar's admin port. Body: empty, or `{"cause": "…"}`. Answers once every data plane follows
    (200), or after `APPLY_WAIT_S` with what follows so far (202: they will on their next
    control message); 409 without a fallback upstream."""

    def handle(body: bytes, content_type: str) -> tuple[int, bytes]:
        if not control.available:
            return _answer(409, {"error": "no fallback upstream is configured (--fallback-upstream)"})
        cause = ""
        if body.strip():
            try:
                document = json.loads(body)
            except ValueError:
                return _answer(400, {"error": 'the body must be empty or JSON: {"cause": "…"}'})
            if not isinstance(document, dict):
                return _answer(400, {"error": 'the body must be empty or JSON: {"cause": "…"}'})
            cause = clean_cause(document.get("cause"))
        if not cause:
            cause = "rolled back by the operator" if target == FALLBACK else "cancelled by the operator"
        command = control.request(target, cause, "operator")
        assert command is not None
        deadline = time.monotonic() + APPLY_WAIT_S
        while True:
            state = report()
            following = (
                state is not None
                and state.processes > 0
                and (state.on_fallback == state.processes if target == FALLBACK else state.on_fallback == 0)
            )
            if following or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        return _answer(
            200 if following else 202,
            {
                "target": target,
                "fallback_upstream": control.fallback,
                "cause": command.cause,
                "by": command.by,
                "applied": following,
                "processes": state.processes if state else 0,
                "on_fallback": state.on_fallback if state else 0,
            },
        )

    return handle


def rollback_endpoints(
    control: RollbackControl, report: Callable[[], RouteReport | None]
) -> dict[str, Callable[[bytes, str], tuple[int, bytes]]]:
    """The admin port's `/rollback` and `/rollback/cancel`, for the views' write endpoints."""
    return {
        "/rollback": rollback_endpoint(control, FALLBACK, report),
        "/rollback/cancel": rollback_endpoint(control, PRIMARY, report),
    }


def _answer(status: int, document: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(document).encode() + b"\n"
