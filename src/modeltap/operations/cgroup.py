"""The container's own limits, from cgroup v2: CPU throttling and memory use against the limit.

A container whose CPU quota is exhausted is throttled (its threads wait for the next period):
latency rises while the host looks idle. A container near its memory limit is about to be
OOM-killed. Both are read from the process's cgroup v2 directory (`/sys/fs/cgroup` in a
container): `cpu.stat` (`nr_periods`, `nr_throttled`, `throttled_usec`), `memory.current` and
`memory.max`. Without cgroup v2 (v1 hosts, macOS) there is nothing to read and nothing reported.
"""

from __future__ import annotations

import time
from pathlib import Path

from modeltap.snapshot import ContainerResources

ROOT = Path("/sys/fs/cgroup")
MIN_INTERVAL_S = 1.0


def read_container(root: Path = ROOT) -> ContainerResources | None:
    """The figures now, or None where the process is not in a cgroup v2 hierarchy."""
    if not (root / "cgroup.controllers").exists():
        return None
    stat: dict[str, int] = {}
    try:
        for line in (root / "cpu.stat").read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                stat[key] = int(value)
    except OSError:
        pass
    return ContainerResources(
        cpu_periods=stat.get("nr_periods"),
        cpu_throttled_periods=stat.get("nr_throttled"),
        cpu_throttled_s=stat["throttled_usec"] / 1e6 if "throttled_usec" in stat else None,
        memory_bytes=_number(root / "memory.current"),
        memory_limit_bytes=_number(root / "memory.max"),  # None: "max", no limit
    )


def _number(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class ContainerSampler:
    """`read_container`, at most once per MIN_INTERVAL_S."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self._last: ContainerResources | None = None
        self._at = -MIN_INTERVAL_S

    def sample(self) -> ContainerResources | None:
        now = time.monotonic()
        if now - self._at >= MIN_INTERVAL_S:
            self._last, self._at = read_container(self.root), now
        return self._last
