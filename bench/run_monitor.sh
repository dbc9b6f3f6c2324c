#!/bin/bash
# The monitor process against inline analysis and the bare app, side by side in one run
# (issue "monitor process"): the server pinned to core 0; wrk, the OTLP sink and the monitor
# (MODELTAP_MONITOR_CPUS=1) on core 1. Two workloads: the shared reference app (16 connections)
# and a scikit-learn logistic regression on 30 features, 8 rows a request, with a reference
# profile (16 connections, then 1 connection for p99).
# Needs: pip install -e '.[bench]', Debian's wrk.  usage: PY=$PWD/.venv/bin/python bench/run_monitor.sh
# Env: ROUNDS (5), DUR (3 s).
. "$(dirname "$0")/monitor_setup.sh"
echo "== shared reference app, 16 connections (ratios to bare)"
MODELTAP_BENCH_REFERENCE=ref10.json "$PY" abbench.py "bare=APP=bare $U" \
  "inline=APP=modeltap_inline $U" "process=APP=modeltap $U" "process_traced=APP=modeltap_traced $U"
echo "== logistic regression, 30 features x 8 rows, reference profile, 16 connections"
MODELTAP_BENCH_REFERENCE=ref30.json LUA=post_lr8.lua "$PY" abbench.py "bare=APP=bare $L" \
  "inline=APP=modeltap_inline $L" "process=APP=modeltap $L" "process_traced=APP=modeltap_traced $L"
echo "== logistic regression, 1 connection (p99)"
MODELTAP_BENCH_REFERENCE=ref30.json LUA=post_lr8.lua CONN=1 "$PY" abbench.py "bare=APP=bare $L" \
  "inline=APP=modeltap_inline $L" "process=APP=modeltap $L"
