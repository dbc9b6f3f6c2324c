"""The compiled request path builds and runs on every Python modeltap supports that this machine
has (3.10 to 3.13): `_speedups.c` uses version-dependent C API (exception handling changed in
3.12, integer conversion in 3.13), and the test suite itself runs on one interpreter only.

Each other interpreter compiles the extension with the flags setup.py uses (warnings are errors
here) and runs `tests/support/speedups_smoke.py` against it: exchanges answered, failed, encoded
and traced, and no object leaked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "modeltap" / "_speedups.c"
SMOKE = ROOT / "tests" / "support" / "speedups_smoke.py"
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")
PROBE = (
    "import sys, sysconfig; print(sys.executable); print(sysconfig.get_paths()['include']); "
    "print(sysconfig.get_config_var('EXT_SUFFIX'))"
)


def candidates(version: str) -> list[str]:
    """Commands that may run Python `version`: on PATH, and pyenv's installed versions (its shims
    answer only for the versions it has selected)."""
    found = [command for command in [shutil.which(f"python{version}")] if command is not None]
    versions = Path.home() / ".pyenv" / "versions"
    if versions.is_dir():
        found += [str(path) for path in sorted(versions.glob(f"{version}.*/bin/python{version}"))]
    return found


def interpreters() -> list[tuple[str, str, Path, str]]:
    """(version, executable, include directory, extension suffix) of each other supported
    Python found on PATH with its C headers."""
    found = []
    for version in SUPPORTED:
        if version == f"{sys.version_info.major}.{sys.version_info.minor}":
            continue  # the suite's own interpreter builds and tests the extension already
        for command in candidates(version):
            probe = subprocess.run([command, "-c", PROBE], capture_output=True, text=True, timeout=30)
            if probe.returncode != 0:
                continue  # e.g. a version manager's shim for a version it has not selected
            executable, include, suffix = probe.stdout.split()
            if (Path(include) / "Python.h").exists():
                found.append((version, executable, Path(include), suffix))
                break
    return found


FOUND = interpreters() if shutil.which("gcc") else []


@pytest.mark.skipif(not FOUND, reason="no other supported Python with its headers (or no gcc) here")
@pytest.mark.parametrize(("version", "executable", "include", "suffix"), FOUND, ids=[f[0] for f in FOUND])
def test_the_extension_builds_and_runs_on(
    version: str, executable: str, include: Path, suffix: str, tmp_path: Path
) -> None:
    built = tmp_path / f"_speedups{suffix}"
    flags = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]
    flags += ["-Wno-missing-field-initializers", "-fPIC", "-shared", f"-I{include}"]
    compile_ = subprocess.run(
        ["gcc", *flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True, timeout=120
    )
    assert compile_.returncode == 0, compile_.stderr
    run = subprocess.run([executable, str(SMOKE), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["ok"], run.stdout
