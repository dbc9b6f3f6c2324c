"""The built wheel (not the source tree) installs and imports, with its typing marker and, on
Linux, its compiled request path; the source distribution carries the C source."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def source_distribution(directory: Path) -> Path:
    """The sdist of the working tree, built as a release would build it."""
    script = f"from setuptools import build_meta; print(build_meta.build_sdist({str(directory)!r}))"
    name = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.split()[-1]
    return directory / name


@pytest.mark.timeout(300)
def test_built_wheel_installs_and_imports(tmp_path: Path) -> None:
    # Built from the sdist, as pip builds it from the package index (and so from nothing a
    # previous build left in the working tree).
    dist = tmp_path / "dist"
    sdist = source_distribution(tmp_path)
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
            str(sdist),
        ],
        check=True,
    )
    (wheel,) = dist.glob("modeltap-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "modeltap/py.typed" in names
    assert "modeltap/_speedups.pyi" in names
    compiled = [name for name in names if name.startswith("modeltap/_speedups") and name.endswith(".so")]
    if sys.platform.startswith("linux"):
        # The compiled request path is in the wheel (built by setup.py with the C compiler here).
        assert compiled, names
    assert not any(name.endswith(".c") for name in names)  # the source goes to the sdist only
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import modeltap, sys; from modeltap import ModelTapMiddleware; "
        "from modeltap.capture import compiled; "
        "print(modeltap.__file__); print(modeltap.__version__); print(compiled.AVAILABLE)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=env, cwd=tmp_path
    ).stdout.split()
    assert out[0].startswith(str(target)), out
    assert out[2] == str(bool(compiled)), out  # the installed wheel imports its extension
    assert (target / "bin" / "modeltap").exists()


@pytest.mark.timeout(300)
def test_the_source_distribution_carries_the_c_source_and_the_build_files(tmp_path: Path) -> None:
    with tarfile.open(source_distribution(tmp_path)) as archive:
        members = {member.split("/", 1)[1] for member in archive.getnames() if "/" in member}
    for wanted in (
        "setup.py",
        "pyproject.toml",
        "src/modeltap/_speedups.c",
        "src/modeltap/_speedups.pyi",
        "src/modeltap/py.typed",
        "src/modeltap/export/status_page.html",
        "CHANGELOG.md",
    ):
        assert wanted in members, wanted
    assert not any(member.endswith(".so") for member in members)
