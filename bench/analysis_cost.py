#!/usr/bin/env python3
"""The monitor's analysis per record, without sockets: the workload's app (`apps.py`, or
`apps_lr.py`) is driven in process with modeltap in process mode, the RECORDS payloads its
shipper sends are kept, and a monitor-side `Analyzer` (not started: no export thread) takes them
back in a loop, as the monitor's analysis thread does (`framing.decode_grouped`, then
`Analyzer.process` per 256 records and `Analyzer.process_timed` for the groups). Prints µs of
thread CPU per record, best of 5 passes, for the hand-off's decoding alone
(`framing.decode_records`) and then, decoding included, with the records timed and counted only
grouped by shape as the monitor does, and one by one (`decode_records`, as before grouping):

  all       every payload decoded (a lightly loaded server)
  sampled   1 payload in 256 decoded, as the CPU budget sets it under sustained load: the
            per-record floor (identity, route, timing, the traced tenth's spans)
  untraced  the same with no span built (tracing off)

usage: analysis_cost.py     env: N (20000 records), WORKLOAD (ref | lr: the logistic regression,
                            30 features x 8 rows, needs scikit-learn), PROFILE=all|sampled|untraced
                            (cProfile of that pass, top 25 functions by own time)
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from inprocess import request_driver, workload  # noqa: E402  (the same workloads and requests)

PAYLOAD_WEIGHT, REQUEST_PARTS, RESPONSE_PARTS, TRACE = 17, 9, 11, 15


def collect(n: int) -> list[bytes]:
    """RECORDS payloads of `n` exchanges of the workload, as the shipper sends them."""
    from modeltap.handoff import framing
    from modeltap.handoff.shipper import Shipper

    payloads: list[bytes] = []
    send = Shipper._send

    def keep(self: Any, buffers: list[bytes], total: int = -1) -> None:
        joined = b"".join(buffers)
        _, kind = framing.FRAME.unpack_from(joined, 0)
        if kind == framing.RECORDS:
            payloads.append(joined[framing.FRAME.size :])
        send(self, buffers, total)

    Shipper._send = keep  # type: ignore[method-assign]
    module, body, _ = workload()
    app = importlib.import_module(module).app
    one = request_driver(app, body)

    one()
    time.sleep(2.0)  # the monitor starts; its first records are a warm-up
    payloads.clear()
    for i in range(n):
        one()
        if i % 200 == 199:
            time.sleep(0.005)  # no sampling: the monitor keeps up
    deadline = time.monotonic() + 10
    while sum(int.from_bytes(p[:4], "little") for p in payloads) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    # The serving side and its monitor are done: stopped, so they take nothing from the passes.
    middleware = getattr(getattr(app, "middleware_stack", None), "app", None)  # Starlette's stack
    tap = getattr(middleware, "tap", None)
    if tap is not None:
        tap.shutdown()
    return payloads


def main() -> None:
    n = int(os.environ.get("N", "20000"))
    run_dir = tempfile.mkdtemp(prefix="mt-analysis-")
    os.environ.setdefault("MODELTAP_RUN_DIR", run_dir)
    os.environ.setdefault("MODELTAP_WORKER_CPU_BUDGET", "1.0")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink_command = [sys.executable, str(HERE / "otlp_sink.py"), str(port)]
    sink = subprocess.Popen(sink_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ["MODELTAP_BENCH_OTLP"] = f"http://127.0.0.1:{port}"
    _, _, reference_path = workload()
    os.environ["MODELTAP_BENCH_REFERENCE"] = str(reference_path)
    os.environ.setdefault("APP", "modeltap")
    try:
        payloads = collect(n)
        time.sleep(6.0)  # the monitor flushes and leaves within 5 s of its last tap
    finally:
        sink.terminate()
        shutil.rmtree(run_dir, ignore_errors=True)

    from modeltap.config import ModelTapConfig
    from modeltap.handoff import framing
    from modeltap.reference import load_reference
    from modeltap.worker.analyzer import Analyzer

    reference = load_reference(str(reference_path))
    config = ModelTapConfig.from_env(model_name="bench")
    batches = [framing.decode_records(memoryview(p)) for p in payloads]
    total = sum(map(len, batches))
    print(f"{total} records in {len(batches)} payloads")
    # Every header name the records kept: re-encoded, they keep them all.
    names = {name for batch in batches for raw in batch for name, _ in [*raw[0]["headers"], *raw[8]]}
    encoder = framing.RecordEncoder(names, names)

    def sampled(batch: list[Any], traced: bool) -> bytes:
        """The batch as the shipper sends it under sustained load: 1 payload in 256 kept."""
        out = [framing.COUNT.pack(len(batch))]
        for i, raw in enumerate(batch):
            raw = list(raw)
            if i % 256:
                raw[PAYLOAD_WEIGHT], raw[REQUEST_PARTS], raw[RESPONSE_PARTS] = 0, [], []
            if not traced:
                raw[TRACE] = None
            encoder.encode_into(tuple(raw), out)
        return b"".join(out)

    best = float("inf")
    for _ in range(5):
        started = time.thread_time()
        for payload in payloads:
            framing.decode_records(memoryview(payload))
        best = min(best, (time.thread_time() - started) / total * 1e6)
    print(f"{'decode':<9} {best:6.2f} µs/record (framing.decode_records alone)")
    variants = {
        "all": payloads,
        "sampled": [sampled(b, True) for b in batches],
        "untraced": [sampled(b, False) for b in batches],
    }

    def analyse(analyzer: Analyzer, data: list[bytes], grouped: bool) -> None:
        """What the monitor's analysis thread does with each payload (`Monitor._process`)."""
        for payload in data:
            if grouped:
                records, groups = framing.decode_grouped(memoryview(payload))
            else:
                records, groups = framing.decode_records(memoryview(payload)), []
            for start in range(0, len(records), 256):
                analyzer.process(records[start : start + 256])
            analyzer.process_timed(groups)
        analyzer.pipeline.flush_pending()

    for name, data in variants.items():
        figures = []
        for grouped in (True, False):
            best = float("inf")
            for _ in range(5):
                analyzer = Analyzer(config, reference, mode="process")
                started = time.thread_time()
                analyse(analyzer, data, grouped)
                best = min(best, (time.thread_time() - started) / total * 1e6)
            figures.append(best)
        print(f"{name:<9} {figures[0]:6.2f} µs/record   (records one by one: {figures[1]:.2f})")
    if os.environ.get("PROFILE") in variants:
        import cProfile
        import pstats

        analyzer = Analyzer(config, reference, mode="process")
        profile = cProfile.Profile()
        profile.enable()
        analyse(analyzer, variants[os.environ["PROFILE"]], grouped=True)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
