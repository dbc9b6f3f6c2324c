"""GPU memory and utilisation through NVML (issue "operations and business", item 1).

This host has no GPU and no nvidia-ml-py, so these tests use a fake NVML: a small object offering
the calls modeltap makes (`nvmlInit`, `nvmlDeviceGetCount`, `nvmlDeviceGetHandleByIndex`,
`nvmlDeviceGetMemoryInfo`, `nvmlDeviceGetUtilizationRates`, `nvmlDeviceGetUUID`,
`nvmlDeviceGetName`, `nvmlShutdown`) with the return shapes of the real library, raising an
NVMLError-like exception where a test asks it to. `scripts/gpu_check.py` compares modeltap's
figures with nvidia-smi's on a machine with a real GPU.

Covered: the figures reach `/status.gpus` and the OTLP export (decoded from a real OTLP/HTTP
receiver) under the hardware semantic-convention names, units and attributes; memory use judged
against 0.90 / 0.97 (0.89 OK, 0.91 WARNING, 0.98 CRITICAL) and raising an alert; NVML errors
counted without breaking the snapshot; nothing reported and nothing failing without the library.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from modeltap import ModelTapMiddleware
from modeltap.alerts.alertmanager import alert_labels
from modeltap.alerts.observations import observations
from modeltap.alerts.runbooks import DEFAULT_RUNBOOKS
from modeltap.alerts.state import AlertKey
from modeltap.config import ModelTapConfig
from modeltap.errors import ConfigError
from modeltap.export.status_json import status_document as status_document_of
from modeltap.operations import gpu as gpu_module
from modeltap.operations.gpu import GpuSampler
from modeltap.snapshot import GpuDevice, ServingCounts, Snapshot
from modeltap.stats.scores import Level
from modeltap.worker.analyzer import Analyzer
from tests.support.asgi_driver import http_request_messages, make_http_scope, run_asgi
from tests.support.inline_tap import empty_json_app, inline_config
from tests.support.otlp_receiver import OtlpHttpReceiver
from tests.support.tapping import status_document

GIB = 1024**3
UUIDS = ("GPU-6f3c2a1e-0d4b-4c5e-9a7f-1b2c3d4e5f60", "GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9")


class FakeNVMLError(Exception):
    """As `pynvml.NVMLError`: an exception carrying NVML's return code."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class _Memory:  # nvmlMemory_t
    total: int
    free: int
    used: int


@dataclass
class _Utilization:  # nvmlUtilization_t: percentages
    gpu: int
    memory: int


@dataclass
class FakeNVML:
    """Two 80 GiB devices; `used` and `busy` set per device; `failing` names calls that raise."""

    used: list[int] = field(default_factory=lambda: [10 * GIB, 40 * GIB])
    busy: list[int] = field(default_factory=lambda: [35, 0])
    total: int = 80 * GIB
    failing: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    NVMLError: type[Exception] = FakeNVMLError

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.failing:
            raise FakeNVMLError(999)

    def nvmlInit(self) -> None:
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.used)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._call("nvmlDeviceGetHandleByIndex")
        return 1000 + index  # a c_void_p in the real library: opaque to the caller

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        self._call("nvmlDeviceGetUUID")
        return UUIDS[handle - 1000]

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        self._call("nvmlDeviceGetName")
        return b"NVIDIA H100 80GB HBM3"  # bytes, as nvidia-ml-py before 11.5 returns it

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        self._call("nvmlDeviceGetMemoryInfo")
        used = self.used[handle - 1000]
        return _Memory(total=self.total, free=self.total - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> _Utilization:
        self._call("nvmlDeviceGetUtilizationRates")
        return _Utilization(gpu=self.busy[handle - 1000], memory=0)


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `sample()` reads afresh (the once-a-second reuse is tested on its own)."""
    monkeypatch.setattr(gpu_module, "MIN_INTERVAL_S", 0.0)


def _analyzer(nvml: FakeNVML, **settings: Any) -> Analyzer:
    analyzer = Analyzer(ModelTapConfig(monitor="inline", model_name="churn", **settings), None, mode="inline")
    analyzer.gpu = GpuSampler(nvml)
    return analyzer


@pytest.mark.usefixtures("no_wait")
def test_each_device_is_read_once_initialised() -> None:
    nvml = FakeNVML()
    sampler = GpuSampler(nvml)
    first, second = sampler.sample()
    assert (first.index, first.uuid, first.name) == (0, UUIDS[0], "NVIDIA H100 80GB HBM3")
    assert (first.memory_used_bytes, first.memory_total_bytes) == (10 * GIB, 80 * GIB)
    assert first.memory_use == pytest.approx(0.125)
    assert first.utilization == pytest.approx(0.35)
    assert (second.hw_id, second.utilization) == (UUIDS[1], 0.0)
    sampler.sample()
    assert nvml.calls.count("nvmlInit") == 1
    assert nvml.calls.count("nvmlDeviceGetUUID") == 2  # names and handles are read once
    assert nvml.calls.count("nvmlDeviceGetMemoryInfo") == 4
    sampler.close()
    assert nvml.calls[-1] == "nvmlShutdown"
    assert sampler.sample() == ()
    assert sampler.errors == 0


class FakeNVMLWithMemoryV2(FakeNVML):
    """nvidia-ml-py >= 11.515: memory info v2, `used` without the driver's reserved memory."""

    nvmlMemory_v2 = 0x02000028
    v2_works: bool = True

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> _Memory:
        memory = super().nvmlDeviceGetMemoryInfo(handle)
        if version is None:
            return memory
        self.calls.append("v2")
        if not self.v2_works:
            raise FakeNVMLError(13)  # NVML_ERROR_FUNCTION_NOT_FOUND: an older driver
        return _Memory(total=memory.total, free=memory.free, used=memory.used - 512 * 1024 * 1024)


@pytest.mark.usefixtures("no_wait")
def test_memory_info_v2_where_the_library_and_driver_offer_it() -> None:
    nvml = FakeNVMLWithMemoryV2(used=[10 * GIB])
    assert GpuSampler(nvml).sample()[0].memory_used_bytes == 10 * GIB - 512 * 1024 * 1024
    older = FakeNVMLWithMemoryV2(used=[10 * GIB])
    older.v2_works = False
    sampler = GpuSampler(older)
    assert sampler.sample()[0].memory_used_bytes == 10 * GIB  # v1, and v1 from then on
    sampler.sample()
    assert older.calls.count("v2") == 1
    assert sampler.errors == 0


def test_at_most_one_read_a_second() -> None:
    nvml = FakeNVML()
    sampler = GpuSampler(nvml)
    first = sampler.sample()
    nvml.used[0] = 70 * GIB
    assert sampler.sample() is first
    assert nvml.calls.count("nvmlDeviceGetMemoryInfo") == 2


@pytest.mark.usefixtures("no_wait")
@pytest.mark.parametrize(("use", "level"), [(0.89, "OK"), (0.91, "WARNING"), (0.98, "CRITICAL")])
def test_memory_use_levels(use: float, level: str) -> None:
    nvml = FakeNVML(used=[round(use * 80 * GIB)], busy=[99])
    analyzer = _analyzer(nvml)
    snapshot = analyzer.publish(ServingCounts())
    [device] = snapshot.gpus
    assert device.memory_use == pytest.approx(use)
    assert Level(device.level).name == level
    [row] = status_document_of(snapshot, "churn")["gpus"]
    assert row["level"] == level
    # The level is an alert subject of its own, filed under the model with no version.
    pending = [a for a in analyzer.alert_book.alerts() if a.key.subject.startswith("gpu_memory:")]
    if level == "OK":
        assert pending == []
    else:
        [alert] = pending
        assert alert.key == AlertKey("churn", "", f"gpu_memory:{UUIDS[0]}")
        assert (alert.state, alert.level) == ("pending", Level[level])


def test_thresholds_are_settings() -> None:
    config = ModelTapConfig.from_env(
        {"MODELTAP_GPU_MEMORY_WARNING": "0.8", "MODELTAP_GPU_MEMORY_CRITICAL": "0.9"}
    )
    assert (config.gpu_memory_warning, config.gpu_memory_critical) == (0.8, 0.9)
    with pytest.raises(ConfigError, match="gpu_memory_warning"):
        ModelTapConfig(gpu_memory_warning=0.99, gpu_memory_critical=0.9)
    with pytest.raises(ConfigError, match="gpu_memory_warning"):
        ModelTapConfig(gpu_memory_critical=1.5)
    nvml = FakeNVML(used=[round(0.85 * 80 * GIB)])
    analyzer = _analyzer(nvml, gpu_memory_warning=0.8, gpu_memory_critical=0.9)
    assert [d.level for d in analyzer._gpus()] == [Level.WARNING]


def test_the_observation_and_its_alert_names_the_device() -> None:
    device = GpuDevice(
        0, UUIDS[0], "NVIDIA H100 80GB HBM3", 79 * GIB, 80 * GIB, 0.5, level=int(Level.CRITICAL)
    )
    snapshot = Snapshot(taken_unix_ns=2, start_unix_ns=1, instance_id="i", pid=1, gpus=(device,))
    [observed] = observations(snapshot, 0.1, 0.2, default_model="churn")
    assert observed.key == AlertKey("churn", "", f"gpu_memory:{UUIDS[0]}")
    assert observed.level == Level.CRITICAL
    assert observed.score == pytest.approx(79 / 80)
    labels = alert_labels(observed.key, "critical", "sha256:ab")
    assert labels == {
        "alertname": "ModelTapGpuMemoryHigh",
        "severity": "critical",
        "modeltap_model_name": "churn",
        "modeltap_model_version": "",
        "hw_id": UUIDS[0],
    }
    assert DEFAULT_RUNBOOKS.url(observed.key.subject).endswith("#modeltapgpumemoryhigh")


@pytest.mark.usefixtures("no_wait")
def test_nvml_errors_are_counted_and_cost_only_their_figure() -> None:
    nvml = FakeNVML(failing={"nvmlDeviceGetUtilizationRates"})
    analyzer = _analyzer(nvml)
    counts = ServingCounts()
    snapshot = analyzer.publish(counts)
    assert [d.utilization for d in snapshot.gpus] == [None, None]  # memory still read
    assert dict(snapshot.monitoring.internal_errors)["nvml"] == 2
    nvml.failing = {"nvmlDeviceGetMemoryInfo"}
    snapshot = analyzer.publish(counts)
    assert snapshot.gpus == ()  # no memory figure: the device is left out of this sample only
    assert dict(snapshot.monitoring.internal_errors)["nvml"] == 4
    nvml.failing = set()
    assert len(analyzer.publish(counts).gpus) == 2


def test_an_nvml_that_does_not_start_is_counted_once_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = FakeNVML(failing={"nvmlInit"})
    sampler = GpuSampler(nvml)
    with caplog.at_level(logging.DEBUG, logger="modeltap"):
        assert sampler.sample() == ()
        read_again(sampler)
        assert sampler.sample() == ()
    assert nvml.calls == ["nvmlInit"]  # initialised once: never retried
    assert sampler.errors == 1
    assert len([r for r in caplog.records if "NVML" in r.getMessage()]) == 1
    assert all(r.levelno <= logging.INFO for r in caplog.records)


def read_again(sampler: GpuSampler) -> None:
    """Let the next sample read again (past the once-a-second reuse)."""
    sampler._at = time.monotonic() - 10.0


def test_without_the_library_nothing_is_reported_and_nothing_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Absent here anyway; None in sys.modules makes its import fail wherever it is installed.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    sampler = GpuSampler()
    with caplog.at_level(logging.DEBUG, logger="modeltap"):
        assert sampler.sample() == ()
        read_again(sampler)
        assert sampler.sample() == ()
    assert sampler.errors == 0
    [record] = [r for r in caplog.records if "nvidia-ml-py" in r.getMessage()]
    assert record.levelno == logging.DEBUG
    analyzer = Analyzer(ModelTapConfig(monitor="inline"), None, mode="inline")
    analyzer.gpu = sampler
    snapshot = analyzer.publish(ServingCounts())
    assert snapshot.gpus == ()
    assert "nvml" not in dict(snapshot.monitoring.internal_errors)
    assert status_document_of(snapshot, "churn")["gpus"] == []


@pytest.fixture
def gpu_middleware(http_receiver: OtlpHttpReceiver) -> Iterator[ModelTapMiddleware]:
    config = inline_config(http_receiver.endpoint)
    middleware = ModelTapMiddleware(empty_json_app, config=config)
    middleware.tap.analyzer.gpu = GpuSampler(FakeNVML(used=[round(0.95 * 80 * GIB), 8 * GIB], busy=[87, 3]))
    try:
        yield middleware
    finally:
        middleware.tap.shutdown()


@pytest.mark.timeout(60)
def test_figures_reach_status_and_otlp_under_the_semantic_convention_names(
    gpu_middleware: ModelTapMiddleware, http_receiver: OtlpHttpReceiver
) -> None:
    run_asgi(gpu_middleware, make_http_scope("POST", "/predict"), http_request_messages(b"{}"))
    first, second = status_document(gpu_middleware)["gpus"]
    assert first == {
        "index": 0,
        "hw_id": UUIDS[0],
        "name": "NVIDIA H100 80GB HBM3",
        "memory_used_bytes": round(0.95 * 80 * GIB),
        "memory_total_bytes": 80 * GIB,
        "memory_use": pytest.approx(0.95),
        "utilization": pytest.approx(0.87),
        "level": "WARNING",
    }
    assert (second["hw_id"], second["level"]) == (UUIDS[1], "OK")

    names = ("hw.gpu.memory.usage", "hw.gpu.memory.limit", "hw.gpu.memory.utilization", "hw.gpu.utilization")
    http_receiver.wait_for(lambda r: all(r.latest_points(n) for n in names), timeout=5.0)
    points = {name: {p.attributes["hw.id"]: p for p in http_receiver.latest_points(name)} for name in names}
    usage = points["hw.gpu.memory.usage"][UUIDS[0]]
    assert (usage.kind, usage.unit, usage.is_monotonic) == ("sum", "By", False)  # an UpDownCounter
    assert usage.temporality == "AGGREGATION_TEMPORALITY_CUMULATIVE"
    assert usage.value == round(0.95 * 80 * GIB)
    assert usage.attributes == {
        "hw.id": UUIDS[0],
        "hw.name": "gpu0",
        "hw.model": "NVIDIA H100 80GB HBM3",
        "hw.vendor": "NVIDIA",
        "hw.type": "gpu",
    }
    limit = points["hw.gpu.memory.limit"][UUIDS[1]]
    assert (limit.kind, limit.unit, limit.is_monotonic, limit.value) == ("sum", "By", False, 80 * GIB)
    busy = points["hw.gpu.utilization"][UUIDS[0]]
    assert (busy.kind, busy.unit) == ("gauge", "1")
    assert busy.value == pytest.approx(0.87)
    assert busy.attributes["hw.gpu.task"] == "general"
    share = points["hw.gpu.memory.utilization"][UUIDS[1]]
    assert (share.kind, share.unit) == ("gauge", "1")
    assert share.value == pytest.approx(0.1)
