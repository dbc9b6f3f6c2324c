"""The model names that fed labels or outcomes lately: the only one, when there is one, is where
feedback sent without a model name goes.

The names come from the model's answers; a server that answers any claimed name would otherwise
make the set grow for as long as it runs, and one name too many refuses unnamed feedback. So a
name is remembered while what it fed could still be joined (`ttl_s`), and forgotten after.
"""

from __future__ import annotations

# Beyond this many names, the forgotten ones are dropped as names are added (not only when
# unnamed feedback asks), so the set stays small whatever asks it.
PRUNE_AT = 64


class RecentNames:
    """Example::

    names = RecentNames(ttl_s=86_400.0)
    names.add("churn", now=10.0)
    names.only(now=20.0)   # "churn"
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._seen: dict[str, float] = {}

    def add(self, name: str, now: float) -> None:
        self._seen[name] = now
        if len(self._seen) > PRUNE_AT:
            self._forget(now)

    def only(self, now: float) -> str | None:
        """The one name seen within `ttl_s`, or None (none, or several)."""
        self._forget(now)
        return next(iter(self._seen)) if len(self._seen) == 1 else None

    def __len__(self) -> int:
        return len(self._seen)

    def _forget(self, now: float) -> None:
        for name in [name for name, seen in self._seen.items() if now - seen >= self.ttl_s]:
            del self._seen[name]
