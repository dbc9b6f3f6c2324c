"""Where a notification sends people: a runbook per alert, and the status page.

Each alert links to its runbook: a URL configured for its subject (`alert_runbooks`, e.g.
`monthly_charges=https://wiki/churn-pricing`) or for its kind (`feature`, `latency`,
`error_rate`, `performance`, `telemetry`, `rollback`, `version`, `freshness`, `business`,
`gpu_memory`), else the section of `alert_runbook_url` (default: this project's
docs/runbooks.md) that says what to check for that kind of alert.
"""

from __future__ import annotations

from collections.abc import Mapping

RUNBOOK = "https://github.com/modeltap/modeltap/blob/main/docs/runbooks.md"
ANCHORS = {
    "feature": "modeltapfeaturedrift",
    "latency": "modeltaplatencyhigh",
    "error_rate": "modeltaperrorratehigh",
    "telemetry": "modeltaptelemetrydropping",
    "performance": "modeltapperformancedrop",
    "rollback": "modeltaprollback",
    "version": "modeltapversionmismatch",
    "freshness": "modeltapdatastale",
    "business": "modeltapbusinessdrop",
    "gpu_memory": "modeltapgpumemoryhigh",
}


# Kinds whose subjects name one of several things: `business:<figure>`, `gpu_memory:<hw.id>`.
PREFIXED_KINDS = frozenset({"business", "gpu_memory"})


def kind_of(subject: str) -> str:
    """An alert's kind from its subject: the named ones, a prefixed kind (`business:…`,
    `gpu_memory:…`), else a feature (input, output, label)."""
    prefix, colon, _ = subject.partition(":")
    if colon and prefix in PREFIXED_KINDS:
        return prefix
    return subject if subject in ANCHORS else "feature"


class Runbooks:
    """Example::

    runbooks = Runbooks({"latency": "https://wiki/latency"})
    runbooks.url("monthly_charges")  # the project's docs/runbooks.md#modeltapfeaturedrift
    """

    def __init__(self, overrides: Mapping[str, str] | None = None, base: str | None = None) -> None:
        self.overrides = dict(overrides or {})
        self.base = (base or RUNBOOK).rstrip("/")

    def url(self, subject: str) -> str:
        kind = kind_of(subject)
        found = self.overrides.get(subject) or self.overrides.get(kind)
        return found or f"{self.base}#{ANCHORS[kind]}"


DEFAULT_RUNBOOKS = Runbooks()
