"""`POST …/feedback` and `POST …/outcome`: labels and business outcomes in, joined to their
predictions by the ground-truth state and the business outcomes.

Runs off the serving event loop (the views hand it to a thread): parsing a 1 MiB body takes
milliseconds. The answer says what became of every item:
`{"accepted": n, "duplicates": n, "rejected": [{"index": i, "reason": "…"}]}`; accepted items
joined their prediction or wait (briefly, bounded) for a prediction that has not been seen yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import orjson

from modeltap.protocols.feedback import (
    FeedbackBodyError,
    FeedbackItem,
    OutcomeItem,
    parse_feedback,
    parse_outcomes,
)
from modeltap.reference.document import canonical_category
from modeltap.stats.business import BusinessOutcomes
from modeltap.stats.ground_truth import GroundTruth

MAX_FEEDBACK_BYTES = 1024 * 1024

FeedbackEndpoint = Callable[[bytes, str], tuple[int, bytes]]
T = TypeVar("T", bound="_Item")


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": message})


def join_key(
    label_key: str | None, request_id: str | None, row: int, key_value: object
) -> tuple[str, ...] | None:
    """The key a prediction row and its label share: the label-key column's value, canonical (so
    1, 1.0 and "1" meet), or the request id and the row."""
    if label_key is not None:
        value = canonical_category(key_value)
        return ("key", value) if value is not None else None
    if request_id:
        return ("id", request_id, str(row))
    return None


class _Item(Protocol):
    """What a feedback or outcome item names its row by."""

    @property
    def index(self) -> int: ...
    @property
    def key(self) -> tuple[str, str] | None: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def row(self) -> int: ...


def _item_key(item: _Item, label_key: str | None) -> tuple[str, ...] | str:
    """The join key an item names, or why it cannot name one."""
    if item.key is not None:
        if label_key is None or item.key[0] != label_key:
            return "unknown_key"
        key = join_key(label_key, None, 0, item.key[1])
    elif label_key is not None:
        return "key_required"  # rows are kept by key
    else:
        key = join_key(None, item.request_id, item.row, None)
    return key if key is not None else "bad_key"


def _join_all(
    items: Sequence[T], label_key: str | None, join: Callable[[T, tuple[str, ...]], str]
) -> tuple[int, int, list[tuple[int, str]]]:
    """(accepted, duplicates, rejected) of joining each item with `join` (which says what became
    of it: joined or waiting are accepted, duplicate is a duplicate, anything else a rejection)."""
    accepted = duplicates = 0
    rejected: list[tuple[int, str]] = []
    for item in items:
        key = _item_key(item, label_key)
        outcome = key if isinstance(key, str) else join(item, key)
        if outcome in ("joined", "waiting"):
            accepted += 1
        elif outcome == "duplicate":
            duplicates += 1
        else:
            rejected.append((item.index, outcome))
    return accepted, duplicates, rejected


def _answer(accepted: int, duplicates: int, rejected: list[tuple[int, str]]) -> tuple[int, bytes]:
    return 200, orjson.dumps(
        {
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": [{"index": i, "reason": r} for i, r in sorted(rejected)],
        }
    )


def _items_endpoint(
    refusal: str | None,
    parse: Callable[[bytes, str], tuple[Sequence[T], tuple[tuple[int, str], ...]]],
    label_key: str | None,
    join: Callable[[T, tuple[str, ...], float], str],
    counts_rejected: Callable[[int], None],
    clock: Callable[[], float],
) -> FeedbackEndpoint:
    """A write endpoint for items that name their rows (labels, outcomes): refused with 422 and
    `refusal` when set, 400 for a body that cannot be read, else every item joined or rejected,
    rejections counted, answered with what became of each."""

    def handle(body: bytes, content_type: str) -> tuple[int, bytes]:
        if refusal is not None:
            return _error(422, refusal)
        try:
            items, rejected_early = parse(body, content_type)
        except FeedbackBodyError as exc:
            return _error(400, str(exc))
        now = clock()
        accepted, duplicates, rejected = _join_all(items, label_key, lambda item, key: join(item, key, now))
        rejected += rejected_early
        counts_rejected(len(rejected))
        return _answer(accepted, duplicates, rejected)

    return handle


def feedback_endpoint(
    truth: GroundTruth, label_key: str | None, clock: Callable[[], float] = time.monotonic
) -> FeedbackEndpoint:
    """`POST …/feedback`: labels in, joined to their predictions by the ground-truth state."""

    def parse(body: bytes, content_type: str) -> tuple[Sequence[FeedbackItem], tuple[tuple[int, str], ...]]:
        batch = parse_feedback(body, content_type)
        return batch.items, batch.rejected

    return _items_endpoint(
        None
        if truth.enabled
        else "no ground truth: the reference profile names no label or prediction to judge "
        "(profile with --target COL --prediction COL)",
        parse,
        label_key,
        lambda item, key, now: truth.add_label(item.model_name, key, item.label, now).status,
        truth.counts_rejected,
        clock,
    )


def outcome_endpoint(
    business: BusinessOutcomes,
    label_key: str | None,
    names: tuple[str, ...],
    clock: Callable[[], float] = time.monotonic,
) -> FeedbackEndpoint:
    """`POST …/outcome`: business outcomes in, joined to their answered rows like labels, and
    answered like feedback."""
    allowed = frozenset(names)

    def parse(body: bytes, content_type: str) -> tuple[Sequence[OutcomeItem], tuple[tuple[int, str], ...]]:
        batch = parse_outcomes(body, content_type, allowed)
        return batch.items, batch.rejected

    return _items_endpoint(
        None
        if allowed
        else "business outcomes are off: name the outcomes to take with outcome_names "
        "(MODELTAP_OUTCOME_NAMES=conversion,order_value)",
        parse,
        label_key,
        lambda item, key, now: business.add_outcome(item.model_name, key, item.name, item.value, now),
        business.counts_rejected,
        clock,
    )
