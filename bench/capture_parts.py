#!/usr/bin/env python3
"""Build a copy of modeltap whose compiled capture can leave parts out, for `run_capture_parts.sh`.

The serving core's cost of modeltap is the capture's work per exchange, done in C
(`_speedups.c`). To see what each part of it costs under load, this copies `src/` to a folder,
edits the copy's `_speedups.c` so that `MODELTAP_BENCH_SKIP` (a bit mask, read once) turns parts
off, and builds the extension there. The edits are made only in the copy: the shipped extension
has no such switch. Each edit names the code it changes, and stops with an error naming it when
that code has changed, rather than measuring something else.

  1   record    no record is encoded or offered (the exchange ends before `encode_fields`)
  2   receive   the app gets the server's own `receive` (no request size, no disconnect)
  4   send      the app gets the server's own `send` (no status, timings, response size)
  8   trace     no trace decision (no exchange traced)
  32  exchange  the exchange object awaits the app, and does nothing else
  64  dispatch  the middleware's compiled call admits the exchange, then calls the app itself

Two more bits turn no part off: they bound what a cheaper record could gain (`BOUNDS=1`):

  128 encoded once   every exchange offers the bytes of the first plain record encoded after
                     the cold start (no payload, no trace, no error): the shipper and the
                     monitor get valid records, the serving thread encodes nothing more
  256 plain uncounted  an exchange with no payload kept, no trace and no error ends before its
                     record: only those the monitor reads beyond counts and timings are encoded

usage: capture_parts.py FOLDER   (then PYTHONPATH=FOLDER/src MODELTAP_BENCH_SKIP=N ...)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (what the edit does, the code it anchors on, what replaces that code)
EDITS = [
    (
        "the switch",
        "static double perf_now(void) {",
        "static int bench_skip_mask = -1;\n"
        "static int bench_skip(int part) {\n"
        "    if (bench_skip_mask < 0) {\n"
        '        const char *mask = getenv("MODELTAP_BENCH_SKIP");\n'
        "        bench_skip_mask = mask != NULL ? atoi(mask) : 0;\n"
        "    }\n"
        "    return bench_skip_mask & part;\n"
        "}\n"
        "static double perf_now(void) {",
    ),
    (
        "1 and 256: no record (256: for a plain exchange, no payload kept and no trace)",
        "    Py_ssize_t cap = capture->cap;\n    Py_ssize_t kept =",
        "    int bench_plain = !self->payload_weight && (self->ids == NULL || self->ids == Py_None) &&\n"
        "                      exception == NULL;\n"
        "    if (bench_skip(1) || (bench_skip(256) && bench_plain)) {\n"
        "        Py_DECREF(exception_type);\n"
        "        if (pending != NULL) {\n"
        "            restore_exception(pending);\n"
        "        }\n"
        "        return;\n"
        "    }\n"
        "    Py_ssize_t cap = capture->cap;\n    Py_ssize_t kept =",
    ),
    (
        "128: every record the first one's bytes",
        "        record = encode_fields((EncoderObject *)capture->encoder, &fields);\n",
        "        static PyObject *bench_first_record = NULL;\n"
        "        if (bench_skip(128) && bench_first_record != NULL) {\n"
        "            record = Py_NewRef(bench_first_record);\n"
        "        } else {\n"
        "            record = encode_fields((EncoderObject *)capture->encoder, &fields);\n"
        "            if (bench_skip(128) && record != NULL && bench_plain && capture->cold_left == 0) {\n"
        "                bench_first_record = Py_NewRef(record);\n"
        "            }\n"
        "        }\n",
    ),
    (
        "2 and 4: the server's own receive and send",
        "PyObject *app_args[3] = {self->scope, (PyObject *)receive, (PyObject *)state};",
        "PyObject *app_args[3] = {self->scope, bench_skip(2) ? self->receive : (PyObject *)receive,\n"
        "                             bench_skip(4) ? self->send : (PyObject *)state};",
    ),
    (
        "8: no trace decision",
        "    } else if (capture->start_trace != Py_None) {",
        "    } else if (capture->start_trace != Py_None && !bench_skip(8)) {",
    ),
    (
        "32: the exchange awaits the app, nothing else",
        "static int exchange_start(ExchangeObject *self) {\n"
        "    CaptureObject *capture = self->capture;\n"
        "    self->phase = 1;\n",
        "static int exchange_start(ExchangeObject *self) {\n"
        "    CaptureObject *capture = self->capture;\n"
        "    self->phase = 1;\n"
        "    if (bench_skip(32)) {\n"
        "        PyObject *app_args[3] = {self->scope, self->receive, self->send};\n"
        "        PyObject *awaitable = PyObject_Vectorcall(capture->app, app_args, 3, NULL);\n"
        "        if (awaitable == NULL) {\n"
        "            return -1;\n"
        "        }\n"
        "        self->inner = awaitable_iterator(awaitable);\n"
        "        Py_DECREF(awaitable);\n"
        "        return self->inner == NULL ? -1 : 0;\n"
        "    }\n",
    ),
    (
        "64: the dispatch calls the app",
        "    if (weight) {\n        return capture_exchange(",
        "    if (weight && !bench_skip(64)) {\n        return capture_exchange(",
    ),
]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = Path(sys.argv[1]).resolve()
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(ROOT / "src", folder / "src", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, folder / name)
    source = folder / "src" / "modeltap" / "_speedups.c"
    text = source.read_text()
    for what, anchor, replacement in EDITS:
        if text.count(anchor) != 1:
            sys.exit(f"capture_parts.py: what edit '{what}' changes is not in _speedups.c once: update EDITS")
        text = text.replace(anchor, replacement)
    source.write_text(text)
    # A failed compile must fail here, not leave the copy without its extension.
    environ = {**os.environ, "MODELTAP_REQUIRE_SPEEDUPS": "1"}
    build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    subprocess.run(build, cwd=folder, env=environ, check=True)
    shutil.rmtree(folder / "build", ignore_errors=True)
    print(f"built: PYTHONPATH={folder / 'src'} MODELTAP_BENCH_SKIP=<mask>")


if __name__ == "__main__":
    main()
