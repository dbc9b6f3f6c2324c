"""GPU memory and utilisation per device, through NVIDIA's NVML.

A model server that runs out of GPU memory fails its requests (CUDA out-of-memory) while CPU and
resident memory look fine, so the analysis reads each device's memory in use against its total
and its utilisation. NVML comes from `nvidia-ml-py` (imported as `pynvml`), the optional extra
`modeltap[gpu]`: without it, or without a GPU or a driver, nothing is reported and nothing fails
(one log line says why). NVML is initialised once, on the first sample (never in a process that
does not analyse: a serving process in process mode never loads it); each failed NVML call is
counted (`errors`), and a device whose memory cannot be read is left out of that sample only.
A sample is two NVML calls per device, taken at most once per `MIN_INTERVAL_S`.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any

from modeltap.snapshot import GpuDevice

MIN_INTERVAL_S = 1.0
_log = logging.getLogger("modeltap")


def _text(value: Any) -> str:
    """NVML strings: `str` in current nvidia-ml-py, `bytes` in releases before 11.5."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class GpuSampler:
    """Example::

    sampler = GpuSampler()  # or GpuSampler(nvml=a_library_object) in tests
    for device in sampler.sample():
        device.hw_id, device.memory_used_bytes, device.memory_total_bytes, device.utilization
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml  # None: import pynvml on the first sample
        self._lock = threading.Lock()  # the analysis's thread and a flush may sample at once
        self._started: bool | None = None  # None: not tried yet; False: unavailable for good
        self._devices: list[tuple[int, Any, str, str]] = []  # (index, handle, uuid, name)
        self._last: tuple[GpuDevice, ...] = ()
        self._at = -MIN_INTERVAL_S
        self.errors = 0  # failed NVML calls since start
        # nvidia-ml-py >= 11.515 offers memory info v2, whose `used` leaves out the driver's
        # reserved memory, as nvidia-smi shows it; older libraries and drivers only have v1.
        self._memory_version: Any = None

    def sample(self) -> tuple[GpuDevice, ...]:
        """Every device's figures now (the last sample when asked again within MIN_INTERVAL_S);
        `level` is left at OK for the caller to judge against its thresholds."""
        with self._lock:
            now = time.monotonic()
            if now - self._at < MIN_INTERVAL_S:
                return self._last
            self._at = now
            if self._started is None:
                self._started = self._start()
            if self._started:
                self._last = tuple(self._read())
            return self._last

    def close(self) -> None:
        """Release NVML (once; sampling stops)."""
        with self._lock:
            if self._started:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:
                    self.errors += 1
            self._started = False
            self._last = ()

    def _start(self) -> bool:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError:
                _log.debug("modeltap: nvidia-ml-py is not installed (modeltap[gpu]): no GPU figures")
                return False
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError: no driver, no device, no permission
            self.errors += 1
            _log.info("modeltap: NVML did not start (%s): no GPU figures", exc)
            return False
        try:
            for index in range(int(nvml.nvmlDeviceGetCount())):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                self._devices.append((index, handle, uuid, _text(nvml.nvmlDeviceGetName(handle))))
        except Exception as exc:
            self.errors += 1
            _log.info("modeltap: NVML could not list the GPUs (%s): those found so far are read", exc)
        if not self._devices:
            _log.info("modeltap: NVML sees no GPU: no GPU figures")
        self._memory_version = getattr(nvml, "nvmlMemory_v2", None)
        return True

    def _memory(self, handle: Any) -> Any:
        nvml = self._nvml
        if self._memory_version is not None:
            try:
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=self._memory_version)
            except Exception:  # a driver without v2 (NVML_ERROR_FUNCTION_NOT_FOUND): v1 from now on
                self._memory_version = None
        return nvml.nvmlDeviceGetMemoryInfo(handle)

    def _read(self) -> list[GpuDevice]:
        nvml = self._nvml
        devices = []
        # Any exception, not only NVMLError: a driver fault must cost a figure, never the snapshot.
        for index, handle, uuid, name in self._devices:
            try:
                memory = self._memory(handle)
            except Exception:
                self.errors += 1
                continue
            try:
                utilization: float | None = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            except Exception:  # NOT_SUPPORTED on some MIG slices and virtual GPUs
                self.errors += 1
                utilization = None
            devices.append(
                GpuDevice(
                    index=index,
                    uuid=uuid,
                    name=name,
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                    utilization=utilization,
                )
            )
        return devices
