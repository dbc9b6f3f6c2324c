"""`modeltap sidecar` as a real process on ephemeral loopback ports, for integration tests.

It runs in a session of its own, so its data planes (`--workers N`) and its monitor process can be
signalled and, at the end, killed as one process group: nothing is ever left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

MODELTAP = Path(sys.executable).with_name("modeltap")
STARTUP_TIMEOUT_S = 30.0


def modeltap_command() -> list[str]:
    if MODELTAP.exists():
        return [str(MODELTAP)]
    return [sys.executable, "-m", "modeltap.cli"]


def clean_environ(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELTAP_", "OTEL_"))}
    env.update(extra)
    return env


@dataclass
class SidecarProcess:
    process: subprocess.Popen[str]
    url: str
    admin_url: str
    startup_s: float
    stderr_path: Path
    terminated_at: float = 0.0

    def terminate(self) -> float:
        """SIGTERM, as the kubelet sends it; returns when it was sent."""
        self.terminated_at = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        return self.terminated_at

    def wait_exit(self, bound_s: float) -> tuple[int, float]:
        """Exit code and seconds from SIGTERM to exit; fails if not exited within `bound_s`."""
        try:
            code = self.process.wait(bound_s + 5.0)
        except subprocess.TimeoutExpired:
            pytest.fail(f"sidecar still running {bound_s + 5.0:.1f} s after SIGTERM\n{self.stderr}")
        return code, time.monotonic() - self.terminated_at

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def assert_clean_exit(self, bound_s: float) -> float:
        code, elapsed = self.wait_exit(bound_s)
        stderr = self.stderr
        assert code == 0, stderr
        assert "Traceback" not in stderr, stderr
        assert elapsed <= bound_s, f"exited {elapsed:.2f} s after SIGTERM, bound {bound_s:.2f} s\n{stderr}"
        return elapsed


ANNOUNCE = re.compile(
    r"http://127\.0\.0\.1:(\d+) -> \S+(?: \(\d+ workers\))?; admin http://127\.0\.0\.1:(\d+) "
)


@contextlib.contextmanager
def sidecar_process(
    upstream: str, tmp_path: Path, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[SidecarProcess]:
    """`modeltap sidecar` on ephemeral loopback ports; killed (never left behind) on exit."""
    command = [
        *modeltap_command(),
        "sidecar",
        "--upstream",
        upstream,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--admin-host",
        "127.0.0.1",
        "--admin-port",
        "0",
        *args,
    ]
    stderr_path = tmp_path / "sidecar.stderr"
    with stderr_path.open("w", encoding="utf-8") as stderr:
        spawned = time.monotonic()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=clean_environ(env or {}),
            start_new_session=True,
        )
        try:
            assert process.stdout is not None
            line = _read_line(process, STARTUP_TIMEOUT_S)
            match = ANNOUNCE.search(line)
            assert match, f"no announcement: {line!r}\n{stderr_path.read_text()}"
            yield SidecarProcess(
                process,
                f"http://127.0.0.1:{match.group(1)}",
                f"http://127.0.0.1:{match.group(2)}",
                time.monotonic() - spawned,
                stderr_path,
            )
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # data planes and the monitor too
            if process.stdout is not None:
                process.stdout.close()


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                return process.stdout.readline()
            if process.poll() is not None:
                return ""
    return ""
