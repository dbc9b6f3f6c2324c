#!/usr/bin/env python3
"""Soak (RELIABILITY.md H1/H2): the sidecar under mixed traffic for a while, with the OTLP
collector flapping, sampling its RSS, open fds and threads every 10 s.

Traffic (about 200 requests/s from 8 client threads): valid predictions, upstream 500s, requests
whose client disconnects mid-response, upstream timeouts (504), malformed bodies. The collector
(bench/otlp_sink.py) is stopped and started every 60 s. Prints one line per sample and, at the end,
the RSS slope after the first third (warm-up) in MiB per 10 minutes.

usage: python bench/soak_sidecar.py [MINUTES (default 30)]
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from process_probes import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
MINUTES = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
UPSTREAM_APP = """
import asyncio
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    await receive()
    if path == "/slow":
        await asyncio.sleep(2.0)
    status = 500 if path == "/fail" else 200
    body = b'{"predictions": [0.25], "model_version": "v1"}'
    if path == "/stream":
        start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        await send(start)
        for _ in range(50):
            await send({"type": "http.response.body", "body": b"x" * 4096, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


def sample(pid: int) -> tuple[float, int, int]:
    with open(f"/proc/{pid}/statm") as handle:
        rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return rss, len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def client(port: int, stop: threading.Event, counts: dict[str, int]) -> None:
    body = b'{"instances": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]]}'
    rng = random.Random()
    while not stop.is_set():
        kind = rng.choices(["ok", "fail", "disconnect", "timeout", "malformed"], [85, 5, 4, 1, 5])[0]
        try:
            if kind == "disconnect":
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
                    sock.recv(1024)
            else:
                path = {"fail": "/fail", "timeout": "/slow"}.get(kind, "/v1/models/m:predict")
                data = b'{"instances": [[1.0, "x"' if kind == "malformed" else body
                request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST")
                with urllib.request.urlopen(request, timeout=5) as answer:
                    answer.read()
            counts[kind] = counts.get(kind, 0) + 1
        except urllib.error.HTTPError as answer:  # the expected 500s and 504s land here
            key = f"{kind}_{answer.code}"
            counts[key] = counts.get(key, 0) + 1
        except (urllib.error.URLError, OSError):
            counts[kind + "_error"] = counts.get(kind + "_error", 0) + 1
        time.sleep(0.04)


def main() -> None:
    up_port, port, admin, sink_port = free_port(), free_port(), free_port(), free_port()
    workdir = tempfile.mkdtemp(prefix="modeltap-soak-")
    with open(os.path.join(workdir, "soak_upstream.py"), "w") as handle:
        handle.write(UPSTREAM_APP)
    python = sys.executable
    upstream = subprocess.Popen(
        [python, "-m", "uvicorn", "soak_upstream:app", "--port", str(up_port), "--log-level", "error"],
        cwd=workdir,
    )
    modeltap = os.path.join(os.path.dirname(python), "modeltap")
    env = dict(
        os.environ,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink_port}",
        OTEL_METRIC_EXPORT_INTERVAL="5000",
    )
    sidecar = subprocess.Popen(
        [
            modeltap,
            "sidecar",
            "--upstream",
            f"http://127.0.0.1:{up_port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--response-timeout-s",
            "1",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    sink: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    counts: dict[str, int] = {}
    try:
        time.sleep(3)
        threads = [threading.Thread(target=client, args=(port, stop, counts), daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        samples: list[tuple[float, float]] = []
        next_flap = started
        while time.monotonic() - started < MINUTES * 60:
            now = time.monotonic()
            if now >= next_flap:
                if sink is None:
                    sink = subprocess.Popen(
                        [python, os.path.join(HERE, "otlp_sink.py"), str(sink_port)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                else:
                    sink.terminate()
                    sink.wait()
                    sink = None
                next_flap = now + 60
            rss, fds, tasks = sample(sidecar.pid)
            elapsed = now - started
            samples.append((elapsed, rss))
            print(
                f"{elapsed:7.0f} s  rss {rss:7.1f} MiB  fds {fds:4d}  threads {tasks:3d}  "
                f"collector {'up' if sink else 'down'}  {dict(sorted(counts.items()))}",
                flush=True,
            )
            time.sleep(10)
        stop.set()
        warm = [(t, r) for t, r in samples if t >= MINUTES * 60 / 3]
        if len(warm) >= 2:
            slope = np.polyfit([t for t, _ in warm], [r for _, r in warm], 1)[0] * 600
            print(f"RSS slope after warm-up: {slope:+.2f} MiB per 10 min over {len(warm)} samples")
    finally:
        stop.set()
        for process in (sidecar, upstream, sink):
            if process is not None:
                process.terminate()
                process.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
