#!/usr/bin/env python3
"""Hostile and heavy traffic through `modeltap sidecar`: what it costs in memory, view size and
CPU, before and after. Three scenarios, each on a fresh sidecar process in front of a real
uvicorn upstream that answers 404 to unknown model names and 200 to everything else:

* `names`: requests to `/v2/models/<random>/infer` (3000 distinct names, 20 features each),
  answered 404 (issue "trust", item 3);
* `keys`: rows of 1100 random keys to a JSON endpoint that answers 200 (item 4);
* `bodies`: 965 KB KServe V1 bodies, just under the 1 MiB decode cap (item 5);
* `normal`: the baseline, `/v2/models/known/infer` with 20 features, answered 200.

Traffic runs at RATE requests/s for SECONDS from 4 client threads. Printed per scenario: the
RSS of the sidecar's data plane (the serving process) and, in process mode, of its monitor, each
before, at its peak and 10 s after the traffic (sampled every 0.5 s), the size and render time of
`/status` and `/metrics` after the traffic, the CPU seconds of each during the 10 s after the
traffic (analysis catching up), p99 of the proxied requests, and the identities and features in
`/status`. `--monitor inline` runs the analysis inside the data plane instead (the mode before the
monitor process).

usage: python bench/hostile_traffic.py [SCENARIO ...] [--rate 100] [--seconds 30] [--monitor inline]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
from process_probes import children_running, cpu_s, free_port, rss_mib, wait_http

UPSTREAM_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    path = scope["path"]
    if path.startswith("/v2/models/") and not path.startswith("/v2/models/known/"):
        status, body = 404, b'{"error": "model not found"}'
    else:
        status, body = 200, b'{"predictions": [0.5], "model_version": "v1"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


def bodies(scenario: str, count: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(1)
    out: list[tuple[str, bytes]] = []
    if scenario == "normal":
        for _ in range(count):
            data = rng.normal(size=20).round(4).tolist()
            body = {"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "data": data}]}
            out.append(("/v2/models/known/infer", json.dumps(body).encode()))
    elif scenario == "names":
        for i in range(count):
            data = rng.normal(size=20).round(4).tolist()
            body = {"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "data": data}]}
            out.append(
                (f"/v2/models/m-{i % 3000:04d}-{rng.integers(1 << 30):x}/infer", json.dumps(body).encode())
            )
    elif scenario == "keys":
        for _ in range(count):
            row = {f"k{key:x}": 1.0 for key in rng.integers(0, 2**62, 1100)}
            out.append(("/score", json.dumps([row]).encode()))
    else:
        row_text = json.dumps(rng.normal(size=30).round(6).tolist())
        rows = (965 * 1024 - 20) // (len(row_text) + 2)
        body = ('{"instances": [' + ",".join([row_text] * rows) + "]}").encode()
        out = [("/v1/models/big:predict", body)] * min(count, 50)
    return out


def post(port: int, path: str, body: bytes) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"content-type": "application/json"}
    )
    try:
        urllib.request.urlopen(request, timeout=30).read()
    except urllib.error.HTTPError as error:
        error.read()
    return time.perf_counter() - started


def run(scenario: str, rate: float, seconds: float, python: str, monitor: str) -> dict[str, object]:
    work = tempfile.mkdtemp(prefix="modeltap-hostile-")
    app_file = os.path.join(work, "upstream_app.py")
    with open(app_file, "w") as handle:
        handle.write(UPSTREAM_APP)
    up_port, port, admin_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MODELTAP_"))}
    env["MODELTAP_MONITOR"] = monitor
    env["MODELTAP_RUN_DIR"] = os.path.join(work, "run")
    upstream = subprocess.Popen(
        [python, "-m", "uvicorn", "upstream_app:app", "--port", str(up_port), "--log-level", "warning"],
        cwd=work,
        env=env,
    )
    sidecar = subprocess.Popen(
        [python, "-m", "modeltap.cli", "sidecar", "--upstream", f"http://127.0.0.1:{up_port}",
         "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin_port),
         "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{admin_port}/healthz")
        wait_http(f"http://127.0.0.1:{up_port}/")
        total = int(rate * seconds)
        work_items = bodies(scenario, total)
        post(port, *work_items[0])
        time.sleep(1.0)
        pids = {"serving": sidecar.pid}
        if monitor == "process":
            (pids["monitor"],) = children_running(sidecar.pid, "modeltap.monitor")
        baseline = {name: rss_mib(pid) for name, pid in pids.items()}
        peak = dict(baseline)

        def sample() -> None:
            for name, pid in pids.items():
                peak[name] = max(peak[name], rss_mib(pid))

        latencies: list[float] = []
        lock = threading.Lock()
        next_index = [0]
        started = time.monotonic()

        def client() -> None:
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= total:
                    return
                due = started + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elapsed = post(port, *work_items[i % len(work_items)])
                with lock:
                    latencies.append(elapsed)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            sample()
            time.sleep(0.5)
        cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
        after_deadline = time.monotonic() + 10.0
        while time.monotonic() < after_deadline:
            sample()
            time.sleep(0.5)
        cpu_after = {name: round(cpu_s(pid) - cpu_before[name], 2) for name, pid in pids.items()}
        views = {}
        for view in ("status", "metrics"):
            t0 = time.perf_counter()
            data = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/{view}", timeout=120).read()
            views[view] = (len(data), time.perf_counter() - t0, data)
        status = json.loads(views["status"][2])
        return {
            "scenario": scenario,
            "monitor": monitor,
            "requests": total,
            "rss_mib": {
                name: (round(baseline[name], 1), round(peak[name], 1), round(rss_mib(pid), 1))
                for name, pid in pids.items()
            },
            "status_bytes": views["status"][0],
            "status_s": round(views["status"][1], 3),
            "metrics_bytes": views["metrics"][0],
            "metrics_s": round(views["metrics"][1], 3),
            "cpu_s_in_10s_after": cpu_after,
            "p99_ms": round(1000 * float(np.quantile(latencies, 0.99)), 1),
            "identities": len(status["models"]),
            "features": sum(len(m["features"]) for m in status["models"]),
            "seen": status["requests"]["total"],
            "payload_stride": status["monitoring"]["payload_sampling_stride"],
        }
    finally:
        for process in (sidecar, upstream):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=["normal", "names", "keys", "bodies"])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--monitor", choices=["process", "inline"], default="process")
    args = parser.parse_args()
    for scenario in args.scenarios:
        print(json.dumps(run(scenario, args.rate, args.seconds, args.python, args.monitor)), flush=True)


if __name__ == "__main__":
    main()
