# Sourced by run_proxy.sh, run_proxy_cpu.sh and run_sidecar_layers.sh: the upstream (the bare app) on core 0, the
# OTLP sink on core 1, a 10-feature reference profile (FEATURES to change it), the sidecar's
# monitor pinned to core 1; sets PY, BIN, tmp, S (the sidecar command, with {port}) and OTLP.
set -eu
PY=${PY:-python3}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # the scripts work from bench/
cd "$(dirname "$0")"
BIN=$(dirname "$PY")
tmp=$(mktemp -d)
export MODELTAP_MONITOR_CPUS=1 MODELTAP_RUN_DIR="$tmp"
"$PY" make_reference.py "$tmp/reference.json" "${FEATURES:-10}" >/dev/null
APP=bare taskset -c 0 "$PY" -m uvicorn apps:app --port 18099 --log-level error --no-access-log \
  --loop uvloop --http httptools >/dev/null 2>&1 &
upstream=$!
taskset -c 1 "$PY" otlp_sink.py 18200 >/dev/null 2>&1 &
sink=$!
trap 'kill $upstream $sink 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 2
S="taskset -c 0 $BIN/modeltap sidecar --upstream http://127.0.0.1:18099 --host 127.0.0.1 --port {port} --log-level warning"
OTLP="OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18200 OTEL_METRIC_EXPORT_INTERVAL=5000"
