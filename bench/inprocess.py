#!/usr/bin/env python3
"""What the serving thread pays per request, without a server: the reference app's ASGI stack
(`apps.py`, Starlette) called in a loop in one process, CPU time of that thread only
(`time.thread_time`), best of 5 passes of 20 000 requests (in batches of 200, paused between
batches so that the monitor keeps up and every exchange is captured; `MODELTAP_WORKER_CPU_BUDGET`
1.0 unless set: every payload decoded). No sockets, no load generator: the
figure moves far less between runs than requests/s, and a change of a fraction of a microsecond
on the request path shows. Caches are warm here; under a real server the same code costs two to
three times more (bench/README.md), so read the differences, not the absolute figures.

Each variant runs in its own process, pinned to core 0 (the monitor process and an OTLP sink on
core 1), in interleaved rounds.

usage: inprocess.py [NAME=ENV_ASSIGNMENTS ...]
       default variants: bare=APP=bare  modeltap=APP=modeltap  traced=APP=modeltap_traced
       e.g. compare another checkout: "before=APP=modeltap PYTHONPATH=/path/to/old/src"
env:   ROUNDS (3), N (20000), WORKLOAD (ref: the reference app; lr: the logistic regression,
       30 features x 8 rows, needs scikit-learn), LOADED=1: the regime of a server under
       sustained load, where the monitor's CPU budget keeps 1 payload in up to 256 (a budget
       it always exceeds, and 15 s of requests first for the stride to climb there), as in
       every throughput run; without it every payload is kept. COLD_KB=1024: copy that much
       memory before each request, as the kernel, the load generator and the monitor evict the
       caches between a real server's requests, and time each request alone (wall clock, the
       mean of the fastest nine tenths): what a change of the memory a request touches costs
       under wrk, which warm caches hide (bench/README.md)
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# WORKLOAD: the module, the request body (wrk's Lua script) and the reference profile.
WORKLOADS = {"ref": ("apps", "post.lua", "ref10.json"), "lr": ("apps_lr", "post_lr8.lua", "ref30.json")}


def workload() -> tuple[str, bytes, Path]:
    module, lua, reference = WORKLOADS[os.environ.get("WORKLOAD", "ref")]
    match = re.search(r"""^wrk\.body\s*=\s*(["'])(.*)\1\s*$""", (HERE / lua).read_text(), re.MULTILINE)
    assert match is not None, f"no wrk.body in {lua}"
    return module, match.group(2).replace('\\"', '"').encode(), HERE / reference


DEFAULT = ["bare=APP=bare", "modeltap=APP=modeltap", "traced=APP=modeltap_traced"]


def request_driver(app: Any, body: bytes) -> Callable[[], None]:
    """One call: one POST /predict with `body` through `app`, answered at once (no server)."""
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
    ]
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, object]:
        return message

    async def send(message: dict[str, object]) -> None:
        pass

    def one() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "POST",
            "root_path": "",
            "path": "/predict",
            "raw_path": b"/predict",
            "query_string": b"",
            "headers": headers,
        }
        call = app(scope, receive, send)
        try:
            call.send(None)
        except StopIteration:
            return
        raise SystemExit("the app suspended: this harness only drives apps that answer at once")

    return one


def loaded() -> bool:
    return os.environ.get("LOADED", "") not in ("", "0")


def child() -> None:
    """Drive the app; print the best µs of thread CPU per request."""
    sys.path.insert(0, str(HERE))
    module, body, _ = workload()
    app = importlib.import_module(module).app  # the variant comes from APP
    one = request_driver(app, body)
    cold_kb = int(os.environ.get("COLD_KB", "0"))
    durations: list[int] = []
    if cold_kb > 0:
        one = cache_evicting(one, cold_kb, durations)

    for _ in range(3000):  # warm-up, and the first request starts modeltap (and its monitor)
        one()
    if loaded():  # the payload stride climbs, window by window, while the budget is exceeded
        climbed = time.monotonic() + 15.0
        while time.monotonic() < climbed:
            for _ in range(200):
                one()
            time.sleep(0.005)
    time.sleep(1.0)
    # The loop runs requests three times faster than a server would: in batches, with a pause
    # after each, so that the monitor keeps up and everything is captured (an overloaded tap
    # samples, which is cheaper and not what is measured here). Checked after every batch.
    middleware = getattr(getattr(app, "middleware_stack", None), "app", None)  # Starlette's stack
    sampling = getattr(getattr(middleware, "tap", None), "sampling", None)
    n = int(os.environ.get("N", "20000"))
    batch = 200
    best = float("inf")
    sampled = 0
    durations.clear()  # those of the warm-up
    for _ in range(5):
        spent = 0.0
        for _ in range(max(1, n // batch)):
            started = time.thread_time()
            for _ in range(batch):
                one()
            spent += time.thread_time() - started
            payloads_sampled = sampling is not None and sampling.payload_stride > 1
            if sampling is not None and (sampling.stride > 1 or payloads_sampled != loaded()):
                sampled += 1
            time.sleep(0.01)
        best = min(best, spent / (max(1, n // batch) * batch) * 1e6)
    if durations:  # COLD_KB: each request's own time, the copies before them left out
        durations.sort()
        fastest = durations[: max(1, len(durations) * 9 // 10)]
        best = sum(fastest) / len(fastest) / 1000
    print(f"{best:.3f} {sampled}")


def cache_evicting(one: Callable[[], None], kilobytes: int, durations: list[int]) -> Callable[[], None]:
    """`one`, after copying `kilobytes` of memory (evicting the caches), its time noted in ns."""
    memory = bytearray(kilobytes * 1024)
    clock = time.perf_counter_ns

    def cold() -> None:
        bytes(memory)
        started = clock()
        one()
        durations.append(clock() - started)

    return cold


def start_sink(pin: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """The local OTLP sink the monitor exports to (`otlp_sink.py`), and its port."""
    port = free_port()
    sink = subprocess.Popen(
        [*pin, sys.executable, str(HERE / "otlp_sink.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return sink, port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    variants = [arg.split("=", 1) for arg in (sys.argv[1:] or DEFAULT)]
    rounds = int(os.environ.get("ROUNDS", "3"))
    pinned = shutil.which("taskset") is not None
    pin, sink_pin = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if pinned else ([], [])
    _, _, reference = workload()
    if not reference.exists():  # as run_monitor.sh writes them
        make = {
            "ref10.json": [[sys.executable, "make_reference.py", "ref10.json", "10"]],
            "ref30.json": [
                [sys.executable, "make_ref30.py"],
                [sys.executable, "-m", "modeltap.cli", "profile", "ref30.csv", "-o", "ref30.json"],
            ],
        }
        for command in make[reference.name]:
            subprocess.run(command, cwd=HERE, check=True, stdout=subprocess.DEVNULL)
    sink, port = start_sink(sink_pin)
    run_dir = tempfile.mkdtemp(prefix="mt-inproc-")
    results: dict[str, list[float]] = {name: [] for name, _ in variants}
    try:
        for _ in range(rounds):
            for name, assignments in variants:
                env = {
                    # every payload decoded (the full path), or one in up to 256 (LOADED)
                    "MODELTAP_WORKER_CPU_BUDGET": "0.0001" if loaded() else "1.0",
                    **os.environ,
                    "MODELTAP_MONITOR_CPUS": "1",
                    "MODELTAP_RUN_DIR": run_dir,
                    "MODELTAP_BENCH_OTLP": f"http://127.0.0.1:{port}",
                    "MODELTAP_BENCH_REFERENCE": str(reference),
                }
                env.update(dict(item.split("=", 1) for item in shlex.split(assignments)))
                out = subprocess.run(
                    [*pin, sys.executable, __file__, "--child"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                figure, sampled = out.stdout.strip().splitlines()[-1].split()
                results[name].append(float(figure))
                if int(sampled):
                    why = (
                        "all payloads kept, or exchanges left out" if loaded() else "the monitor fell behind"
                    )
                    print(f"{name}: {sampled} batches not in the regime measured ({why})")
    finally:
        sink.terminate()
        shutil.rmtree(run_dir, ignore_errors=True)
    base = statistics.median(results[variants[0][0]])
    for name, _ in variants:
        value = statistics.median(results[name])
        runs = " ".join(f"{v:.2f}" for v in results[name])
        print(
            f"{name:<12} {value:7.2f} µs/request  (+{value - base:5.2f} over {variants[0][0]})   runs: {runs}"
        )


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child()
    else:
        main()
