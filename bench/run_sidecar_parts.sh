#!/bin/bash
# What each part of the sidecar's hand-off costs its data plane, side by side in one run (same
# setup as run_proxy.sh: upstream and proxies on core 0; wrk, the OTLP sink and the monitor on
# core 1): nginx, the data path alone (monitoring off), full monitoring, and full monitoring with
# one part taken away (`parts/sitecustomize.py`): no shipper thread (records dropped at the
# queue), a shipper that discards what it drains (no monitor work); and tracing off.
# Needs Debian's wrk and nginx-light.   usage: PY=.venv/bin/python bench/run_sidecar_parts.sh
# Env: ROUNDS (5), DUR (3 s).
. "$(dirname "$0")/proxy_setup.sh"
P="PYTHONPATH=$PWD/parts"
R="--reference $tmp/reference.json --model-name bench"
"$PY" abbench.py "nginx=./nginx-proxy.sh {port} 18099" \
  "proxy=MODELTAP_ENABLED=false $S --admin-port 18301" \
  "sidecar=$OTLP $S --admin-port 18302 $R" \
  "noship=$P MODELTAP_BENCH_PART=noship $OTLP $S --admin-port 18303 $R" \
  "nosend=$P MODELTAP_BENCH_PART=nosend $OTLP $S --admin-port 18304 $R" \
  "untraced=OTEL_TRACES_SAMPLER=always_off $OTLP $S --admin-port 18305 $R"
