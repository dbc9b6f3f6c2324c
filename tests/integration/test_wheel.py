"""The built wheel (not the source tree) installs and imports, with its typing marker."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_built_wheel_installs_and_imports(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = dist.glob("modeltap-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "modeltap/py.typed" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import modeltap, sys; from modeltap import ModelTapMiddleware; "
        "print(modeltap.__file__); print(modeltap.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=env, cwd=tmp_path
    ).stdout.split()
    assert out[0].startswith(str(target)), out
    assert (target / "bin" / "modeltap").exists()
