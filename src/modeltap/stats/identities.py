"""Which model names and versions may own state: only those something trustworthy vouched for.

A name or version read from a request (the URL, a header, the payload) is a claim. It becomes an
identity with its own statistics only when configuration names it, the reference profile names
it, or the model answered it with a 2xx. Everything else is filed under one `unknown` identity,
so a client cannot create state by inventing names. Vouched identities are capped (names, and
versions per name) and expire after a period without traffic.

Error answers name no version of their own on many servers (the version is only in successful
answers), so an error is filed under: the configured version; else the version the request
named, if it is already vouched; else the only live version of that model; else `unknown`.
"""

from __future__ import annotations

from collections.abc import Iterable

UNKNOWN = "unknown"
NAME = "modeltap.model.name"
VERSION = "modeltap.model.version"

Identity = tuple[str, str]
IdentityAttributes = tuple[tuple[str, str], tuple[str, str]]


class IdentityBook:
    """Vouched (name, version) pairs, bounded, with idle expiry.

    Example::

        book = IdentityBook(max_names=16, max_versions=8, idle_expiry_s=1800, trusted_names=["churn"])
        book.resolve("churn", "3", accepted=True, now=0.0)        # ('churn', '3'): the model answered
        book.resolve("attacker", "x", accepted=False, now=1.0)    # ('unknown', 'unknown')
        book.resolve("churn", None, accepted=False, now=2.0)      # ('churn', '3'): its only version
    """

    def __init__(
        self,
        *,
        max_names: int,
        max_versions: int,
        idle_expiry_s: float,
        trusted_names: Iterable[str] = (),
        fixed_version: str | None = None,
    ) -> None:
        self._max_names = max_names
        self._max_versions = max_versions
        self._expiry_s = idle_expiry_s
        self._trusted = frozenset(n for n in trusted_names if n and n != UNKNOWN)
        self._fixed_version = fixed_version
        # name -> version -> last seen (monotonic seconds). `unknown` versions are not capped.
        self._live: dict[str, dict[str, float]] = {}
        self._attributes: dict[Identity, IdentityAttributes] = {}
        # Answered identities that did not fit the caps (filed under `unknown` instead).
        self.over_cap = 0

    def resolve(
        self, name: str | None, version: str | None, *, accepted: bool, now: float, count: int = 1
    ) -> Identity:
        """The identity an exchange is filed under; `accepted` = the model answered it with a 2xx;
        `count`: how many alike exchanges this stands for (each one over a cap is counted)."""
        name = name or UNKNOWN
        versions = self._live.get(name)
        if versions is None and name == UNKNOWN:
            versions = self._live[UNKNOWN] = {}  # always allowed, outside the name cap
        elif versions is None:
            trusted = name in self._trusted
            if not (accepted or trusted):
                return self._touch(UNKNOWN, UNKNOWN, now)
            limit = self._max_names if trusted else self._max_names - self._reserved()
            if len(self._live) - (UNKNOWN in self._live) >= limit:
                self.over_cap += count
                return self._touch(UNKNOWN, UNKNOWN, now)
            versions = self._live[name] = {}
        chosen = self._fixed_version or (version if accepted else self._error_version(versions, version))
        chosen = chosen or UNKNOWN
        if chosen != UNKNOWN and chosen not in versions:
            capped = sum(1 for v in versions if v != UNKNOWN) >= self._max_versions
            if not accepted and chosen != self._fixed_version:
                chosen = UNKNOWN  # a claimed version nobody vouched for
            elif capped:
                self.over_cap += count
                chosen = UNKNOWN
        versions[chosen] = now
        return name, chosen

    def _reserved(self) -> int:
        """Trusted names not live yet keep their places under the name cap."""
        return sum(1 for n in self._trusted if n not in self._live)

    @staticmethod
    def _error_version(versions: dict[str, float], claimed: str | None) -> str | None:
        if claimed is not None and claimed in versions:
            return claimed
        live = [v for v in versions if v != UNKNOWN]
        return live[0] if len(live) == 1 else None

    def _touch(self, name: str, version: str, now: float) -> Identity:
        self._live.setdefault(name, {})[version] = now
        return name, version

    def attributes(self, identity: Identity) -> IdentityAttributes:
        """The metric attributes of an identity (one shared tuple per identity)."""
        attrs = self._attributes.get(identity)
        if attrs is None:
            attrs = self._attributes[identity] = ((NAME, identity[0]), (VERSION, identity[1]))
        return attrs

    def expire(self, now: float) -> list[IdentityAttributes]:
        """Forget identities idle for longer than the expiry; returns their attributes."""
        gone: list[IdentityAttributes] = []
        for name in list(self._live):
            versions = self._live[name]
            for version, seen in list(versions.items()):
                if now - seen > self._expiry_s:
                    del versions[version]
                    gone.append(self._attributes.pop((name, version), ((NAME, name), (VERSION, version))))
            if not versions:
                del self._live[name]
        return gone

    def live(self) -> dict[str, tuple[str, ...]]:
        """Live names and their versions (for the status document and tests)."""
        return {name: tuple(versions) for name, versions in self._live.items()}
