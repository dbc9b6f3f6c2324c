#!/bin/bash
# What each part of the hand-off costs the serving core, side by side in one run (same setup as
# run_monitor.sh: the server pinned to core 0; wrk, the OTLP sink and the monitor on core 1):
# the bare app, modeltap disabled (the middleware's layer alone), full monitoring, and full
# monitoring with one part taken away (`parts/sitecustomize.py`): no shipper thread at all
# (records dropped at the queue), a shipper that discards what it drains (no monitor work), and
# the monitor under SCHED_IDLE. Reference app, then the logistic regression (WORKLOAD=lr only
# that one, WORKLOAD=ref only the first).
# Needs: pip install -e '.[bench]', Debian's wrk.  usage: PY=$PWD/.venv/bin/python bench/run_monitor_parts.sh
# Env: ROUNDS (7), DUR (3 s), WORKLOAD (both).
set -eu
PY=${PY:-python3}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # the script works from bench/
cd "$(dirname "$0")"
export ROUNDS=${ROUNDS:-7} MODELTAP_MONITOR_CPUS=1
export MODELTAP_RUN_DIR=${MODELTAP_RUN_DIR:-$(mktemp -d /tmp/mt-bench.XXXX)}
taskset -c 1 "$PY" otlp_sink.py 18200 >/dev/null 2>&1 &
sink=$!
trap 'kill $sink 2>/dev/null' EXIT
[ -f ref30.json ] || { "$PY" make_ref30.py && "$PY" -m modeltap.cli profile ref30.csv -o ref30.json >/dev/null; }
[ -f ref10.json ] || "$PY" make_reference.py ref10.json 10 >/dev/null
S="--log-level error --no-access-log --loop uvloop --http httptools"
P="PYTHONPATH=$PWD/parts"
parts() {  # parts MODULE REFERENCE
  local U="taskset -c 0 $PY -m uvicorn $1:app --port {port} $S"
  MODELTAP_BENCH_REFERENCE=$2 "$PY" abbench.py "bare=APP=bare $U" "disabled=MODELTAP_ENABLED=false APP=modeltap $U" \
    "process=APP=modeltap $U" "noship=$P MODELTAP_BENCH_PART=noship APP=modeltap $U" \
    "nosend=$P MODELTAP_BENCH_PART=nosend APP=modeltap $U" "idle=$P MODELTAP_BENCH_PART=idle APP=modeltap $U"
}
if [ "${WORKLOAD:-both}" != lr ]; then
  echo "== shared reference app, 16 connections (ratios to bare)"
  parts apps ref10.json
fi
if [ "${WORKLOAD:-both}" != ref ]; then
  echo "== logistic regression, 30 features x 8 rows, reference profile, 16 connections"
  LUA=post_lr8.lua parts apps_lr ref30.json
fi
