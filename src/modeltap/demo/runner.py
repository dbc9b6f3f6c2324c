"""Run the demo: model server + modeltap + traffic, a live table, a summary, full clean-up."""

from __future__ import annotations

import math
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson
import uvicorn

from modeltap.config import ModelTapConfig
from modeltap.demo.model_server import FEATURES, MODEL_NAME, ChurnModel, build_app, training_data
from modeltap.demo.traffic import PHASES, TrafficStats, run_traffic
from modeltap.export.status_json import status_document
from modeltap.middleware import ModelTapMiddleware
from modeltap.stats.reference import numeric_profile_document

# A feature whose running mean moved this many reference standard deviations is reported.
SHIFT_ALERT_SIGMA = 0.25


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 30.0
    rate_per_s: float = 100.0
    port: int = 0
    otlp_endpoint: str | None = None
    refresh_s: float = 1.0
    workdir: str | None = None


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def _shift_sigma(feature: dict[str, Any], reference: dict[str, dict[str, float]]) -> float | None:
    ref = reference.get(feature["name"])
    if ref is None or feature.get("mean") is None or not ref.get("std"):
        return None
    return float(abs(feature["mean"] - ref["mean"]) / ref["std"])


def render_table(document: dict[str, Any], reference: dict[str, dict[str, float]], phase: str) -> str:
    lines = [
        f"phase: {phase:<18} requests: {document['requests']['total']:>6}  "
        f"errors: {document['requests']['errors']:>4}  dropped: {document['requests']['dropped']:>3}  "
        f"violations: {sum(document['violations'].values()):>4}",
    ]
    latency = document["latency_s"]
    if latency["mean"] is not None:
        lines.append(f"latency mean {latency['mean'] * 1000:7.2f} ms   max {latency['max'] * 1000:7.2f} ms")
    lines.append(
        f"{'feature':<18}{'role':<8}{'count':>8}{'missing':>9}{'mean':>11}{'ref mean':>11}{'shift sd':>9}"
    )
    for model in document["models"]:
        for feature in model["features"]:
            shift = _shift_sigma(feature, reference)
            mean = feature.get("mean")
            ref_mean = reference.get(feature["name"], {}).get("mean")
            lines.append(
                f"{feature['name']:<18}{feature['role']:<8}{feature['count']:>8}{feature['missing']:>9}"
                f"{'' if mean is None else f'{mean:11.3f}':>11}"
                f"{'' if ref_mean is None else f'{ref_mean:11.3f}':>11}"
                f"{'' if shift is None else f'{shift:9.2f}':>9}"
                + ("  <- moved" if shift is not None and shift > SHIFT_ALERT_SIGMA else "")
            )
    return "\n".join(lines)


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run the whole demo; returns the final status document (also used by tests)."""
    x, y = training_data()
    model = ChurnModel.train(x, y)
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="modeltap-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    reference_doc = numeric_profile_document(FEATURES, x, model_name=MODEL_NAME)
    reference_path = workdir / "reference.json"
    reference_path.write_bytes(orjson.dumps(reference_doc, option=orjson.OPT_INDENT_2))
    reference = {f["name"]: f for f in reference_doc["features"]}  # type: ignore[attr-defined]

    env = dict(os.environ)
    if options.otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = options.otlp_endpoint
        env.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "5000")
    config = ModelTapConfig.from_env(env, model_name=MODEL_NAME, reference=str(reference_path))
    app = ModelTapMiddleware(build_app(model), config=config)

    sock = _bind(options.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    server_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    server_thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    print(f"model server with modeltap on http://127.0.0.1:{port}", file=out)
    print(f"  status JSON:  http://127.0.0.1:{port}/modeltap/status", file=out)
    print(f"  Prometheus:   http://127.0.0.1:{port}/modeltap/metrics", file=out)
    print(f"  reference:    {reference_path}", file=out)
    phases = ", ".join(f"{p.name} ({p.share:.0%})" for p in PHASES)
    print(f"sending {options.rate_per_s:g} req/s for {options.duration_s:g} s: {phases}\n", file=out)

    stop = threading.Event()
    stats = TrafficStats()
    traffic = threading.Thread(
        target=run_traffic, args=(port, options.duration_s, options.rate_per_s, stop, stats), daemon=True
    )
    snapshots: dict[str, dict[str, Any]] = {}
    interactive = out.isatty()
    try:
        traffic.start()
        while traffic.is_alive():
            traffic.join(options.refresh_s)
            app.tap.flush(2.0)
            document = status_document(app.tap.latest_snapshot(), MODEL_NAME)
            snapshots[stats.phase] = document
            table = render_table(document, reference, stats.phase)
            if interactive:
                out.write("\x1b[H\x1b[2J" + table + "\n")
            else:
                out.write(table + "\n\n")
            out.flush()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=out)
    finally:
        stop.set()
        traffic.join(5)
        app.tap.flush(2.0)
        final = status_document(app.tap.latest_snapshot(), MODEL_NAME)
        server.should_exit = True
        server_thread.join(10)
        sock.close()
        app.tap.shutdown()
    print(summarize(final, reference, stats), file=out)
    return final


def summarize(document: dict[str, Any], reference: dict[str, dict[str, float]], stats: TrafficStats) -> str:
    moved = []
    for model in document["models"]:
        for feature in model["features"]:
            shift = _shift_sigma(feature, reference)
            if shift is not None and shift > SHIFT_ALERT_SIGMA and not math.isnan(shift):
                moved.append(f"{feature['name']} ({shift:.2f} sd)")
    lines = [
        "",
        "summary",
        f"  requests sent: {stats.sent}, failed to send: {stats.failed}, "
        f"seen by modeltap: {document['requests']['total']}",
        f"  data-quality violations: {document['violations'] or 'none'}",
        f"  features whose mean moved > {SHIFT_ALERT_SIGMA} reference sd: {', '.join(moved) or 'none'}",
    ]
    return "\n".join(lines)
