"""What decoders take and give."""

from __future__ import annotations

from collections.abc import Sequence
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
    request_content_encoding: str = ""
    response_content_encoding: str = ""
    # Names for positional features, from the reference profile (else f0, f1, ...).
    feature_names: Sequence[str] = ()
    request_content_type: str = ""
    response_content_type: str = ""
    # Open Inference Protocol binary extension: the JSON header's length in the request body
    # (`Inference-Header-Content-Length`), None without the header.
    inference_header_length: int | None = None


class DecodedPayload:
    """What one exchange decodes to. `features[name][i]` is row i's value; None means missing.

    A plain slotted class (not a dataclass): one is built per exchange on the worker, and field
    factories cost more than the decode itself for small bodies.
    """

    __slots__ = (
        "answer_version",
        "features",
        "matrix_names",
        "matrix_rows",
        "model_name",
        "model_version",
        "output_values",
        "outputs",
        "protocol",
        "request_id",
        "rows",
        "skipped",
        "violations",
    )

    def __init__(self, skipped: str | None = None) -> None:
        self.protocol = "unknown"
        self.features: dict[str, Column] = {}
        self.outputs: dict[str, Column] = {}
        self.rows = 0
        self.model_name: str | None = None
        self.model_version: str | None = None
        # The version the response itself carries (a header or a field of its body), never the
        # request's URL or payload: what `versions_seen` and a version mismatch go by.
        self.answer_version: str | None = None
        self.request_id: str | None = None
        # Counted violations by reason: decode_error, missing, type, schema, out_of_range.
        self.violations: dict[str, int] = {}
        # Statistics skipped for a reason that is not the payload's fault (e.g. body_too_large).
        self.skipped = skipped
        # Fast path for the common numeric batch: row lists as parsed, converted to one float
        # matrix per micro-batch on the worker (`rows_to_columns` is the fallback).
        self.matrix_rows: list[Any] | None = None
        self.matrix_names: tuple[str, ...] = ()
        # Likewise a flat list of scalar predictions (one output column named `prediction`).
        self.output_values: list[Any] | None = None


def count(violations: dict[str, int], reason: str, n: int = 1) -> None:
    """Add `n` violations of `reason` (a plain dict: a Counter costs more to create per exchange)."""
    violations[reason] = violations.get(reason, 0) + n
