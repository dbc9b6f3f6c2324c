#!/usr/bin/env python3
"""Compare modeltap's GPU figures with nvidia-smi's on a machine with a real NVIDIA GPU.

The unit tests drive modeltap's NVML sampler through a fake library (their host has no GPU);
this script reads the real devices through the same sampler (`modeltap.operations.gpu`) and
prints each figure beside what `nvidia-smi --query-gpu=memory.used,memory.total,utilization.gpu
--format=csv` reports, then the /status rows and the OTLP points modeltap would export.

    pip install -e '.[gpu]'      # or: pip install nvidia-ml-py, and run with PYTHONPATH=src
    python scripts/gpu_check.py

Exit status: 0 when the figures agree, or when there is no GPU here (said so plainly); 1 when
they differ beyond what the two reads a moment apart explain, or when a GPU is present but
modeltap cannot read it (nvidia-ml-py missing, NVML failing).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import shutil
import subprocess
import sys
from pathlib import Path

from opentelemetry.sdk.metrics.export import NumberDataPoint

# This checkout's modeltap first (an installed one may be another version).
_SRC = Path(__file__).resolve().parents[1] / "src"
if (_SRC / "modeltap").is_dir():
    sys.path.insert(0, str(_SRC))

from modeltap.export.otlp_metrics import gpu_metrics  # noqa: E402
from modeltap.export.status_json import status_document  # noqa: E402
from modeltap.operations.gpu import GpuSampler  # noqa: E402
from modeltap.snapshot import GpuDevice, Snapshot  # noqa: E402

SHOWN = "memory.used,memory.total,utilization.gpu"
QUERY = f"index,uuid,{SHOWN}"
MIB = 1024 * 1024
# nvidia-smi reports MiB; memory can move between the two reads; utilisation is a moving
# average over the driver's last sample period, so only a gross difference means anything.
MEMORY_SLACK_MIB = 256
UTILIZATION_SLACK = 25


def run_smi(*arguments: str) -> str | None:
    """nvidia-smi's output, or None where it is missing or fails (no driver, no GPU)."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return None
    try:
        result = subprocess.run(  # noqa: S603 (a fixed command line)
            [command, *arguments], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def nvidia_smi() -> list[dict[str, str]] | None:
    """nvidia-smi's rows (with index and UUID, to match devices), or None: no GPU here."""
    text = run_smi(f"--query-gpu={QUERY}", "--format=csv,nounits")
    if text is None:
        return None
    rows = list(csv.DictReader(io.StringIO(text), skipinitialspace=True))
    return [{key.split(" ")[0]: value.strip() for key, value in row.items()} for row in rows] or None


def main() -> int:
    smi = nvidia_smi()
    if smi is None:
        print("gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists none): nothing to compare.")
        return 0
    print(f"$ nvidia-smi --query-gpu={SHOWN} --format=csv")
    print(run_smi(f"--query-gpu={SHOWN}", "--format=csv") or "(no answer)")
    if importlib.util.find_spec("pynvml") is None:
        print("gpu_check: a GPU is present but nvidia-ml-py is not installed: pip install 'modeltap[gpu]'")
        return 1
    sampler = GpuSampler()
    devices = sampler.sample()
    sampler.close()
    if not devices:
        print(f"gpu_check: a GPU is present but modeltap read none (NVML errors: {sampler.errors})")
        return 1
    print(f"\nmodeltap (NVML, {len(devices)} device(s), NVML errors: {sampler.errors})")
    failures = compare(devices, smi)
    show_exports(devices)
    if failures:
        print("\ngpu_check: DIFFERENT:\n  " + "\n  ".join(failures))
        return 1
    print("\ngpu_check: modeltap's figures agree with nvidia-smi's")
    return 0


def compare(devices: tuple[GpuDevice, ...], smi: list[dict[str, str]]) -> list[str]:
    by_uuid = {row.get("uuid", ""): row for row in smi}
    failures = []
    for device in devices:
        row = by_uuid.get(device.uuid) or (smi[device.index] if device.index < len(smi) else None)
        utilization = "n/a" if device.utilization is None else f"{device.utilization * 100:.0f} %"
        print(
            f"  gpu{device.index} {device.uuid} {device.name}: "
            f"used {device.memory_used_bytes / MIB:.0f} MiB of {device.memory_total_bytes / MIB:.0f} MiB "
            f"({(device.memory_use or 0) * 100:.1f} %), utilization {utilization}"
        )
        if row is None:
            failures.append(f"gpu{device.index} {device.uuid}: not in nvidia-smi's list")
            continue
        print(
            f"    nvidia-smi: used {row['memory.used']} MiB of {row['memory.total']} MiB, "
            f"utilization {row['utilization.gpu']} %"
        )
        pairs = (
            ("memory.used", device.memory_used_bytes / MIB, MEMORY_SLACK_MIB),
            ("memory.total", device.memory_total_bytes / MIB, 1),
            (
                "utilization.gpu",
                None if device.utilization is None else device.utilization * 100,
                UTILIZATION_SLACK,
            ),
        )
        for key, ours, slack in pairs:
            try:
                theirs = float(row[key])
            except (KeyError, ValueError):
                continue  # "[N/A]" (MIG, some virtual GPUs): nothing to compare with
            if ours is None or abs(ours - theirs) > slack:
                failures.append(f"gpu{device.index} {key}: modeltap {ours}, nvidia-smi {theirs}")
    return failures


def show_exports(devices: tuple[GpuDevice, ...]) -> None:
    """What /status and the OTLP export would carry (levels left at OK: judged by the analysis)."""
    snapshot = Snapshot(taken_unix_ns=2, start_unix_ns=1, instance_id="gpu-check", pid=0, gpus=devices)
    print("\n/status.gpus")
    for row in status_document(snapshot, None)["gpus"]:
        print(f"  {row}")
    print("\nOTLP")
    for metric in gpu_metrics(snapshot):
        for point in metric.data.data_points:
            if isinstance(point, NumberDataPoint):
                attributes = dict(point.attributes or {})
                print(f"  {metric.name} [{metric.unit}] {attributes.get('hw.id')}: {point.value}")


if __name__ == "__main__":
    sys.exit(main())
