"""The statistics' input: one decoded exchange, in plain types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from modeltap.snapshot import Attributes

Value = float | str | bool | None


@dataclass(frozen=True)
class Observation:
    model_name: str
    model_version: str
    http_attributes: Attributes  # semantic-convention attributes of the duration histogram
    duration_s: float
    is_error: bool
    weight: int = 1  # exchanges this observation stands for (sampling under overload)
    rows: int = 0
    features: Mapping[str, list[Value]] = field(default_factory=dict)
    outputs: Mapping[str, list[Value]] = field(default_factory=dict)
    violations: Mapping[str, int] = field(default_factory=dict)
