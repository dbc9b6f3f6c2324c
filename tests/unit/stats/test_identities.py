"""Trusted identities (issue "trust", items 3, 4, 10): a name or version becomes state only when
configuration, the reference or a 2xx answer vouches for it; caps; idle expiry; where errors go."""

from __future__ import annotations

import pytest

from modeltap.stats.identities import UNKNOWN, IdentityBook


def book(**options: object) -> IdentityBook:
    settings: dict[str, object] = {"max_names": 16, "max_versions": 8, "idle_expiry_s": 100.0}
    settings.update(options)
    return IdentityBook(**settings)  # type: ignore[arg-type]


def test_a_name_only_the_request_claims_is_unknown() -> None:
    identities = book()
    for i in range(50):
        assert identities.resolve(f"random-{i}", "v", accepted=False, now=0.0) == (UNKNOWN, UNKNOWN)
    assert identities.live() == {UNKNOWN: (UNKNOWN,)}


def test_a_2xx_answer_vouches_for_name_and_version() -> None:
    identities = book()
    assert identities.resolve("churn", "3", accepted=True, now=0.0) == ("churn", "3")
    assert identities.resolve("churn", None, accepted=True, now=1.0) == ("churn", UNKNOWN)
    assert identities.live() == {"churn": ("3", UNKNOWN)}


def test_configured_and_reference_names_are_trusted_without_an_answer() -> None:
    identities = book(trusted_names=["churn"])
    assert identities.resolve("churn", None, accepted=False, now=0.0) == ("churn", UNKNOWN)
    assert identities.resolve("other", None, accepted=False, now=0.0) == (UNKNOWN, UNKNOWN)


@pytest.mark.parametrize(
    ("live_versions", "claimed", "filed"),
    [
        (["3"], None, "3"),  # the only live version
        (["3"], "9", "3"),  # an unvouched claim falls back to the only live version
        (["3", "4"], "4", "4"),  # a vouched claim
        (["3", "4"], None, UNKNOWN),  # two live versions and no claim: cannot tell
        (["3", "4"], "9", UNKNOWN),
        ([], "9", UNKNOWN),  # nothing vouched: a claim is not enough
    ],
)
def test_an_error_is_filed_under_a_vouched_version(
    live_versions: list[str], claimed: str | None, filed: str
) -> None:
    identities = book(trusted_names=["churn"])
    for version in live_versions:
        identities.resolve("churn", version, accepted=True, now=0.0)
    assert identities.resolve("churn", claimed, accepted=False, now=1.0) == ("churn", filed)


def test_the_configured_version_files_everything() -> None:
    identities = book(fixed_version="2024-06")
    assert identities.resolve("churn", "other", accepted=True, now=0.0) == ("churn", "2024-06")
    assert identities.resolve("churn", None, accepted=False, now=0.0) == ("churn", "2024-06")


def test_names_beyond_the_cap_are_unknown_and_counted() -> None:
    identities = book(max_names=2)
    assert identities.resolve("a", "1", accepted=True, now=0.0) == ("a", "1")
    assert identities.resolve("b", "1", accepted=True, now=0.0) == ("b", "1")
    assert identities.resolve("c", "1", accepted=True, now=0.0) == (UNKNOWN, UNKNOWN)
    assert identities.over_cap == 1
    assert set(identities.live()) == {"a", "b", UNKNOWN}


def test_trusted_names_keep_their_place_under_the_cap() -> None:
    identities = book(max_names=2, trusted_names=["configured"])
    assert identities.resolve("a", "1", accepted=True, now=0.0) == ("a", "1")
    assert identities.resolve("b", "1", accepted=True, now=0.0) == (UNKNOWN, UNKNOWN)
    assert identities.resolve("configured", "1", accepted=True, now=0.0) == ("configured", "1")


def test_versions_beyond_the_cap_are_the_names_unknown_version() -> None:
    identities = book(max_versions=2)
    for version in ("1", "2"):
        assert identities.resolve("m", version, accepted=True, now=0.0) == ("m", version)
    assert identities.resolve("m", "3", accepted=True, now=0.0) == ("m", UNKNOWN)
    assert identities.over_cap == 1


def test_idle_versions_expire_and_free_their_place() -> None:
    identities = book(max_names=1, idle_expiry_s=10.0)
    attrs = identities.attributes(identities.resolve("a", "1", accepted=True, now=0.0))
    assert identities.resolve("b", "1", accepted=True, now=5.0) == (UNKNOWN, UNKNOWN)
    assert identities.expire(now=10.0) == []  # not idle for longer than the expiry yet
    gone = identities.expire(now=16.0)
    assert attrs in gone
    assert "a" not in identities.live()
    assert identities.resolve("b", "1", accepted=True, now=17.0) == ("b", "1")


def test_attributes_are_one_shared_tuple_per_identity() -> None:
    identities = book()
    first = identities.attributes(("m", "1"))
    assert first == (("modeltap.model.name", "m"), ("modeltap.model.version", "1"))
    assert identities.attributes(("m", "1")) is first
