"""The monitor as a neighbour: CPU lists as taskset writes them, a lower priority and pin applied to
its own process, and a memory budget it keeps by shedding payloads (timings and counts stay)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeltap.monitor import resources
from modeltap.monitor.resources import CHECK_INTERVAL_S, NICE_INCREMENT, MemoryGuard, parse_cpu_list
from modeltap.records import ExchangeRecord, RawRecord, TraceIds

SRC = str(Path(resources.__file__).resolve().parents[2])


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0", {0}),
        ("1,3", {1, 3}),
        ("0-2,5", {0, 1, 2, 5}),
        ("2-2", {2}),
        (" 0 - 1 , 3 ", {0, 1, 3}),
        ("1,,2,", {1, 2}),
        ("3,1-3", {1, 2, 3}),
        ("0-1023", set(range(1024))),
    ],
)
def test_parse_cpu_list_reads_taskset_lists(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize(
    "text",
    ["", " ", ",", "a", "1;2", "1.5", "-1", "-", "1-", "-3", "3-1", "1-2-3", "0x1", "1 2", "0-99999999999"],
)
def test_parse_cpu_list_refuses_what_is_not_a_cpu_list(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_cpu_list(text)


LOWER = """
import json, logging, os, sys
sys.path.insert(0, sys.argv[1])
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
from modeltap.monitor.resources import lower_priority
before = os.nice(0)
lower_priority({"MODELTAP_MONITOR_CPUS": sys.argv[2]})
print(json.dumps({"niced": os.nice(0) - before, "cpus": sorted(os.sched_getaffinity(0))}))
"""


def lower_in_child(cpus: str) -> tuple[dict[str, object], str]:
    out = subprocess.run(
        [sys.executable, "-c", LOWER, SRC, cpus], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    *log, last = out.strip().splitlines()
    return json.loads(last), "\n".join(log)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_lower_priority_nices_and_pins_its_own_process() -> None:
    first = min(os.sched_getaffinity(0))
    report, _ = lower_in_child(str(first))
    assert report == {"niced": NICE_INCREMENT, "cpus": [first]}


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_lower_priority_with_a_bad_cpu_list_warns_and_keeps_running() -> None:
    report, log = lower_in_child("0-x")
    assert report == {"niced": NICE_INCREMENT, "cpus": sorted(os.sched_getaffinity(0))}
    assert "WARNING" in log
    assert "MODELTAP_MONITOR_CPUS" in log


# ---- the memory budget ----------------------------------------------------------------------------


@pytest.fixture
def rss(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The resident size the guard sees: set `rss[0]`."""
    value = [0]
    monkeypatch.setattr(resources, "rss_bytes", lambda: value[0])
    return value


def test_rss_bytes_reads_this_process() -> None:
    assert 1024 * 1024 < resources.rss_bytes() < 64 * 1024**3


def test_memory_guard_sheds_above_the_budget_and_recovers_under_90_percent(rss: list[int]) -> None:
    guard = MemoryGuard(budget_bytes=1000)
    now = 100.0
    for value, shedding in [
        (1000, False),  # at the budget: not over it
        (1001, True),
        (950, True),  # back under the budget but not under 90 %: still shedding
        (900, True),
        (899, False),
        (950, False),  # between 90 % and the budget, not shedding: stays so
        (5000, True),
    ]:
        rss[0] = value
        guard.check(now)
        assert guard.shedding is shedding, value
        now += CHECK_INTERVAL_S


def test_memory_guard_checks_at_most_once_an_interval(rss: list[int]) -> None:
    guard = MemoryGuard(budget_bytes=1000)
    rss[0] = 2000
    guard.check(10.0)
    assert guard.shedding
    rss[0] = 0
    guard.check(10.0 + CHECK_INTERVAL_S / 2)
    assert guard.shedding  # not looked at yet
    guard.check(10.0 + CHECK_INTERVAL_S)
    assert not guard.shedding


def record(payload_weight: int, trace: TraceIds | None = None) -> RawRecord:
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-type", b"x")]}
    return (scope, "", 123, 10.0, 10.1, 10.2, 10.3, 200, [(b"content-type", b"application/json")],
            [b"req", b"uest"], 7, [b"resp"], 4, None, False, trace, 2, payload_weight, 10.15)  # fmt: skip


def test_shed_drops_payloads_and_counts_them_keeping_timings_and_counts() -> None:
    guard = MemoryGuard(budget_bytes=1000)
    trace = TraceIds(1, 2, 0, False, True, "", False)
    with_payload, timing_only = record(4, trace), record(0)
    kept = guard.shed([with_payload, timing_only, record(2)])
    assert guard.shed_records == 2
    assert len(kept) == 3
    assert kept[1] is timing_only  # nothing to shed
    shed = ExchangeRecord._make(kept[0])
    original = ExchangeRecord._make(with_payload)
    assert len(kept[0]) == len(ExchangeRecord._fields)
    # The payload is gone, as for an exchange whose payload the tap sampled out.
    assert (shed.request_parts, shed.response_parts, shed.payload_weight) == ([], [], 0)
    assert shed.request_size == -1
    # Everything else stays.
    for name in ExchangeRecord._fields:
        if name not in ("request_parts", "response_parts", "payload_weight", "request_size"):
            assert getattr(shed, name) == getattr(original, name), name
    assert (shed.duration_s, shed.ttfb_s, shed.outcome) == (original.duration_s, original.ttfb_s, "complete")
    guard.shed([record(1)])
    assert guard.shed_records == 3
