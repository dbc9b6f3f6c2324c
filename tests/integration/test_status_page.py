"""The status page in a real headless Chromium (Debian's `chromium`), against a live server:
the table fills from /status, the plots draw, the histogram of a feature shows, and a
screenshot is taken. CI installs Chromium (`.ci/run`); elsewhere the test is skipped without it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from modeltap import ModelTapMiddleware
from modeltap.demo.model_server import FEATURES, ChurnModel, build_app, make_customers, training_data
from modeltap.stats.reference import numeric_profile_document
from tests.support.servers import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must install Debian's chromium for the page test (.ci/run does)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def _chromium(tmp_path: Path, *args: str) -> str:
    assert CHROMIUM is not None
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.timeout(180)
def test_page_fills_the_table_draws_the_plots_and_the_histogram(tmp_path: Path) -> None:
    x, y = training_data()
    reference = tmp_path / "reference.json"
    reference.write_bytes(orjson.dumps(numeric_profile_document(FEATURES, x, model_name="churn")))
    app = ModelTapMiddleware(
        build_app(ChurnModel.train(x, y)), model_name="churn", reference=str(reference), worker_cpu_budget=0
    )
    shifted = make_customers(2000, 3, shift={"monthly_charges": 1.0})
    try:
        with serve(app, "uvicorn-page") as url:
            with httpx.Client(base_url=url, timeout=10.0) as client:
                for start in range(0, 2000, 20):
                    rows = np.round(shifted[start : start + 20], 3).tolist()
                    response = client.post("/v1/models/churn:predict", json={"instances": rows})
                    assert response.status_code == 200
            assert app.tap.flush(5.0)
            page = f"{url}/modeltap/"
            dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", page)
            screenshot = tmp_path / "status-page.png"
            _chromium(tmp_path, "--virtual-time-budget=10000", "--window-size=1280,1500",
                      f"--screenshot={screenshot}", page)  # fmt: skip
    finally:
        app.tap.shutdown()

    # The table has one row per feature, with the shifted feature flagged.
    rows = re.findall(r"<tr[^>]*><td>([^<]+)</td><td>(input|output)</td>(.*?)</tr>", dom)
    names = {name for name, _, _ in rows}
    assert set(FEATURES) <= names
    levels = {name: re.findall(r'class="cell-(\w+)"', cells) for name, _, cells in rows}
    assert levels["monthly_charges"] in (["WARNING"], ["CRITICAL"])
    assert levels["tenure_months"] == ["OK"]
    assert re.search(r'id="level" class="badge (WARNING|CRITICAL)"', dom)
    # The plots drew points, and the histogram drew one pair of bars per fine bucket.
    assert int(re.search(r'id="psi-plot"[^>]*data-points="(\d+)"', dom).group(1)) >= len(FEATURES)  # type: ignore[union-attr]
    assert int(re.search(r'id="latency-plot"[^>]*data-points="(\d+)"', dom).group(1)) >= 3  # type: ignore[union-attr]
    assert int(re.search(r'id="histogram-plot"[^>]*data-bars="(\d+)"', dom).group(1)) > 10  # type: ignore[union-attr]
    assert 'id="error"></span>' in dom  # the page read /status without an error
    assert screenshot.stat().st_size > 20_000
    keep = os.environ.get("MODELTAP_SCREENSHOT_DIR")
    if keep:
        shutil.copy(screenshot, Path(keep) / "status-page.png")
