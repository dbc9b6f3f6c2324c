"""What decoders take and give."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from modeltap._types import Value

Column = list[Value]


class ExchangeBytes(NamedTuple):
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


@dataclass(slots=True)
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
    violations: dict[str, int] = field(default_factory=dict)
    # Statistics skipped for a reason that is not the payload's fault (e.g. body_too_large).
    skipped: str | None = None
    # Fast path for the common numeric batch: row lists as parsed, converted to one float matrix
    # per micro-batch on the worker (`rows_to_columns` is the fallback when that fails).
    matrix_rows: list[Any] | None = None
    matrix_names: tuple[str, ...] = ()
    # Likewise a flat list of scalar predictions (one output column named `prediction`).
    output_values: list[Any] | None = None


def count(violations: dict[str, int], reason: str, n: int = 1) -> None:
    """Add `n` violations of `reason` (a plain dict: a Counter costs more to create per exchange)."""
    violations[reason] = violations.get(reason, 0) + n
