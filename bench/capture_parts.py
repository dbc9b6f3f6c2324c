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

Three more bits turn no part off: they bound what a cheaper record could gain (`BOUNDS=1`):

  128 encoded once   every exchange offers the bytes of the first plain record encoded after
                     the cold start (no payload, no trace, no error): the shipper and the
                     monitor get valid records, the serving thread encodes nothing more
  256 plain uncounted  an exchange with no payload kept, no trace and no error ends before its
                     record: only those the monitor reads beyond counts and timings are encoded
  512 plain folded   as 256 for an answered exchange (a status, an end, no disconnect) in
                     process mode, but only once its shape is read and found the previous plain
                     exchange's (the fields the monitor files a timed exchange by: path, method,
                     scheme, version, route template, proxy error, cold start, status, weight,
                     the first 7 wanted request and 7 wanted response header pairs): what
                     counting plain exchanges by shape in the serving process would cost it,
                     short of keeping the counts

One more asks where reading the record's fields costs least:

  1024 read early    the record encoded as the exchange starts, from the request alone (the
                     scope's fields and request headers, read while the server's writes are in
                     the cache; the bytes then dropped), and plain exchanges end before their
                     record at the end, as 256: against 256, what reading the request's share of
                     the record costs at the start rather than at the end

usage: capture_parts.py FOLDER   (then PYTHONPATH=FOLDER/src MODELTAP_BENCH_SKIP=N ...)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Mask 512's shape check: the fields of the previous plain exchange (new references), and the
# comparison with this one's. Written as a shipped form would read them: the scope's values,
# the route template as the encoder finds it, the wanted headers' values by the encoder's names.
BENCH_SHAPE = r"""
#define BENCH_SHAPE_FIELDS 24
static PyObject *bench_shape_previous[BENCH_SHAPE_FIELDS];
static int bench_shape_count = -1;

static int bench_wanted_values(PyObject *headers, PyObject *names, PyObject *wanted, PyObject **into, int at,
                               int limit) {
    if (headers == NULL || !PyList_Check(headers)) {
        return at;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers) && at < limit; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            continue;
        }
        int found = is_wanted(PyTuple_GET_ITEM(pair, 0), names, wanted);
        if (found < 0) {
            PyErr_Clear();
        } else if (found) {
            into[at++] = Py_NewRef(pair);  /* name and value */
        }
    }
    return at;
}

static int bench_same_shape(EncoderObject *encoder, PyObject *scope, PyObject *root_at_start, long status,
                            long weight, PyObject *response_headers) {
    PyObject *now[BENCH_SHAPE_FIELDS];
    int n = 0;
    /* A failed read is a field of its own (NULL: never the same), its error cleared at once. */
    now[n++] = scope_get(scope, s_path, s_empty);
    PyErr_Clear();
    now[n++] = scope_get(scope, s_method, s_GET);
    PyErr_Clear();
    now[n++] = scope_get(scope, s_scheme, s_http);
    PyErr_Clear();
    now[n++] = scope_get(scope, s_http_version, s_1_1);
    PyErr_Clear();
    now[n++] = route_template_of(encoder, scope, root_at_start);
    PyErr_Clear();
    now[n++] = scope_get(scope, encoder->proxy_error_key, Py_None);
    PyErr_Clear();
    now[n++] = PyBool_FromLong(is_true_value(scope, encoder->cold_start_key) > 0);
    PyErr_Clear();
    now[n++] = PyLong_FromLong(status);
    now[n++] = PyLong_FromLong(weight);
    PyErr_Clear();
    PyObject *headers = scope_get(scope, s_headers, Py_None);
    PyErr_Clear();
    n = bench_wanted_values(headers, encoder->request_names, encoder->request_wanted, now, n,
                            BENCH_SHAPE_FIELDS - 8);
    Py_XDECREF(headers);
    now[n++] = Py_NewRef(Py_None);  /* between the request's and the response's */
    n = bench_wanted_values(response_headers, encoder->response_names, encoder->response_wanted, now, n,
                            BENCH_SHAPE_FIELDS);
    int same = n == bench_shape_count;
    for (int i = 0; i < n; i++) {
        if (now[i] == NULL || (same && bench_shape_previous[i] == NULL)) {
            same = 0;
        } else if (same && PyObject_RichCompareBool(now[i], bench_shape_previous[i], Py_EQ) != 1) {
            same = 0;
        }
    }
    PyErr_Clear();
    for (int i = 0; i < bench_shape_count; i++) {
        Py_CLEAR(bench_shape_previous[i]);
    }
    for (int i = 0; i < n; i++) {
        bench_shape_previous[i] = now[i];
    }
    bench_shape_count = n;
    return same;
}

"""

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
        "512: the shape of a plain exchange, read and compared with the previous one's",
        "static void exchange_finish(ExchangeObject *self, PyObject *exception) {",
        BENCH_SHAPE + "static void exchange_finish(ExchangeObject *self, PyObject *exception) {",
    ),
    (
        "1, 256 and 512: no record (256: for a plain exchange, no payload kept and no trace; "
        "512: for one of the previous plain exchange's shape)",
        "    Py_ssize_t cap = capture->cap;\n    Py_ssize_t kept =",
        "    int bench_plain = !self->payload_weight && (self->ids == NULL || self->ids == Py_None) &&\n"
        "                      exception == NULL;\n"
        "    if (bench_skip(1) || (bench_skip(256 | 1024) && bench_plain) ||\n"
        "        (bench_skip(512) && bench_plain && state->status && state->ended >= 0 &&\n"
        "         !state->disconnected && capture->encoder != Py_None &&\n"
        "         bench_same_shape((EncoderObject *)capture->encoder, self->scope,\n"
        "                          self->root_path_at_start, state->status, self->weight,\n"
        "                          state->response_headers != NULL ? state->response_headers\n"
        "                                                          : no_headers))) {\n"
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
        "1024: the record's request fields encoded as the exchange starts",
        "    self->state = state;\n",
        "    self->state = state;\n"
        "    if (bench_skip(1024) && capture->encoder != Py_None) {\n"
        "        RecordFields early = {\n"
        "            .scope = self->scope, .root_path_at_start = self->root_path_at_start,\n"
        "            .start_ns = self->start_ns, .response_started = Py_NAN, .ended = Py_NAN,\n"
        "            .finished = 0.0, .first_body = Py_NAN, .status = 0, .request_size = -1,\n"
        "            .response_size = 0, .weight = self->weight, .payload_weight = self->payload_weight,\n"
        "            .disconnected = 0, .response_headers = no_headers, .request_parts = no_parts,\n"
        "            .response_parts = no_parts, .exception_type = Py_None,\n"
        "            .ids = self->ids != NULL ? self->ids : Py_None,\n"
        "        };\n"
        "        PyObject *early_record = encode_fields((EncoderObject *)capture->encoder, &early);\n"
        "        if (early_record == NULL) {\n"
        "            PyErr_Clear();\n"
        "        }\n"
        "        Py_XDECREF(early_record);\n"
        "    }\n",
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
