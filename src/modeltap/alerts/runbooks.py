"""Where a notification sends people: a runbook per alert, and the status page; and what an
alert's subject names.

A subject is one of modeltap's own (`latency`, `error_rate`, `performance`, `telemetry`,
`rollback`, `version`, `freshness`), a kind that names one of several things
(`business:<figure>`, `gpu_memory:<hw.id>`), or a feature: `output:NAME`, `label:NAME`, and an
input's bare NAME, unless that name could be read as another subject (`latency`, `feature`, any
name with a colon): then `input:NAME`. So every subject names one thing, and its kind, role and
name are read back exactly (`parse_subject`): an input called `latency` has an alert of its own,
and an input `geo:country` is labelled as the rules label it.

Each alert links to its runbook: a URL configured for its subject (`alert_runbooks`, e.g.
`monthly_charges=https://wiki/churn-pricing`) or for its kind (`feature`, `latency`,
`error_rate`, `performance`, `telemetry`, `rollback`, `version`, `freshness`, `business`,
`gpu_memory`), else the section of `alert_runbook_url` (default: this project's
docs/runbooks.md) that says what to check for that kind of alert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modeltap.reference.document import ROLES

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
# Subjects of modeltap's own, one per model version (or per model: `rollback`).
BUILT_IN = frozenset(ANCHORS) - PREFIXED_KINDS - {"feature"}


@dataclass(frozen=True)
class Subject:
    """What a subject names: its kind (`feature` or one of ANCHORS' others), and for a feature
    its role and name; for a prefixed kind, `name` is the figure or the device."""

    kind: str
    role: str = ""
    name: str = ""


def feature_subject(role: str, name: str) -> str:
    """A feature's subject: `output:NAME`, `label:NAME`, an input's bare NAME, or `input:NAME`
    where the bare name could be read as another subject (a kind's name, or one with a colon)."""
    if role != "input" or ":" in name or name in ANCHORS:
        return f"{role}:{name}"
    return name


def parse_subject(subject: str) -> Subject:
    """The inverse of the subjects `observations` writes (`feature_subject` and the others)."""
    prefix, colon, rest = subject.partition(":")
    if colon and prefix in ROLES:
        return Subject("feature", prefix, rest)
    if colon and prefix in PREFIXED_KINDS:
        return Subject(prefix, name=rest)
    if subject in BUILT_IN:
        return Subject(subject)
    return Subject("feature", "input", subject)


def kind_of(subject: str) -> str:
    """An alert's kind from its subject (see `parse_subject`)."""
    return parse_subject(subject).kind


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
