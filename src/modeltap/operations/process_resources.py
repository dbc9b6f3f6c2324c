"""What a process costs: CPU time and utilisation, resident memory, threads, open file
descriptors, Python's garbage collector (collections per generation, time spent in them) and,
in a serving process, the lag of its event loop (`loop_lag`).

Read from Linux's /proc for the process itself (`getrusage` and the thread count elsewhere), and
from `gc` (a callback times each collection: two clock reads per collection). Each serving process
samples itself and sends the numbers to its monitor with its counts; the monitor samples itself.
A sample is at most a few small file reads, taken at most once per `MIN_INTERVAL_S`.
"""

from __future__ import annotations

import gc
import os
import resource
import threading
import time
from typing import Any

from modeltap.operations.loop_lag import LoopLagProbe
from modeltap.operations.proc_stat import stat_fields
from modeltap.snapshot import ProcessResources

MIN_INTERVAL_S = 1.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# How a serving process captures (what `/status.resources[].capture` may say).
CAPTURE_FORMS = frozenset({"compiled", "python"})


class _GcClock:
    """Total seconds spent in garbage collections since it was installed (once per process)."""

    def __init__(self) -> None:
        self.pause_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.pause_s += time.perf_counter() - self._started
            self._started = 0.0


_GC_CLOCK: _GcClock | None = None
_GC_LOCK = threading.Lock()


def gc_clock() -> _GcClock:
    global _GC_CLOCK
    with _GC_LOCK:
        if _GC_CLOCK is None:
            _GC_CLOCK = _GcClock()
            gc.callbacks.append(_GC_CLOCK)
        return _GC_CLOCK


def _proc_stat() -> tuple[float, float, int] | None:
    """(user s, system s, threads) of this process from /proc/self/stat, or None off Linux."""
    fields = stat_fields()
    if fields is None:
        return None
    try:
        return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS, int(fields[17])
    except (ValueError, IndexError):
        return None


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak, off Linux


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class ResourceSampler:
    """Example::

    sampler = ResourceSampler("serving", LoopLagProbe())
    sampler.sample().memory_rss_bytes
    """

    def __init__(self, role: str, loop_lag: LoopLagProbe | None = None) -> None:
        self.role = role
        self.loop_lag = loop_lag  # the serving event loop's probe; None: no loop (the monitor)
        self._gc = gc_clock()
        self._last: ProcessResources | None = None
        self._last_at = 0.0
        self._previous_cpu: tuple[float, float] | None = None  # (cpu seconds, monotonic)

    def sample(self) -> ProcessResources:
        """The current figures (the last sample when asked again within MIN_INTERVAL_S)."""
        now = time.monotonic()
        if self._last is not None and now - self._last_at < MIN_INTERVAL_S:
            return self._last
        stat = _proc_stat()
        if stat is None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            stat = usage.ru_utime, usage.ru_stime, threading.active_count()
        user, system, threads = stat
        utilization = None
        if self._previous_cpu is not None and now > self._previous_cpu[1]:
            utilization = max(0.0, (user + system - self._previous_cpu[0]) / (now - self._previous_cpu[1]))
        self._previous_cpu = (user + system, now)
        stats = gc.get_stats()
        lag = self.loop_lag.lag() if self.loop_lag is not None else None
        self._last = ProcessResources(
            pid=os.getpid(),
            role=self.role,
            cpu_user_s=user,
            cpu_system_s=system,
            cpu_utilization=utilization,
            memory_rss_bytes=_rss_bytes(),
            threads=threads,
            open_fds=_open_fds(),
            gc_collections=tuple(int(s.get("collections", 0)) for s in stats[:3]),
            gc_pause_s=self._gc.pause_s,
            loop_lag_max_s=lag.max_s if lag is not None else None,
            loop_lag_p99_s=lag.p99_s if lag is not None else None,
        )
        self._last_at = now
        return self._last


def as_counts(sample: ProcessResources) -> dict[str, Any]:
    """Flat values for a serving process's counts (never nested: numbers in nested documents are
    rebased as counters when a monitor restarts)."""
    return {
        "res_cpu_user_s": sample.cpu_user_s,
        "res_cpu_system_s": sample.cpu_system_s,
        "res_cpu_utilization": sample.cpu_utilization,
        "res_memory_rss_bytes": sample.memory_rss_bytes,
        "res_threads": sample.threads,
        "res_open_fds": sample.open_fds,
        "res_gc_collections": list(sample.gc_collections),
        "res_gc_pause_s": sample.gc_pause_s,
        "res_loop_lag_max_s": sample.loop_lag_max_s,
        "res_loop_lag_p99_s": sample.loop_lag_p99_s,
        "res_capture": sample.capture,
    }


def from_counts(pid: int, counts: dict[str, Any]) -> ProcessResources | None:
    """A serving process's sample back from its counts (None if it sent none)."""
    if not isinstance(counts.get("res_memory_rss_bytes"), int):
        return None
    collections = counts.get("res_gc_collections") or []
    utilization = counts.get("res_cpu_utilization")
    fds = counts.get("res_open_fds")
    capture = counts.get("res_capture")
    return ProcessResources(
        pid=pid,
        role="serving",
        cpu_user_s=float(counts.get("res_cpu_user_s") or 0.0),
        cpu_system_s=float(counts.get("res_cpu_system_s") or 0.0),
        cpu_utilization=float(utilization) if isinstance(utilization, (int, float)) else None,
        memory_rss_bytes=int(counts["res_memory_rss_bytes"]),
        threads=int(counts.get("res_threads") or 0),
        open_fds=int(fds) if isinstance(fds, int) else None,
        gc_collections=tuple(int(c) for c in collections[:3]) if isinstance(collections, list) else (),
        gc_pause_s=float(counts.get("res_gc_pause_s") or 0.0),
        loop_lag_max_s=_seconds(counts.get("res_loop_lag_max_s")),
        loop_lag_p99_s=_seconds(counts.get("res_loop_lag_p99_s")),
        capture=capture if isinstance(capture, str) and capture in CAPTURE_FORMS else None,
    )


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
