# Sourced by run_monitor.sh and run_monitor_parts.sh: the monitor pinned to core 1
# (MODELTAP_MONITOR_CPUS=1), the OTLP sink on core 1, the reference profiles of both workloads
# (10 features for the reference app, 30 for the logistic regression); sets PY, S (uvicorn's
# options), U and L (the reference app's and the logistic regression's server, with {port}).
set -eu
PY=${PY:-python3}
case $PY in /*) ;; */*) PY=$PWD/$PY ;; esac  # the scripts work from bench/
cd "$(dirname "$0")"
export MODELTAP_MONITOR_CPUS=1
export MODELTAP_RUN_DIR=${MODELTAP_RUN_DIR:-$(mktemp -d /tmp/mt-bench.XXXX)}
taskset -c 1 "$PY" otlp_sink.py 18200 >/dev/null 2>&1 &
sink=$!
trap 'kill $sink 2>/dev/null' EXIT
[ -f ref30.json ] || { "$PY" make_ref30.py && "$PY" -m modeltap.cli profile ref30.csv -o ref30.json >/dev/null; }
[ -f ref10.json ] || "$PY" make_reference.py ref10.json 10 >/dev/null
S="--log-level error --no-access-log --loop uvloop --http httptools"
U="taskset -c 0 $PY -m uvicorn apps:app --port {port} $S"
L="taskset -c 0 $PY -m uvicorn apps_lr:app --port {port} $S"
