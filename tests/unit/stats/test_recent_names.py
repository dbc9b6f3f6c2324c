"""Feedback sent without a model name goes to the only model that fed the store lately; names
are forgotten once what they fed can no longer be joined, so they cannot pile up."""

from __future__ import annotations

from modeltap.stats.business import BusinessOutcomes
from modeltap.stats.recent_names import PRUNE_AT, RecentNames

DAY = 86_400.0


def test_the_only_recent_name() -> None:
    names = RecentNames(ttl_s=100.0)
    assert names.only(now=0.0) is None
    names.add("churn", now=0.0)
    assert names.only(now=50.0) == "churn"
    names.add("fraud", now=60.0)
    assert names.only(now=70.0) is None  # two: unnamed feedback is refused
    assert names.only(now=100.0) == "fraud"  # churn fed nothing joinable for ttl_s: forgotten
    assert names.only(now=160.0) is None


def test_names_do_not_pile_up_whoever_asks() -> None:
    names = RecentNames(ttl_s=10.0)
    for n in range(10_000):
        names.add(f"claimed-{n}", now=float(n))
        assert len(names) <= max(PRUNE_AT + 1, 11)


def test_unnamed_outcomes_join_once_the_other_names_are_forgotten() -> None:
    business = BusinessOutcomes(slots=10, slot_s=60.0, ttl_s=DAY)
    business.add_exposures("old", "1", ["q0"], now=0.0)
    business.add_exposures("churn", "1", ["q1"], now=DAY / 2)
    assert business.add_outcome(None, "q1", "conversion", 1.0, now=DAY / 2 + 1) == "unknown_model"
    # A day after "old" fed its last exposure it can join nothing: unnamed outcomes go to churn.
    assert business.add_outcome(None, "q1", "conversion", 1.0, now=DAY + 1) == "joined"
