"""What the monitor does to stay a good neighbour: a lower CPU priority, an optional CPU pin,
and a memory budget it sheds work to keep (it is never killed for it: no RLIMIT_AS, which breaks
numpy and gRPC)."""

from __future__ import annotations

import logging
import os

from modeltap.records import RawRecord

_log = logging.getLogger("modeltap.monitor")
NICE_INCREMENT = 10
CHECK_INTERVAL_S = 1.0
# Above any CPU number Linux supports (NR_CPUS <= 8192): a typo such as `0-4000000000` is refused
# rather than expanded into billions of numbers in the monitor's own memory.
MAX_CPU = 65535


def parse_cpu_list(text: str) -> set[int]:
    """`0`, `1,3`, `0-2,5` (as in `taskset -c`)."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition("-")
        first, last = int(low), int(high) if sep else int(low)
        if first < 0 or last < first or last > MAX_CPU:
            raise ValueError(f"not a CPU range: {part!r}")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("an empty CPU list")
    return cpus


def lower_priority(environ: dict[str, str] | None = None) -> None:
    """Nice the process, and pin it where `MODELTAP_MONITOR_CPUS` says."""
    env = os.environ if environ is None else environ
    try:
        os.nice(NICE_INCREMENT)
    except OSError as exc:
        _log.info("modeltap monitor: cannot lower its priority: %s", exc)
    wanted = env.get("MODELTAP_MONITOR_CPUS", "").strip()
    if not wanted:
        return
    try:
        os.sched_setaffinity(0, parse_cpu_list(wanted))
    except (ValueError, OSError) as exc:
        _log.warning("modeltap monitor: MODELTAP_MONITOR_CPUS=%r not applied: %s", wanted, exc)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryGuard:
    """Over the budget, the monitor sheds: payloads are no longer decoded (their exchanges are
    still timed and counted; the skipped payloads are counted as `monitor_memory` drops) and the
    serving processes are asked to sample payloads 4x more, until memory is back under 90 %."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.shedding = False
        self.shed_records = 0
        self._next_check = 0.0

    def check(self, now: float) -> None:
        if now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL_S
        rss = rss_bytes()
        if not self.shedding and rss > self.budget_bytes:
            self.shedding = True
            _log.warning(
                "modeltap monitor: %d MiB resident, over its %d MiB budget: shedding payloads",
                rss >> 20,
                self.budget_bytes >> 20,
            )
        elif self.shedding and rss < self.budget_bytes * 0.9:
            self.shedding = False
            _log.info("modeltap monitor: back under its memory budget")

    def shed(self, records: list[RawRecord]) -> list[RawRecord]:
        """Records with their payloads dropped (timing and counts kept)."""
        kept = []
        for record in records:
            if record[17]:  # payload_weight
                self.shed_records += 1
                record = (*record[:9], [], -1, [], record[12], *record[13:17], 0, record[18])
            kept.append(record)
        return kept
