#!/bin/bash
# What each layer of the sidecar's data path costs, side by side in one run (ratios to nginx
# proxy_pass in front of the same upstream; upstream and proxies on core 0, wrk, the OTLP sink and
# the sidecar's monitor on core 1, as in run_proxy.sh). Rows: the leanest uvicorn-hosted proxy,
# the same behind the sidecar's client protocol, the sidecar's ProxyApp with uvicorn's protocol and
# with its own, the sidecar with monitoring off, and with full monitoring (see sidecar_layers.py).
# Needs Debian's wrk and nginx-light.   usage: PY=.venv/bin/python bench/run_sidecar_layers.sh
# Env: ROUNDS (5), DUR (3 s).
set -eu
PY=${PY:-python3}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # the script works from bench/
cd "$(dirname "$0")"
BIN=$(dirname "$PY")
tmp=$(mktemp -d)
export MODELTAP_MONITOR_CPUS=1 MODELTAP_RUN_DIR="$tmp"
"$PY" make_reference.py "$tmp/reference.json" 10 >/dev/null
APP=bare taskset -c 0 "$PY" -m uvicorn apps:app --port 18099 --log-level error --no-access-log \
  --loop uvloop --http httptools >/dev/null 2>&1 &
upstream=$!
taskset -c 1 "$PY" otlp_sink.py 18200 >/dev/null 2>&1 &
sink=$!
trap 'kill $upstream $sink 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 2
L="taskset -c 0 $PY sidecar_layers.py"
S="taskset -c 0 $BIN/modeltap sidecar --upstream http://127.0.0.1:18099 --host 127.0.0.1 --port {port} --log-level warning"
OTLP="OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18200 OTEL_METRIC_EXPORT_INTERVAL=5000"
"$PY" abbench.py "nginx=./nginx-proxy.sh {port} 18099" \
  "lean=$L lean {port}" "lean_guarded=$L lean_guarded {port}" \
  "proxy=$L proxy {port}" "proxy_guarded=$L proxy_guarded {port}" \
  "sidecar_off=MODELTAP_ENABLED=false $S --admin-port 18311" \
  "sidecar=$OTLP $S --admin-port 18312 --reference $tmp/reference.json --model-name bench"
