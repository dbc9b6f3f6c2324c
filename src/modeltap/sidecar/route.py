"""Where the proxy sends new requests: the upstream, or after a rollback the fallback upstream.

The rollback switch is opt-in (`--fallback-upstream`). The operator (admin `POST /rollback`) or,
with `--auto-rollback emergency`, an EMERGENCY alert turns it; the monitor asks each data plane to
follow through its control messages, and each data plane owns its switch and reports its state
back, so a monitor that restarts neither forgets nor undoes a rollback.

A request takes the pool of the route current when it starts and gives its connection back to
that pool, so requests in flight finish where they started; each pool keeps its own Host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from modeltap.sidecar.upstream import UpstreamPool

_log = logging.getLogger("modeltap.sidecar")
PRIMARY, FALLBACK = "primary", "fallback"


@dataclass(frozen=True)
class RouteState:
    target: str = PRIMARY  # primary | fallback
    cause: str = ""
    by: str = ""  # operator | auto (an EMERGENCY alert)
    since_unix_s: float | None = None

    def report(self) -> dict[str, object]:
        """Flat values for the counts a data plane sends its monitor (no nested documents)."""
        return {
            "route": self.target,
            "route_cause": self.cause,
            "route_by": self.by,
            "route_since_unix_s": self.since_unix_s,
        }


class UpstreamRoute:
    """The pool new requests take. Only the event loop's thread calls `switch`."""

    def __init__(
        self,
        primary: UpstreamPool,
        fallback: UpstreamPool | None = None,
        on_change: Callable[[RouteState], None] | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.on_change = on_change
        self.state = RouteState()
        self.pool = primary
        self.default_host = _host(primary)

    @property
    def available(self) -> bool:
        return self.fallback is not None

    def switch(self, target: str, cause: str, by: str) -> bool:
        """Send new requests to `target`; False when there is no fallback or nothing changes."""
        fallback = self.fallback
        if fallback is None or target not in (PRIMARY, FALLBACK) or target == self.state.target:
            return False
        pool = fallback if target == FALLBACK else self.primary
        self.state = RouteState(target, cause[:500], by, time.time())
        self.pool, self.default_host = pool, _host(pool)
        _log.warning(
            "modeltap sidecar: %s: new requests go to %s:%d (%s, by %s)",
            "rolled back" if target == FALLBACK else "rollback cancelled",
            pool.host,
            pool.port,
            cause or "no cause given",
            by,
        )
        if self.on_change is not None:
            self.on_change(self.state)
        return True

    def close(self) -> None:
        self.primary.close()
        if self.fallback is not None:
            self.fallback.close()


def _host(pool: UpstreamPool) -> bytes:
    return f"{pool.host}:{pool.port}".encode()
