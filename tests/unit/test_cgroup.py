"""Container CPU throttling and memory against its limit (issue "operations and business", item
1): read from a cgroup v2 directory. This machine's cgroup is v1, so the figures are checked
against a file fixture laid out as the kernel writes cgroup v2 files."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.resources import Resource

from modeltap.export.otlp_metrics import build_metrics_data
from modeltap.export.status_json import status_document
from modeltap.operations.cgroup import ContainerSampler, read_container
from modeltap.snapshot import Snapshot

CPU_STAT = """usage_usec 8123456
user_usec 6000000
system_usec 2123456
core_sched.force_idle_usec 0
nr_periods 1200
nr_throttled 37
throttled_usec 2500000
nr_bursts 0
burst_usec 0
"""


def cgroup(tmp_path: Path, memory_max: str = "536870912\n") -> Path:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cpu.stat").write_text(CPU_STAT)
    (tmp_path / "memory.current").write_text("483183820\n")
    (tmp_path / "memory.max").write_text(memory_max)
    return tmp_path


def test_throttling_and_memory_against_the_limit(tmp_path: Path) -> None:
    container = read_container(cgroup(tmp_path))
    assert container is not None
    assert (container.cpu_periods, container.cpu_throttled_periods) == (1200, 37)
    assert container.cpu_throttled_s == 2.5
    assert (container.memory_bytes, container.memory_limit_bytes) == (483183820, 536870912)
    assert container.memory_limit_use == pytest.approx(0.9, abs=1e-3)
    snapshot = Snapshot(taken_unix_ns=2, start_unix_ns=1, instance_id="i", pid=1, container=container)
    document = status_document(snapshot, None)
    assert document["container"]["cpu_throttled_s"] == 2.5
    assert document["container"]["memory_limit_use"] == pytest.approx(0.9, abs=1e-3)


def test_no_limit_is_max_and_no_cgroup_v2_is_nothing(tmp_path: Path) -> None:
    (tmp_path / "unlimited").mkdir()
    container = read_container(cgroup(tmp_path / "unlimited", "max\n"))
    assert container is not None
    assert container.memory_limit_bytes is None
    assert container.memory_limit_use is None
    empty = tmp_path / "v1"
    empty.mkdir()
    assert read_container(empty) is None
    assert ContainerSampler(empty).sample() is None


def test_exported_as_modeltap_container_metrics(tmp_path: Path) -> None:
    container = read_container(cgroup(tmp_path))
    snapshot = Snapshot(taken_unix_ns=2, start_unix_ns=1, instance_id="i", pid=1, container=container)
    [scope] = build_metrics_data(snapshot, Resource.get_empty()).resource_metrics[0].scope_metrics
    values = {}
    for metric in scope.metrics:
        if metric.name.startswith("modeltap.container."):
            [point] = metric.data.data_points
            assert isinstance(point, NumberDataPoint)
            values[metric.name] = point.value
    assert values == {
        "modeltap.container.cpu.throttled_time": 2.5,
        "modeltap.container.memory.usage": 483183820.0,
        "modeltap.container.memory.limit": 536870912.0,
    }
