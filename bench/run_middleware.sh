#!/bin/bash
# Middleware overhead, side by side in one run: the bare app, the floor (one pass-through
# layer), the peers, and modeltap with full monitoring (10 % traces) and every request traced.
# OTLP goes to a local sink pinned to the load generator's core.
# Needs: pip install -e '.[bench]' and Debian's wrk.  usage: PY=.venv/bin/python bench/run_middleware.sh
# Env: ROUNDS (5), DUR (3 s), LUA=post30.lua for the 30-feature workload.
set -eu
PY=${PY:-python3}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # the script works from bench/
cd "$(dirname "$0")"
taskset -c 1 "$PY" otlp_sink.py 18200 >/dev/null 2>&1 &
sink=$!
trap 'kill $sink 2>/dev/null' EXIT
U="taskset -c 0 $PY -m uvicorn apps:app --port {port} --log-level error --no-access-log --loop uvloop --http httptools"
"$PY" abbench.py "bare=APP=bare $U" "noop=APP=noop $U" "capture=APP=capture $U" \
  "promexp=APP=promexp $U" "otel=APP=otel $U" "modeltap=APP=modeltap $U" \
  "modeltap_traced=APP=modeltap_traced $U" "$@"
