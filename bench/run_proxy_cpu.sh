#!/bin/bash
# CPU per proxied request (all threads of the proxy process), the same setup as run_proxy.sh:
# nginx, the sidecar's data path alone, and the sidecar with full monitoring; twice in rotation.
# usage: PY=.venv/bin/python bench/run_proxy_cpu.sh
set -eu
PY=${PY:-python3}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # the script works from bench/
cd "$(dirname "$0")"
BIN=$(dirname "$PY")
tmp=$(mktemp -d)
"$PY" make_reference.py "$tmp/reference.json" 10 >/dev/null
APP=bare taskset -c 0 "$PY" -m uvicorn apps:app --port 18099 --log-level error --no-access-log \
  --loop uvloop --http httptools >/dev/null 2>&1 &
pids=$!
taskset -c 1 "$PY" otlp_sink.py 18200 >/dev/null 2>&1 &
pids="$pids $!"
./nginx-proxy.sh 18110 18099 >/dev/null 2>&1 &
nginx=$!
pids="$pids $nginx"
S="taskset -c 0 $BIN/modeltap sidecar --upstream http://127.0.0.1:18099 --host 127.0.0.1 --log-level warning"
MODELTAP_ENABLED=false $S --port 18111 --admin-port 18311 >/dev/null 2>&1 &
proxy=$!
pids="$pids $proxy"
OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18200 OTEL_METRIC_EXPORT_INTERVAL=5000 \
  $S --port 18112 --admin-port 18312 --reference "$tmp/reference.json" >/dev/null 2>&1 &
sidecar=$!
pids="$pids $sidecar"
trap 'kill $pids 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 4
upstream=$(pgrep -f "uvicorn apps:app --port 18099" | head -1)
for _ in 1 2; do
  "$PY" cpu_per_request.py "upstream=18099:$upstream" "nginx=18110:$nginx" "proxy=18111:$proxy" \
    "sidecar=18112:$sidecar"
done
