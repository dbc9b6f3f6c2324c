#!/usr/bin/env python3
"""What the serving thread executes per request, counted rather than timed: the reference app's
ASGI stack (`apps.py`) called in a loop, as `inprocess.py` does, under Valgrind's callgrind, which
counts the instructions the thread runs and simulates its caches (first level 32 KiB instruction
and data, 8-way; last level 1 MiB, 8-way: this machine's per-core L2). Runs of one build in one
invocation agree within a hundred instructions per request (between invocations, or builds at
different paths, within about a thousand: the process's layout moves what collides in CPython's
method cache), where requests/s cannot resolve ten thousand (bench/README.md).

Only the measured loop counts: it starts with `sys.getrecursionlimit()` and ends with
`sys.setrecursionlimit()`, whose C functions (`Py_GetRecursionLimit`, `Py_SetRecursionLimit`,
exported by every CPython build) tell callgrind to zero its counters and to dump them. Only the
thread that serves is reported: the shipper thread batches by time, and a request takes 50 times
longer here than natively, so its count per request would say more about Valgrind than about
modeltap. The monitor process runs natively, uncounted, as on the other core of a real server.

What counting does not see: the kernel (system calls are not counted), the shipper thread (above),
and the time an instruction takes (a simulated miss is a count, not a latency).

A smaller last level (`LL_KB`) counts footprint rather than work: a line misses there when so
much else was reached since its last use that it was pushed out. A real server's per-core L2
also holds the kernel's network stack and, under `paired.py`, the other server; at 256 KiB the
bare app's loop misses about 1 050 lines a request and modeltap's about twice that. The count
is not linear in what a change adds (a working set near the level's size loses more than it
adds), so compare variants of one invocation, and read it beside the 1 MiB counts.

usage: instructions.py [NAME=ENV_ASSIGNMENTS ...]   (as inprocess.py; the first is the baseline)
       default variants: bare=APP=bare  modeltap=APP=modeltap  traced=APP=modeltap_traced
env:   N (2000 requests counted), WORKLOAD (ref | lr, as inprocess.py), PAYLOAD_STRIDE (256: as
       under sustained load, where the monitor's budget keeps 1 payload in up to 256; 1: every
       payload kept; the monitor's own changes are ignored), COLD_KB (as inprocess.py: that much
       memory copied before each request; the copy and its timing are counted too, alike in
       every variant: read the differences), LL_KB (1024: the simulated last level's size, a
       power of two, 16-way below 1 MiB), KEEP (a folder: the dumps are copied there, for
       callgrind_annotate)
needs: valgrind (Debian's `valgrind` package)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inprocess import HERE, cache_evicting, request_driver, start_sink, workload

DEFAULT = ["bare=APP=bare", "modeltap=APP=modeltap", "traced=APP=modeltap_traced"]
EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")
LL_KB = int(os.environ.get("LL_KB", "1024"))
# Valgrind wants a power of two of sets: 8 ways at 1 MiB (2 048 sets), 16 below (256 KiB: 256).
CACHES = ["--I1=32768,8,64", "--D1=32768,8,64", f"--LL={LL_KB * 1024},{8 if LL_KB >= 1024 else 16},64"]


def child() -> None:
    """Drive the app between the two markers; print the requests counted and the payload stride."""
    import importlib

    sys.path.insert(0, str(HERE))
    module, body, _ = workload()
    app = importlib.import_module(module).app
    one = request_driver(app, body)
    cold_kb = int(os.environ.get("COLD_KB", "0"))
    if cold_kb > 0:  # its timing of each request is counted too, alike in every variant
        one = cache_evicting(one, cold_kb, [])

    for _ in range(300):  # the first request starts modeltap and its monitor
        one()
    time.sleep(1.0)
    middleware = getattr(getattr(app, "middleware_stack", None), "app", None)
    tap = getattr(middleware, "tap", None)
    sampling = getattr(tap, "sampling", None)
    if tap is not None and sampling is not None:
        # The payload regime, fixed: under load the monitor's budget keeps 1 payload in up to 256
        # (`PAYLOAD_STRIDE`); the monitor's own changes of it are ignored from here on.
        sampling.payload_stride = int(os.environ.get("PAYLOAD_STRIDE", "256"))
        shipper = getattr(tap, "shipper", None)
        if shipper is not None:
            apply_control = shipper._on_control
            shipper._on_control = lambda control: apply_control(
                {key: value for key, value in control.items() if key != "payload_stride"}
            )
    n = int(os.environ.get("N", "2000"))
    limit = sys.getrecursionlimit()  # callgrind zeroes its counters here
    for _ in range(n):
        one()
    sys.setrecursionlimit(limit)  # and dumps them here
    stride = "-" if sampling is None else f"{sampling.stride}/{sampling.payload_stride}"
    print(f"{n} {stride}")


def counted(out_prefix: str) -> list[int]:
    """The dump's events (`EVENTS`) of the serving thread."""
    dumps = sorted(Path(out_prefix).parent.glob(Path(out_prefix).name + ".*"))
    if not dumps:
        sys.exit("callgrind dumped nothing: this Python has no symbol Py_GetRecursionLimit?")
    totals = [0] * len(EVENTS)
    for dump in dumps:
        text = dump.read_text(errors="replace")
        if not re.search(r"^desc: Trigger: --dump-before", text, re.MULTILINE):
            continue  # the part after the dump, up to the program's end
        events = re.search(r"^events: (.*)$", text, re.MULTILINE)
        summary = re.search(r"^summary: (.*)$", text, re.MULTILINE)
        thread = re.search(r"^thread: (\d+)$", text, re.MULTILINE)
        if thread is not None and thread.group(1) != "1":
            continue  # only the thread that serves: the others' share depends on timing
        if events is None or summary is None:
            sys.exit(f"{dump}: not a callgrind dump this script reads")
        values = dict(zip(events.group(1).split(), (int(v) for v in summary.group(1).split()), strict=False))
        for i, name in enumerate(EVENTS):
            totals[i] += values.get(name, 0)
    return totals


def main() -> None:
    if shutil.which("valgrind") is None:
        sys.exit("instructions.py needs valgrind (apt-get install valgrind)")
    variants = [arg.split("=", 1) for arg in (sys.argv[1:] or DEFAULT)]
    _, _, reference = workload()
    if not reference.exists():
        sys.exit(f"{reference.name} is missing: run inprocess.py or run_monitor.sh once first")
    pinned = shutil.which("taskset") is not None
    pin, sink_pin = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if pinned else ([], [])
    sink, port = start_sink(sink_pin)
    work = tempfile.mkdtemp(prefix="mt-instructions-")
    rows: list[tuple[str, int, str, list[int]]] = []
    try:
        for name, assignments in variants:
            env = {
                **os.environ,
                "PYTHONHASHSEED": "0",
                "MODELTAP_MONITOR_CPUS": "1",
                "MODELTAP_RUN_DIR": tempfile.mkdtemp(dir=work),
                "MODELTAP_BENCH_OTLP": f"http://127.0.0.1:{port}",
                "MODELTAP_BENCH_REFERENCE": str(reference),
            }
            env.update(dict(item.split("=", 1) for item in shlex.split(assignments)))
            prefix = os.path.join(work, f"cg.{name}")
            command = [
                *pin,
                "valgrind",
                "--tool=callgrind",
                "--cache-sim=yes",
                *CACHES,
                "--collect-atstart=yes",
                "--separate-threads=yes",
                "--zero-before=Py_GetRecursionLimit",
                "--dump-before=Py_SetRecursionLimit",
                f"--callgrind-out-file={prefix}.%p",
                sys.executable,
                __file__,
                "--child",
            ]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            served, stride = out.stdout.strip().splitlines()[-1].split()
            rows.append((name, int(served), stride, counted(prefix)))
    finally:
        sink.terminate()
        keep = os.environ.get("KEEP")
        if keep:  # the dumps, for callgrind_annotate
            Path(keep).mkdir(parents=True, exist_ok=True)
            for dump in Path(work).glob("cg.*"):
                shutil.copy(dump, keep)
        shutil.rmtree(work, ignore_errors=True)
    print(f"per request (serving thread); stride: 1 exchange, 1 payload kept in N; {' '.join(CACHES)}")
    heads = ("Ir", "Dr+Dw", "I1 miss", "D1 miss", "LL miss", "of code")
    print(f"{'variant':<12} {'stride':>7} " + " ".join(f"{head:>8}" for head in heads))
    base: tuple[float, ...] | None = None
    for name, requests, stride, totals in rows:
        per = dict(zip(EVENTS, (v / requests for v in totals), strict=True))
        figures = (
            per["Ir"],
            per["Dr"] + per["Dw"],
            per["I1mr"],
            per["D1mr"] + per["D1mw"],
            per["ILmr"] + per["DLmr"] + per["DLmw"],
            per["ILmr"],
        )
        line = f"{name:<12} {stride:>7} " + " ".join(f"{v:>8.0f}" for v in figures)
        if base is None:
            base = figures
        else:
            line += "   (" + " ".join(f"{v - b:+.0f}" for v, b in zip(figures, base, strict=True)) + ")"
        print(line)


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child()
    else:
        main()
