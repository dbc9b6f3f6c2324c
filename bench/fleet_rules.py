"""What the fleet rules cost Prometheus: rules, series, evaluation time per group.

Starts the real backends (`scripts/backends.sh up`, on ports from 30000), three replicas of a
30-feature endpoint monitored by modeltap (`ref30.json`: 30 numeric inputs) exporting every
second to the Collector, sends drifted traffic to all three, loads the rules `modeltap rules`
writes (windowed, then cumulative) and reads Prometheus's own numbers: the rule groups'
`evaluationTime`, the series the rules record, and the head series.

    .venv/bin/python bench/fleet_rules.py [--seconds 60] [--rate 60]

Prints a table; nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "bench" / "ref30.json"
BASE = 30000
UVICORN = [
    sys.executable,
    "-m",
    "uvicorn",
    "--factory",
    "fleet_rules:monitored_app",
    "--log-level",
    "warning",
]


def monitored_app() -> Any:
    """A 30-input scorer (a fixed linear model) inside ModelTapMiddleware (MODELTAP_* settings)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from modeltap import ModelTapMiddleware

    weights = np.linspace(-1.0, 1.0, 30)

    async def predict(request: Request) -> JSONResponse:
        rows = np.asarray((await request.json())["instances"], dtype=float)
        return JSONResponse({"predictions": (1 / (1 + np.exp(-rows @ weights))).round(6).tolist()})

    return ModelTapMiddleware(Starlette(routes=[Route("/v1/models/m:predict", predict, methods=["POST"])]))


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = _get(
        f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    )["data"]["result"]
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise SystemExit(f"replica on port {port} did not start")


def _measure(prometheus: str, rules_text: str, rules_path: Path, settle_s: float) -> dict[str, Any]:
    rules_path.write_text(rules_text)
    urllib.request.urlopen(urllib.request.Request(f"{prometheus}/-/reload", method="POST"), timeout=10)
    time.sleep(settle_s)
    samples: dict[str, list[float]] = {}
    per_rule: dict[str, list[float]] = {}
    for _ in range(10):
        for group in _get(f"{prometheus}/api/v1/rules")["data"]["groups"]:
            samples.setdefault(group["name"], []).append(float(group["evaluationTime"]))
            if group["name"] == "modeltap-fleet":
                for rule in group["rules"]:
                    per_rule.setdefault(rule["name"], []).append(float(rule["evaluationTime"]))
        time.sleep(1.0)
    groups = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    recorded = _query(prometheus, 'count({__name__=~"modeltap:.+"})')
    psi = _query(prometheus, "modeltap:feature_drift_psi")
    return {
        "rules": {g["name"]: len(g["rules"]) for g in groups},
        "evaluation_ms": {name: 1000 * statistics.median(v) for name, v in samples.items()},
        "recorded_series": int(float(recorded[0]["value"][1])) if recorded else 0,
        "psi_series": len(psi),
        "slowest": sorted(((1000 * statistics.median(v), k) for k, v in per_rule.items()), reverse=True)[:4],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="traffic before measuring (default 60)")
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second over all replicas")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modeltap-fleet-bench-"))
    rules_path = work / "rules.yml"
    rules_path.write_text("groups: []\n")
    env = {**os.environ, "MODELTAP_BACKENDS_RUN": str(work / "run"), "MODELTAP_BACKENDS_PORT_BASE": str(BASE)}
    script = str(ROOT / "scripts" / "backends.sh")
    subprocess.run(["bash", script, "build"], check=True, env=env)
    up = subprocess.run(["bash", script, "up", "--rules", str(rules_path)], check=True, env=env,
                        capture_output=True, text=True)  # fmt: skip
    urls = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
    prometheus = urls["PROMETHEUS_URL"]
    replicas: list[subprocess.Popen[bytes]] = []
    try:
        replica_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MODELTAP_"))},
            "OTEL_EXPORTER_OTLP_ENDPOINT": urls["OTLP_ENDPOINT"],
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "OTEL_TRACES_SAMPLER": "always_off",
            "MODELTAP_REFERENCE": str(REFERENCE),
            "MODELTAP_MODEL_NAME": "m",
            "MODELTAP_MODEL_VERSION": "1",
            "PYTHONPATH": str(ROOT / "bench"),
        }
        ports = [_free_port() for _ in range(3)]
        for i, port in enumerate(ports):
            replicas.append(
                subprocess.Popen(
                    [*UVICORN, "--port", str(port)],
                    env={**replica_env, "MODELTAP_RUN_DIR": str(work / f"replica{i}")},
                    start_new_session=True,
                )
            )
        for port in ports:
            _wait_port(port)
        rng = np.random.default_rng(1)
        shift = np.zeros(30)
        shift[:5] = 0.5  # five features drift
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < args.seconds:
            rows = rng.normal(size=(8, 30)) + shift
            body = json.dumps({"instances": rows.round(4).tolist()}).encode()
            port = ports[sent % 3]
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/m:predict", data=body,
                                             headers={"content-type": "application/json"})  # fmt: skip
            urllib.request.urlopen(request, timeout=10).read()
            sent += 1
            time.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
        results = {}
        for variant, extra in (("window 1m", []), ("cumulative", ["--cumulative"])):
            command = [sys.executable, "-m", "modeltap.cli", "rules", "--reference", str(REFERENCE)]
            text = subprocess.run(
                [*command, "--window", "1m", *extra], check=True, capture_output=True, text=True
            ).stdout
            results[variant] = _measure(prometheus, text, rules_path, settle_s=10.0)
        print(f"{sent} requests of 8 rows to 3 replicas; reference: 30 numeric features")
        for variant, result in results.items():
            print(f"\n{variant}:")
            print(f"  rules per group: {result['rules']}")
            print("  median evaluation time per group (ms): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in result["evaluation_ms"].items()))  # fmt: skip
            print(f"  series recorded by the rules: {result['recorded_series']} "
                  f"(PSI series: {result['psi_series']})")  # fmt: skip
            print("  slowest recording rules (ms): "
                  + ", ".join(f"{name} {ms:.1f}" for ms, name in result["slowest"]))  # fmt: skip
    finally:
        for replica in replicas:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(replica.pid, 15)
        for replica in replicas:
            replica.wait(20)
        subprocess.run(["bash", script, "down"], env=env, check=False, capture_output=True)


if __name__ == "__main__":
    main()
