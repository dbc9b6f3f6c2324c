"""Notifications as Slack-style incoming-webhook messages (`{"text": …}`, mrkdwn)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modeltap.alerts.runbooks import DEFAULT_RUNBOOKS, Runbooks
from modeltap.alerts.state import Notification

ICONS = {"firing": ":rotating_light:", "repeat": ":rotating_light:", "resolved": ":white_check_mark:"}


def slack_message(
    notification: Notification,
    to_unix: Callable[[float], float],
    runbooks: Runbooks = DEFAULT_RUNBOOKS,
    drill: bool = False,
    status_url: str | None = None,
) -> dict[str, Any]:
    """One message: a headline, then a line per alert with its score, threshold and runbook."""
    head = (
        f"{ICONS.get(notification.kind, '')} {'[drill] ' if drill else ''}"
        f"*modeltap {notification.kind}: {notification.severity}* "
        f"— {notification.model} version {notification.version}"
    )
    lines = [head.strip()]
    for alert in notification.alerts:
        score = f"{alert.score:.3f}" if alert.score is not None else "-"
        threshold = f"{alert.threshold:.3f}" if alert.threshold is not None else "-"
        lines.append(
            f"• `{alert.key.subject}` {alert.severity}: score {score} (threshold {threshold}) "
            f"<{runbooks.url(alert.key.subject)}|runbook>"
        )
    if status_url:
        lines.append(f"<{status_url}|status page>")
    return {"text": "\n".join(lines)}
