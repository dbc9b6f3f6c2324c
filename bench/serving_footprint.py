#!/usr/bin/env python3
"""What a serving process carries: the workload's app imported and answering requests in one
process, bare, with modeltap in process mode (the default: the monitor process analyses) and
inline (the analysis in this process). Prints, per variant, the time to import the app and
answer its first request (when modeltap starts, and loads what it needs), the process's RSS, the
objects the garbage collector tracks (its full collections visit all of them) and the modules
loaded, after 3000 requests and a second for the monitor to start.

Each variant runs in its own process (a reference profile and OTLP export to a port nobody
listens on: exporting fails quietly, which is not what is measured).

usage: serving_footprint.py [NAME=ENV_ASSIGNMENTS ...]
       default variants: bare=APP=bare  process=APP=modeltap  inline=APP=modeltap_inline
env:   WORKLOAD (ref: the reference app; lr: the logistic regression, needs scikit-learn)
"""

from __future__ import annotations

import gc
import importlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = ["bare=APP=bare", "process=APP=modeltap", "inline=APP=modeltap_inline"]


def child() -> None:
    sys.path.insert(0, str(HERE))
    from inprocess import request_driver, workload

    module, body, _ = workload()
    started = time.perf_counter()
    app = importlib.import_module(module).app
    one = request_driver(app, body)
    one()
    imported = time.perf_counter() - started
    for _ in range(3000):
        one()
    time.sleep(1.0)
    with open("/proc/self/statm") as handle:
        rss = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    print(f"{imported:.2f} {rss:.1f} {len(gc.get_objects())} {len(sys.modules)}")


def main() -> None:
    variants = [arg.split("=", 1) for arg in (sys.argv[1:] or DEFAULT)]
    sys.path.insert(0, str(HERE))
    from inprocess import workload

    _, _, reference = workload()
    print(f"{'variant':<10} {'ready':>8} {'RSS':>10} {'objects':>9} {'modules':>8}")
    with tempfile.TemporaryDirectory(prefix="mt-footprint-") as run_dir:
        for name, assignments in variants:
            env = {
                **os.environ,
                "MODELTAP_RUN_DIR": run_dir,
                "MODELTAP_BENCH_OTLP": "http://127.0.0.1:9",
                "MODELTAP_BENCH_REFERENCE": str(reference),
            }
            env.update(dict(item.split("=", 1) for item in shlex.split(assignments)))
            out = subprocess.run(
                [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True
            )
            imported, rss, objects, modules = out.stdout.split()
            print(f"{name:<10} {float(imported):7.2f}s {float(rss):6.1f} MiB {objects:>9} {modules:>8}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child()
    else:
        main()
