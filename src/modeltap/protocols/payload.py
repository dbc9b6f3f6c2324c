"""What decoders take and give."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

Value = float | str | bool | None
Column = list[Value]


@dataclass(frozen=True)
class ExchangeBytes:
    """The decoder's whole input: one exchange as bytes and a few header values."""

    method: str
    path: str
    request_body: bytes
    response_body: bytes
    status: int
    request_content_type: str = ""
    request_content_encoding: str = ""
    response_content_type: str = ""
    response_content_encoding: str = ""
    # Names for positional features, from the reference profile (else f0, f1, ...).
    feature_names: Sequence[str] = ()


@dataclass
class DecodedPayload:
    """Columns of one batch: `features[name][i]` is row i's value; None means missing."""

    protocol: str = "unknown"
    features: dict[str, Column] = field(default_factory=dict)
    outputs: dict[str, Column] = field(default_factory=dict)
    rows: int = 0
    model_name: str | None = None
    model_version: str | None = None
    request_id: str | None = None
    # Counted violations by reason: decode_error, missing, type, schema, out_of_range.
    violations: Counter[str] = field(default_factory=Counter)
    # Statistics skipped for a reason that is not the payload's fault (e.g. body_too_large).
    skipped: str | None = None
