"""Run the demo: model server + modeltap + traffic, a live table, a summary, full clean-up."""

from __future__ import annotations

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

# Levels at or above this one are reported as detected drift.
ALERT_LEVELS = ("WARNING", "CRITICAL")


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


def _number(value: float | None, width: int, digits: int = 3) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"


def render_table(document: dict[str, Any], phase: str) -> str:
    latency = document["latency_s"]
    lines = [
        f"phase: {phase:<18} level: {document['level']:<9} requests: {document['requests']['total']:>6}  "
        f"errors: {document['requests']['errors']:>4}  dropped: {document['requests']['dropped']:>3}  "
        f"violations: {sum(document['violations'].values()):>4}",
    ]
    if latency["p50"] is not None:
        lines.append(
            f"latency p50 {latency['p50'] * 1000:6.2f} ms  p95 {latency['p95'] * 1000:6.2f} ms  "
            f"p99 {latency['p99'] * 1000:6.2f} ms  max {latency['max'] * 1000:6.2f} ms   "
            f"window {document['window_s']:g} s   model version {', '.join(document['model']['versions'])}"
        )
    lines.append(
        f"{'feature':<18}{'role':<8}{'window n':>9}{'mean':>10}{'PSI':>8}{'JS':>7}{'KS p':>10}  level"
    )
    for feature in document["features"]:
        pvalue = feature["ks_pvalue"] if feature["ks_pvalue"] is not None else feature["chi2_pvalue"]
        lines.append(
            f"{feature['name']:<18}{feature['role']:<8}{feature['window_count']:>9}"
            f"{_number(feature['mean'], 10)}{_number(feature['psi'], 8)}{_number(feature['js'], 7)}"
            f"{(f'{pvalue:10.1e}' if pvalue is not None else ' ' * 9 + '-')}  {feature['level'] or '-'}"
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

    env = dict(os.environ)
    if options.otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = options.otlp_endpoint
        env.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "5000")
    # A window of half the run, so the drifted phase is judged on its own.
    slot_s = max(1.0, options.duration_s / 12)
    config = ModelTapConfig.from_env(
        env, model_name=MODEL_NAME, reference=str(reference_path), window_slots=6, window_slot_s=slot_s
    )
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
    first_alert: dict[str, str] = {}
    started = time.monotonic()
    interactive = out.isatty()
    try:
        traffic.start()
        while traffic.is_alive():
            traffic.join(options.refresh_s)
            app.tap.flush(2.0)
            document = status_document(app.tap.latest_snapshot(), MODEL_NAME)
            for feature in document["features"]:
                if feature["level"] in ALERT_LEVELS and feature["name"] not in first_alert:
                    first_alert[feature["name"]] = (
                        f"{feature['level']} at {time.monotonic() - started:.0f} s ({stats.phase})"
                    )
            table = render_table(document, stats.phase)
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
    print(summarize(final, first_alert, stats), file=out)
    return final


def summarize(document: dict[str, Any], first_alert: dict[str, str], stats: TrafficStats) -> str:
    drifted = [f["name"] for f in document["features"] if f["level"] in ALERT_LEVELS]
    lines = [
        "",
        "summary",
        f"  requests sent: {stats.sent}, failed to send: {stats.failed}, "
        f"seen by modeltap: {document['requests']['total']}",
        f"  data-quality violations: {document['violations'] or 'none'}",
        f"  drift at the end (WARNING or CRITICAL): {', '.join(drifted) or 'none'}",
    ]
    for name, when in first_alert.items():
        lines.append(f"    {name}: first flagged {when}")
    return "\n".join(lines)
