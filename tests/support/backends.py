"""The real backends of `scripts/backends.sh` (OpenTelemetry Collector, Prometheus, Jaeger) for
the end-to-end tests: built once (cached), started on free loopback ports, stopped at the end."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "backends.sh"
BUILD_TIMEOUT_S = 1200.0
# Offsets of the ports `scripts/backends.sh up` opens from its base.
PORT_OFFSETS = (90, 317, 318, 417, 418, 685, 686, 889)


def missing_tools() -> list[str]:
    return [tool for tool in ("go", "prometheus", "promtool") if shutil.which(tool) is None]


def require_tools() -> None:
    """Skip (or, with CI set, fail) when the backends cannot be built or run here."""
    missing = missing_tools()
    if missing:
        reason = (
            f"the backend tests need {', '.join(missing)} (Go builds the Collector and Jaeger; "
            "Prometheus and promtool come from Debian's prometheus package); see docs/backends.md"
        )
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def require_promtool() -> str:
    """promtool's path; skips the test without it (fails it when CI is set)."""
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool (Debian's prometheus package) is needed to check Prometheus files"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


def _free_base() -> int:
    for base in range(20000, 60000, 1000):
        try:
            with contextlib.ExitStack() as stack:
                for offset in PORT_OFFSETS:
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of loopback ports for the backends")


@dataclass
class Backends:
    otlp_endpoint: str
    prometheus_url: str
    jaeger_url: str
    collector_metrics_url: str
    rules_path: Path
    run_dir: Path

    def get_json(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; a PromQL error fails the test with its message."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            document = self.get_json(url)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr}: {exc.read().decode(errors='replace')}") from None
        result: list[dict[str, Any]] = document["data"]["result"]
        return result

    def values(self, expr: str, label: str) -> dict[str, float]:
        return {row["metric"].get(label, ""): float(row["value"][1]) for row in self.query(expr)}

    def load_rules(self, text: str) -> None:
        """Replace Prometheus's rule file and reload it; waits until every group is loaded."""
        self.rules_path.write_text(text, encoding="utf-8")
        request = urllib.request.Request(f"{self.prometheus_url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        expected = text.count("- name:")
        assert wait_for(
            lambda: len(self.get_json(f"{self.prometheus_url}/api/v1/rules")["data"]["groups"]) == expected,
            30,
        ), self.log("prometheus")

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.get_json(f"{self.prometheus_url}/api/v1/alerts")["data"]["alerts"]
        return alerts

    def collector_exposition(self) -> str:
        with urllib.request.urlopen(self.collector_metrics_url, timeout=10) as response:
            text: str = response.read().decode()
            return text

    def log(self, name: str) -> str:
        path = self.run_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def wait_for(condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        # A server not up yet: connection errors (urllib's OSError, httpx's HTTPError) mean "not yet".
        with contextlib.suppress(OSError, KeyError, ValueError, AssertionError, httpx.HTTPError):
            if condition():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def build() -> None:
    completed = subprocess.run(
        ["bash", str(SCRIPT), "build"], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    assert completed.returncode == 0, f"scripts/backends.sh build failed:\n{completed.stderr[-4000:]}"


@contextlib.contextmanager
def running_backends(directory: Path) -> Iterator[Backends]:
    """Build (cached) and start the backends with an empty rule file; stop them on exit."""
    require_tools()
    build()
    rules = directory / "rules.yml"
    rules.write_text("groups: []\n", encoding="utf-8")
    env = {
        **os.environ,
        "MODELTAP_BACKENDS_RUN": str(directory / "run"),
        "MODELTAP_BACKENDS_PORT_BASE": str(_free_base()),
    }
    started = subprocess.run(
        ["bash", str(SCRIPT), "up", "--rules", str(rules)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    try:
        assert started.returncode == 0, f"scripts/backends.sh up failed:\n{started.stderr[-4000:]}"
        printed = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
        yield Backends(
            otlp_endpoint=printed["OTLP_ENDPOINT"],
            prometheus_url=printed["PROMETHEUS_URL"],
            jaeger_url=printed["JAEGER_URL"],
            collector_metrics_url=printed["COLLECTOR_METRICS_URL"],
            rules_path=rules,
            run_dir=directory / "run",
        )
    finally:
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=60, check=False)
