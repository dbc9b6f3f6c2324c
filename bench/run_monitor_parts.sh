#!/bin/bash
# What each part of the hand-off costs the serving core, side by side in one run (same setup as
# run_monitor.sh: the server pinned to core 0; wrk, the OTLP sink and the monitor on core 1):
# the bare app, modeltap disabled (the middleware's layer alone), full monitoring, and full
# monitoring with one part taken away (`parts/sitecustomize.py`): no shipper thread at all
# (records dropped at the queue), a shipper that discards what it drains (no monitor work), and
# the monitor under SCHED_IDLE; and full monitoring with tracing off (what the default tenth of
# traced exchanges costs). Reference app, then the logistic regression (WORKLOAD=lr only that
# one, WORKLOAD=ref only the first).
# Needs: pip install -e '.[bench]', Debian's wrk.  usage: PY=$PWD/.venv/bin/python bench/run_monitor_parts.sh
# Env: ROUNDS (7), DUR (3 s), WORKLOAD (both).
export ROUNDS=${ROUNDS:-7}
. "$(dirname "$0")/monitor_setup.sh"
P="PYTHONPATH=$PWD/parts"
parts() {  # parts SERVER REFERENCE
  MODELTAP_BENCH_REFERENCE=$2 "$PY" abbench.py "bare=APP=bare $1" "disabled=MODELTAP_ENABLED=false APP=modeltap $1" \
    "process=APP=modeltap $1" "noship=$P MODELTAP_BENCH_PART=noship APP=modeltap $1" \
    "nosend=$P MODELTAP_BENCH_PART=nosend APP=modeltap $1" "idle=$P MODELTAP_BENCH_PART=idle APP=modeltap $1" \
    "untraced=OTEL_TRACES_SAMPLER=always_off APP=modeltap $1"
}
if [ "${WORKLOAD:-both}" != lr ]; then
  echo "== shared reference app, 16 connections (ratios to bare)"
  parts "$U" ref10.json
fi
if [ "${WORKLOAD:-both}" != ref ]; then
  echo "== logistic regression, 30 features x 8 rows, reference profile, 16 connections"
  LUA=post_lr8.lua parts "$L" ref30.json
fi
