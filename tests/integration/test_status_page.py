"""The status page in a real headless Chromium (Debian's `chromium`), against live servers: under
the middleware's prefix on the application's port, and at `/` on the sidecar's admin port while
`modeltap demo` runs. The table fills from /status with level colours, the plots draw, the
histogram of a feature shows, and a screenshot is taken. CI installs Chromium (`.ci/run`);
elsewhere the test is skipped without it."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from modeltap import ModelTapMiddleware
from modeltap.demo.model_server import (
    FEATURES,
    PREDICTION,
    ChurnModel,
    build_app,
    make_customers,
    training_data,
)
from modeltap.demo.runner import Addresses, DemoOptions, DemoResult, run_demo
from modeltap.demo.traffic import PHASES
from modeltap.stats.reference import numeric_profile_document
from tests.support.servers import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must install Debian's chromium for the page test (.ci/run does)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")

# Read at import: the tests below run with MODELTAP_* variables cleared.
SCREENSHOT_DIR = os.environ.get("MODELTAP_SCREENSHOT_DIR")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def _keep_screenshot(screenshot: Path, name: str) -> None:
    """Copy the screenshot to MODELTAP_SCREENSHOT_DIR, when set, to look at it."""
    if SCREENSHOT_DIR:
        shutil.copy(screenshot, Path(SCREENSHOT_DIR) / name)


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
    _keep_screenshot(screenshot, "status-page.png")


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("clean_otel_env")
def test_page_on_the_sidecar_admin_port_during_the_demo(tmp_path: Path) -> None:
    """The demo's covariate-shift phase, long enough for the browser; stopped when it is done."""
    covariate = next(p for p in PHASES if p.shift)
    options = DemoOptions(
        duration_s=120.0, rate_per_s=150, workdir=str(tmp_path / "demo"), phases=(covariate,)
    )
    stop = threading.Event()
    ready: list[Addresses] = []
    results: list[DemoResult] = []
    demo = threading.Thread(
        target=lambda: results.append(run_demo(options, io.StringIO(), stop=stop, on_ready=ready.append)),
        name="page-test-demo",
    )
    demo.start()
    try:
        deadline = time.monotonic() + 30
        while not ready:
            assert demo.is_alive(), "the demo stopped before it served"
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.05)
        admin = ready[0].admin_url
        with httpx.Client(base_url=admin, timeout=5.0) as client:
            # Wait until the sidecar's /status flags the shifted features (the window has filled).
            while True:
                levels = {f["name"]: f["level"] for f in client.get("/status").json()["features"]}
                if all(levels.get(name) in ("WARNING", "CRITICAL") for name in covariate.shift):
                    break
                assert time.monotonic() < deadline, f"no drift flagged in time: {levels}"
                time.sleep(0.2)
            assert client.get("/").headers["content-type"].startswith("text/html")
        page = f"{admin}/"
        dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", page)
        screenshot = tmp_path / "sidecar-status-page.png"
        _chromium(tmp_path, "--virtual-time-budget=10000", "--window-size=1280,1500",
                  f"--screenshot={screenshot}", page)  # fmt: skip
    finally:
        stop.set()
        demo.join(60)
    assert not demo.is_alive()
    assert len(results) == 1
    assert results[0].leftovers == []

    rows = re.findall(r"<tr[^>]*><td>([^<]+)</td><td>(input|output)</td>(.*?)</tr>", dom)
    roles = {name: role for name, role, _ in rows}
    assert roles == {**dict.fromkeys(FEATURES, "input"), PREDICTION: "output"}
    levels = {name: re.findall(r'class="cell-(\w+)"', cells) for name, _, cells in rows}
    for name in FEATURES:
        expected = (["WARNING"], ["CRITICAL"]) if name in covariate.shift else (["OK"], ["INFO"])
        assert levels[name] in expected, (name, levels[name])
    assert re.search(r'id="level" class="badge (WARNING|CRITICAL)"', dom)
    assert int(re.search(r'id="psi-plot"[^>]*data-points="(\d+)"', dom).group(1)) >= len(FEATURES)  # type: ignore[union-attr]
    assert int(re.search(r'id="latency-plot"[^>]*data-points="(\d+)"', dom).group(1)) >= 3  # type: ignore[union-attr]
    # The histogram shows the most drifted feature: one pair of bars per reference bucket.
    selected = re.search(r'id="histogram-title">Reference vs window: (\w+)<', dom)
    assert selected is not None
    assert selected.group(1) in covariate.shift
    reference = orjson.loads((tmp_path / "demo" / "reference.json").read_bytes())
    buckets = {f["name"]: len(f["counts"]) for f in reference["features"]}
    bars = re.search(r'id="histogram-plot"[^>]*data-bars="(\d+)"', dom)
    assert bars is not None
    assert int(bars.group(1)) == buckets[selected.group(1)]
    # The malformed requests show up in the counters table.
    assert re.search(r"<tr><td>violation</td><td>decode_error</td><td>[1-9]\d*</td></tr>", dom)
    assert 'id="error"></span>' in dom  # the page read /status without an error
    assert screenshot.stat().st_size > 20_000
    _keep_screenshot(screenshot, "sidecar-status-page.png")
