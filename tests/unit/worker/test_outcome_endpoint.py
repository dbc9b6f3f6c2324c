"""`POST …/outcome`: every item accepted or rejected with its index and reason."""

from __future__ import annotations

import orjson

from modeltap.stats.business import BusinessOutcomes
from modeltap.worker.feedback import FeedbackEndpoint, outcome_endpoint

NAMES = ("conversion", "order_value")


def _endpoint(label_key: str | None = None) -> tuple[BusinessOutcomes, FeedbackEndpoint]:
    business = BusinessOutcomes(slots=10, slot_s=60.0, default_model="shop")
    return business, outcome_endpoint(business, label_key, NAMES, clock=lambda: 5.0)


def test_items_are_joined_or_rejected_with_their_reason() -> None:
    business, handle = _endpoint()
    business.add_exposures("shop", "1", [("id", "a", "0"), ("id", "a", "1")], 5.0)
    body = orjson.dumps(
        [
            {"request_id": "a", "row": 0, "name": "conversion", "value": True},
            {"request_id": "a", "row": 0, "name": "order_value", "value": 19.5},
            {"request_id": "a", "row": 0, "name": "conversion", "value": 1},  # the same again
            {"request_id": "a", "row": 1, "name": "conversion", "value": 2},  # not 0/1
            {"request_id": "a", "row": 1, "name": "clicks", "value": 3},  # not configured
            {"request_id": "a", "row": 1, "value": 3},
            {"request_id": "a", "row": 1, "name": "order_value", "value": "12"},
            {"name": "conversion", "value": 1},
            {"key": {"order_id": "x"}, "name": "conversion", "value": 1},
            "nope",
        ]
    )
    status, answer = handle(body, "application/json")
    assert status == 200
    assert orjson.loads(answer) == {
        "accepted": 2,
        "duplicates": 1,
        "rejected": [
            {"index": 3, "reason": "bad_value"},
            {"index": 4, "reason": "unknown_name"},
            {"index": 5, "reason": "no_name"},
            {"index": 6, "reason": "bad_value"},
            {"index": 7, "reason": "no_join_key"},
            {"index": 8, "reason": "unknown_key"},
            {"index": 9, "reason": "not_an_object"},
        ],
    }
    counts = business.outcome_counts()
    assert counts["joined"] == 2
    assert counts["duplicate"] == 1
    assert counts["rejected"] == 7


def test_ndjson_and_keys() -> None:
    business, handle = _endpoint(label_key="order_id")
    business.add_exposures("shop", "1", [("key", "T-1"), ("key", "T-2")], 5.0)
    body = b'{"key": {"order_id": "T-1"}, "name": "conversion", "value": 1}\n\n' + (
        b'{"key": {"order_id": "T-2"}, "name": "conversion", "value": 0}\n'
        b'{"request_id": "r", "name": "conversion", "value": 0}\n'
    )
    status, answer = handle(body, "application/x-ndjson")
    assert status == 200
    assert orjson.loads(answer) == {
        "accepted": 2,
        "duplicates": 0,
        "rejected": [{"index": 2, "reason": "key_required"}],
    }


def test_a_body_that_is_not_json_is_a_400() -> None:
    _, handle = _endpoint()
    status, answer = handle(b"{not json", "application/json")
    assert status == 400
    assert b"not JSON" in answer


def test_no_outcome_names_is_a_422() -> None:
    business = BusinessOutcomes(slots=10, slot_s=60.0)
    status, answer = outcome_endpoint(business, None, ())(b"[]", "application/json")
    assert status == 422
    assert b"outcome_names" in answer


def test_values_beyond_the_cap_are_refused() -> None:
    business, handle = _endpoint()
    business.add_exposures("shop", "1", [("id", "a", "0")], 5.0)
    body = orjson.dumps(
        [
            {"request_id": "a", "name": "order_value", "value": 1e160},
            {"request_id": "a", "name": "order_value", "value": -2e12},
            {"request_id": "a", "name": "order_value", "value": 99.5},
        ]
    )
    status, answer = handle(body, "application/json")
    assert status == 200
    assert orjson.loads(answer)["rejected"] == [
        {"index": 0, "reason": "bad_value"},
        {"index": 1, "reason": "bad_value"},
    ]
