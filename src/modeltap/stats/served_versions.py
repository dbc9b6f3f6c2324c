"""The model versions the answers carry, and whether they are the one expected.

The served version is what the model's own 2xx answers say (a version header or field), never
the configured `model_version`, which only names where statistics are filed. Each version of a
vouched model name is remembered with when it was first and last answered (bounded: at most
`max_versions` per name, the rest counted), so a deployment that swaps the version is seen as
it happens, and a mismatch with `expected_model_version` is a WARNING while it lasts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Served:
    first_s: float
    last_s: float
    answers: int = 0


class ServedVersions:
    """Example::

    served = ServedVersions(max_versions=8)
    served.observe("churn", "2", now=10.0)
    served.current("churn", now=12.0, window_s=300.0)   # ('2',)
    """

    def __init__(self, max_versions: int) -> None:
        self._max_versions = max_versions
        self._names: dict[str, dict[str, Served]] = {}
        self.over_cap = 0

    def observe(self, name: str, version: str, now: float, count: int = 1) -> bool:
        """`count` answers of `name` carrying `version`; True when the version is new."""
        versions = self._names.setdefault(name, {})
        served = versions.get(version)
        if served is not None:
            served.last_s = now
            served.answers += count
            return False
        if len(versions) >= self._max_versions:
            # Keep the most recent: forget the version answered longest ago.
            oldest = min(versions, key=lambda v: versions[v].last_s)
            del versions[oldest]
            self.over_cap += 1
        versions[version] = Served(now, now, count)
        return True

    def current(self, name: str, now: float, window_s: float) -> tuple[str, ...]:
        """The versions of `name` answered within the last `window_s`, most recent first."""
        versions = self._names.get(name, {})
        live = [(s.last_s, v) for v, s in versions.items() if now - s.last_s <= window_s]
        return tuple(v for _, v in sorted(live, reverse=True))

    def forget(self, now: float, idle_s: float) -> int:
        """Forget the versions not answered for longer than `idle_s`, and names left with none
        (the model names are the client's claims the model answered: kept only while answered);
        returns how many versions were forgotten."""
        forgotten = 0
        for name in list(self._names):
            versions = self._names[name]
            for version in [v for v, s in versions.items() if now - s.last_s > idle_s]:
                del versions[version]
                forgotten += 1
            if not versions:
                del self._names[name]
        return forgotten

    def seen(self) -> list[tuple[str, str, Served]]:
        """Every remembered (name, version) with its first and last answer."""
        return [
            (name, version, s) for name, versions in self._names.items() for version, s in versions.items()
        ]
