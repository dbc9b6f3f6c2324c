"""The status page in a real headless Chromium (Debian's `chromium`), against live servers: under
the middleware's prefix on the application's port, and at `/` on the sidecar's admin port while
`modeltap demo` runs. The table fills from /status with level colours, the plots draw (from the
server's history, on the first load, over a wall-clock axis, with a legend naming each series),
the histogram of a feature shows, proxy errors are listed, a banner says drift needs a reference
when none is loaded, and a screenshot is taken. CI installs Chromium (`.ci/run`); elsewhere the
test is skipped without it."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import subprocess
import threading
import time
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modeltap import ModelTapConfig, ModelTapMiddleware
from modeltap.capture import compiled
from modeltap.demo.model_server import (
    FEATURES,
    PREDICTION,
    SCORE,
    ChurnModel,
    build_app,
    make_customers,
    training_data,
)
from modeltap.demo.runner import Addresses, DemoOptions, DemoResult, run_demo
from modeltap.demo.traffic import PHASES
from modeltap.reference import numeric_profile_document
from tests.support.servers import serve
from tests.support.sidecar import running_sidecar

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


# The page polls every 2 s: a virtual-time budget below that lets it fetch /status once (virtual
# time stands still while a fetch is pending), which is what a reader sees on opening the page.
FIRST_LOAD = "--virtual-time-budget=1200"


def _data(dom: str, element_id: str, name: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*data-{name}="([^"]*)"', dom)
    assert found is not None, (element_id, name)
    return found.group(1)


def _legend(dom: str, element_id: str) -> list[str]:
    found = re.search(rf'<ul class="legend" id="{element_id}">(.*?)</ul>', dom)
    assert found is not None, element_id
    # Each entry is a colour swatch followed by the series name.
    return re.findall(
        r'<li><span class="swatch[^"]*" style="[^"]*background[^"]*"></span>([^<]+)</li>', found.group(1)
    )


def _banner_shown(dom: str) -> bool:
    found = re.search(r'<div id="no-reference" class="banner"( hidden="")?>', dom)
    assert found is not None
    return found.group(1) is None


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
            # Outcomes for the first requests' rows (the demo names them demo-1, demo-2, ...; the
            # first malformed one is the 20th): the performance table gets realised numbers.
            labels = [
                # A third churn, as in training: the label's own drift stays small, so the page
                # still opens on the most drifted input.
                {"request_id": f"demo-{i}", "row": row, "label": int(row % 3 == 0)}
                for i in range(1, 20)
                for row in range(8)
            ]
            assert client.post("/feedback", json=labels).json()["accepted"] == len(labels)
            # And their offers' results, one row in four accepted: the business table's row.
            offers = [
                {"request_id": f"demo-{i}", "row": row, "name": "conversion", "value": int(row % 4 == 0)}
                for i in range(1, 20)
                for row in range(8)
            ]
            assert client.post("/outcome", json=offers).json()["accepted"] == len(offers)
            # Accepted is not yet joined: the page reads the next snapshot, so wait for it.
            joined_by = time.monotonic() + 20.0
            while client.get("/status").json()["labels"].get("joined", 0) < len(labels):
                assert time.monotonic() < joined_by, client.get("/status").json()["labels"]
                time.sleep(0.1)
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
    assert roles == {**dict.fromkeys(FEATURES, "input"), PREDICTION: "output", SCORE: "output"}
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
    # Operations: the requests per second, the cold start's p50 and its count, the served version.
    assert re.search(r'id="rps">\d+\.\d</b>', dom)
    assert re.search(r'id="cold">\d+\.\d ms \(20\)</b>', dom)
    assert re.search(r'id="served" class="">1</b>', dom)
    # The shifted features' alerts fire (the demo fires on the first flagged snapshot).
    alerts = re.findall(
        r'<tr><td>(\w+)</td><td>churn · 1</td><td class="cell-(\w+)">(\w+)</td><td>(\w+)</td>', dom
    )
    firing = {subject: (level, severity) for subject, level, severity, state in alerts if state == "firing"}
    assert set(firing) >= set(covariate.shift), alerts
    assert all(firing[name] in (("WARNING", "warning"), ("CRITICAL", "critical")) for name in covariate.shift)
    # Performance: the 152 labels joined, the estimate from the scores, the reference's baseline.
    performance = re.search(r'<table id="performance">.*?<tbody><tr>(.*?)</tr>', dom, flags=re.DOTALL)
    assert performance is not None
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", performance.group(1))
    assert cells[:3] == ["churn · 1", "classification", "152"]
    assert re.fullmatch(r"accuracy [01]\.\d{3} · AUC 0\.\d{3} ±0\.\d{3}", cells[3]), cells
    assert re.fullmatch(r"accuracy 0\.\d{3}", cells[4]), cells
    assert re.fullmatch(r"0\.\d{3} \(reference\)", cells[5]), cells
    # Business: version 1's exposures so far, the 25 % of the results fed back, its level.
    business = re.search(r'<table id="business">.*?<tbody><tr>(.*?)</tr>', dom, flags=re.DOTALL)
    assert business is not None
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", business.group(1))
    assert cells[0] == "churn · 1"
    assert int(cells[1]) >= 152
    assert cells[2] == "25.0%"
    assert cells[-1] in ("OK", "EMERGENCY")
    # Operations: what the sidecar's data plane and its monitor cost, each on a row of its own.
    operations = re.search(r'<table id="operations">.*?<tbody>(.*?)</tbody>', dom, flags=re.DOTALL)
    assert operations is not None
    process = r"serving \d+ \((?:compiled|python) capture\)|monitor \d+"
    processes = re.findall(rf"<tr><td>({process})</td><td>[\d.]+%</td><td>\d+ MiB</td>", operations.group(1))
    assert sorted(p.split()[0] for p in processes) == ["monitor", "serving"], operations.group(1)
    # The data plane says how it captures (compiled where the extension is built, as in CI).
    form = "compiled" if compiled.AVAILABLE else "python"
    assert any(p.endswith(f"({form} capture)") for p in processes), processes
    # The malformed requests show up in the counters table.
    assert re.search(r"<tr><td>violation</td><td>decode_error</td><td>[1-9]\d*</td></tr>", dom)
    assert 'id="error"></span>' in dom  # the page read /status without an error
    assert screenshot.stat().st_size > 20_000
    _keep_screenshot(screenshot, "sidecar-status-page.png")


@pytest.mark.timeout(180)
def test_first_load_draws_the_servers_history_on_a_time_axis_with_legends(tmp_path: Path) -> None:
    """Short history intervals (0.25 s slots), so the server has several points before the page
    opens; the page draws all of them from its first /status."""
    x, y = training_data()
    reference = tmp_path / "reference.json"
    reference.write_bytes(orjson.dumps(numeric_profile_document(FEATURES, x, model_name="churn")))
    app = ModelTapMiddleware(
        build_app(ChurnModel.train(x, y)),
        config=ModelTapConfig.from_env({}, monitor="inline"),
        model_name="churn",
        reference=str(reference),
        worker_cpu_budget=0,
        window_slot_s=0.25,
        window_slots=20,
        cold_start_requests=0,  # every request's latency in the plot from the first slot on
    )
    customers = make_customers(4000, 7, shift={"monthly_charges": 1.0})
    try:
        with serve(app, "uvicorn-page-history") as url:
            with httpx.Client(base_url=url, timeout=10.0) as client:
                deadline = time.monotonic() + 60
                start = 0
                while True:
                    rows = np.round(customers[start % 4000 : start % 4000 + 40], 3).tolist()
                    assert (
                        client.post("/v1/models/churn:predict", json={"instances": rows}).status_code == 200
                    )
                    start += 40
                    assert app.tap.flush(5.0)
                    history = client.get("/modeltap/status").json()["history"]
                    if len(history["t"]) >= 6 and all(v is not None for v in history["psi"]["age"][-3:]):
                        break
                    assert time.monotonic() < deadline, history
                    time.sleep(0.05)
            dom = _chromium(tmp_path, FIRST_LOAD, "--dump-dom", f"{url}/modeltap/")
            screenshot = tmp_path / "status-page-history.png"
            _chromium(tmp_path, FIRST_LOAD, "--window-size=1280,1600", f"--screenshot={screenshot}",
                      f"{url}/modeltap/")  # fmt: skip
    finally:
        app.tap.shutdown()

    polls = re.search(r'<body[^>]*data-polls="(\d+)"', dom)
    assert polls is not None
    assert polls.group(1) == "1"  # one fetch of /status
    # Every series has the server's points (at least the 6 seen above), not the one poll's.
    assert int(_data(dom, "latency-plot", "points")) >= 3 * 6
    assert int(_data(dom, "psi-plot", "points")) >= 3 * len(FEATURES)
    assert int(_data(dom, "errors-plot", "points")) >= 6
    # A wall-clock time axis: labels like 14:03:25 under each plot.
    for plot in ("psi-plot", "latency-plot", "errors-plot"):
        labels = _data(dom, plot, "xlabels").split()
        assert labels
        assert all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", label) for label in labels), labels
    # Legends name the series, each with its colour swatch.
    assert set(FEATURES) <= set(_legend(dom, "psi-legend"))
    assert _legend(dom, "latency-legend")[:3] == ["p50 (ms)", "p95 (ms)", "p99 (ms)"]
    assert "error rate (%)" in _legend(dom, "errors-legend")
    assert not _banner_shown(dom)  # a reference is loaded
    assert 'id="error"></span>' in dom
    _keep_screenshot(screenshot, "status-page-history.png")


@pytest.mark.timeout(120)
def test_a_history_of_under_a_second_still_has_a_time_axis(tmp_path: Path) -> None:
    """A history shorter than a second (four points 0.2 s apart, none on a round second) has no
    round tick to label: the axis labels its ends instead of nothing. The server's /status is
    taken as it is, with its history replaced by that one."""
    x, y = training_data()
    config = ModelTapConfig.from_env({}, monitor="inline")
    app = ModelTapMiddleware(build_app(ChurnModel.train(x, y)), config=config, model_name="churn")
    try:
        with (
            serve(app, "uvicorn-page-short-history") as url,
            httpx.Client(base_url=url, timeout=10.0) as client,
        ):
            rows = np.round(make_customers(20, 3), 3).tolist()
            assert client.post("/v1/models/churn:predict", json={"instances": rows}).status_code == 200
            assert app.tap.flush(5.0)
            document = client.get("/modeltap/status").json()
    finally:
        app.tap.shutdown()
    start = math.floor(time.time()) - 60 + 0.05
    points = 4
    document["history"].update(
        t=[start + 0.2 * i for i in range(points)],
        interval_s=0.2,
        requests=[5] * points,
        error_rate=[0.0] * points,
        latency_s={name: [0.001] * points for name in ("p50", "p95", "p99")},
        psi={name: [0.05] * points for name in FEATURES[:2]},
    )
    page = resources.files("modeltap.export").joinpath("status_page.html").read_bytes()

    async def status(request: Request) -> Response:
        return JSONResponse(document)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html")

    stub = Starlette(routes=[Route("/modeltap/", index), Route("/modeltap/status", status)])
    with serve(stub, "uvicorn-page-stub") as url:
        dom = _chromium(tmp_path, FIRST_LOAD, "--dump-dom", f"{url}/modeltap/")
    for plot in ("psi-plot", "latency-plot", "errors-plot"):
        labels = _data(dom, plot, "xlabels").split()
        assert 1 <= len(labels) <= 2, labels
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d", label) for label in labels), labels


@pytest.mark.timeout(120)
def test_admin_page_lists_proxy_errors_and_asks_for_a_reference(tmp_path: Path, unused_tcp_port: int) -> None:
    """A sidecar with no reference in front of a model that is down: the page says drift needs a
    reference (with the `modeltap profile` command) and lists the sidecar's own errors."""
    monitoring = ModelTapConfig.from_env({}, monitor="inline", model_name="churn", views_prefix=None)
    with running_sidecar(f"http://127.0.0.1:{unused_tcp_port}", monitoring) as sidecar:
        with httpx.Client(base_url=sidecar.url, timeout=10.0) as client:
            for _ in range(3):
                response = client.post("/v1/models/churn:predict", json={"instances": [[1, 2, 3, 4, 5]]})
                assert response.status_code == 502
                assert response.headers["x-modeltap-error"] == "upstream_connect_failure"
        assert sidecar.sidecar.tap.flush(5.0)
        dom = _chromium(tmp_path, FIRST_LOAD, "--dump-dom", f"{sidecar.admin_url}/")
        screenshot = tmp_path / "sidecar-no-reference.png"
        _chromium(tmp_path, FIRST_LOAD, "--window-size=1280,1200", f"--screenshot={screenshot}",
                  f"{sidecar.admin_url}/")  # fmt: skip

    assert re.search(r"<tr><td>proxy error</td><td>upstream_connect_failure</td><td>3</td></tr>", dom)
    assert _banner_shown(dom)
    banner = re.search(r'<div id="no-reference".*?</div>', dom, flags=re.DOTALL)
    assert banner is not None
    assert "modeltap profile train.csv -o reference.json --prediction prediction" in banner.group(0)
    assert "--reference reference.json" in banner.group(0)
    assert 'id="error"></span>' in dom
    _keep_screenshot(screenshot, "sidecar-no-reference.png")
