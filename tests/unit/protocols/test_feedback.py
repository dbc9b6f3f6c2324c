"""The feedback body: objects, arrays and NDJSON; bad items rejected one by one with a reason."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modeltap.protocols.feedback import (
    MAX_ID_LENGTH,
    FeedbackBodyError,
    FeedbackItem,
    parse_feedback,
)


def test_one_object_an_array_and_ndjson_say_the_same() -> None:
    items = [
        {"request_id": "a1", "row": 2, "label": "churned", "model_name": "churn"},
        {"key": {"transaction_id": "T-1042"}, "label": 1},
        {"request_id": 17, "label": True},
    ]
    expected = (
        FeedbackItem(0, "churned", request_id="a1", row=2, model_name="churn"),
        FeedbackItem(1, 1.0, key=("transaction_id", "T-1042")),
        FeedbackItem(2, True, request_id="17"),
    )
    as_array = parse_feedback(orjson.dumps(items))
    ndjson = b"\n".join(orjson.dumps(i) for i in items) + b"\n\n"
    as_lines = parse_feedback(ndjson, "application/x-ndjson; charset=utf-8")
    assert as_array.items == as_lines.items == expected
    assert as_array.rejected == ()
    assert parse_feedback(orjson.dumps(items[0])).items == (expected[0],)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("a string", "not_an_object"),
        ({"request_id": "x"}, "no_label"),
        ({"request_id": "x", "label": None}, "bad_label"),
        ({"request_id": "x", "label": float("inf")}, "bad_label"),
        ({"request_id": "x", "label": {"nested": 1}}, "bad_label"),
        ({"label": "yes"}, "no_join_key"),
        ({"request_id": "", "label": "yes"}, "bad_request_id"),
        ({"request_id": "x" * (MAX_ID_LENGTH + 1), "label": "yes"}, "bad_request_id"),
        ({"request_id": "a\nb", "label": "yes"}, "bad_request_id"),
        ({"request_id": ["x"], "label": "yes"}, "bad_request_id"),
        ({"request_id": "x", "row": -1, "label": "yes"}, "bad_row"),
        ({"request_id": "x", "row": 1.5, "label": "yes"}, "bad_row"),
        ({"request_id": "x", "row": True, "label": "yes"}, "bad_row"),
        ({"key": {"a": "1", "b": "2"}, "label": "yes"}, "bad_key"),
        ({"key": "T-1", "label": "yes"}, "bad_key"),
        ({"key": {"id": None}, "label": "yes"}, "bad_key"),
        ({"request_id": "x", "label": "yes", "model_name": 5.5}, "bad_model_name"),
    ],
)
def test_each_bad_item_is_rejected_with_its_reason_and_the_rest_go_on(item: object, reason: str) -> None:
    good = {"request_id": "ok", "label": "yes"}
    batch = parse_feedback(orjson.dumps([good, item, good]))
    assert batch.rejected == ((1, reason),)
    assert [i.index for i in batch.items] == [0, 2]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"not json", "application/json"),
        (b"42", "application/json"),
        (b'{"a": 1}\nnope', "application/x-ndjson"),
    ],
)
def test_an_unreadable_body_is_an_error(body: bytes, content_type: str) -> None:
    with pytest.raises(FeedbackBodyError):
        parse_feedback(body, content_type)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_nothing_else_and_every_item_is_accounted_for(body: bytes) -> None:
    for content_type in ("application/json", "application/x-ndjson"):
        try:
            batch = parse_feedback(body, content_type)
        except FeedbackBodyError:
            continue
        indexes = sorted([i.index for i in batch.items] + [index for index, _ in batch.rejected])
        assert indexes == list(range(len(indexes)))  # each item accepted or rejected, once
