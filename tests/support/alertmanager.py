"""A real Prometheus Alertmanager (Debian's prometheus-alertmanager) on a loopback port, routing
every alert to a webhook URL, for the alert tests. It never gossips (`--cluster.listen-address=`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.backends import wait_for
from tests.support.server_process import free_port

BINARY = "prometheus-alertmanager"


def require_alertmanager() -> str:
    found = shutil.which(BINARY) or shutil.which("alertmanager")
    if found is None:
        reason = "the Alertmanager tests need Debian's prometheus-alertmanager package"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


@contextlib.contextmanager
def alertmanager(directory: Path, webhook_url: str) -> Iterator[str]:
    """Start it; yields its base URL; stops it on exit."""
    binary = require_alertmanager()
    config = directory / "alertmanager.yml"
    config.write_text(
        "route:\n"
        "  receiver: test\n"
        "  group_by: [alertname, modeltap_model_name, modeltap_model_version, severity]\n"
        "  group_wait: 1s\n"
        "  group_interval: 1s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: test\n"
        "    webhook_configs:\n"
        f"      - url: {webhook_url}\n"
        "        send_resolved: true\n",
        encoding="utf-8",
    )
    port = free_port()
    log = (directory / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            f"--storage.path={directory / 'am-data'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: httpx.get(url + "/-/ready", timeout=1).status_code == 200, 30), (
            directory / "alertmanager.log"
        ).read_text()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
