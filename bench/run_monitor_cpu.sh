#!/bin/bash
# CPU per exchange, all included (the serving process's threads and its monitor process), for the
# bare app, inline analysis and the monitor process, under the same wrk load as run_monitor.sh:
# the shared reference app (10-feature reference) and the logistic regression (30 features x 8
# rows, 30-feature reference). Servers on core 0, wrk, the OTLP sink and the monitor on core 1.
# Needs: pip install -e '.[bench]', Debian's wrk.
# usage: PY=$PWD/.venv/bin/python bench/run_monitor_cpu.sh
set -eu
PY=${PY:-python3}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # the script works from bench/
cd "$(dirname "$0")"
tmp=$(mktemp -d)
export MODELTAP_MONITOR_CPUS=1 MODELTAP_RUN_DIR="$tmp/run"
export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18200 OTEL_METRIC_EXPORT_INTERVAL=5000
[ -f ref30.json ] || { "$PY" make_ref30.py && "$PY" -m modeltap.cli profile ref30.csv -o ref30.json >/dev/null; }
[ -f ref10.json ] || "$PY" make_reference.py ref10.json 10 >/dev/null
taskset -c 1 "$PY" otlp_sink.py 18200 >/dev/null 2>&1 &
pids=$!
trap 'kill $pids 2>/dev/null; rm -rf "$tmp"' EXIT
S="--log-level error --no-access-log --loop uvloop --http httptools"
start() {  # start PORT MODULE APP REFERENCE: prints the server's pid
  APP=$3 MODELTAP_BENCH_REFERENCE=$4 taskset -c 0 "$PY" -m uvicorn "$2:app" --port "$1" $S >/dev/null 2>&1 &
  echo $!
}
b=$(start 18401 apps bare ref10.json); i=$(start 18402 apps modeltap_inline ref10.json)
p=$(start 18403 apps modeltap ref10.json)
lb=$(start 18411 apps_lr bare ref30.json); li=$(start 18412 apps_lr modeltap_inline ref30.json)
lp=$(start 18413 apps_lr modeltap ref30.json)
pids="$pids $b $i $p $lb $li $lp"
sleep 5
# Warm-up, not reported: the first requests start each monitor (imports, the reference).
for port in 18401 18402 18403 18411 18412 18413; do
  taskset -c 1 wrk -t1 -c4 -d2s -s post_lr8.lua "http://127.0.0.1:$port/predict" >/dev/null 2>&1 || true
done
for _ in 1 2; do
  echo "== shared reference app"
  "$PY" cpu_per_request.py "bare=18401:$b" "inline=18402:$i" "process=18403:$p"
  echo "== logistic regression, 30 features x 8 rows"
  LUA=post_lr8.lua "$PY" cpu_per_request.py "bare=18411:$lb" "inline=18412:$li" "process=18413:$lp"
done
