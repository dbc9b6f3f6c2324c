#!/bin/bash
# Sidecar throughput, side by side in one run: nginx proxy_pass vs the modeltap sidecar in front of
# the same upstream (the bare app). Upstream and proxies share core 0; wrk, the OTLP sink and the
# sidecar's monitor process (MODELTAP_MONITOR_CPUS=1) run on core 1. Variants: nginx (one worker,
# upstream keep-alive), `proxy` (the sidecar with monitoring off: the data path alone), `sidecar`
# (full monitoring: reference profile, OTLP metrics every 5 s, traces at the default 10 %),
# `sidecar_app` (the same with every request through the ASGI app: the direct path off),
# `sidecar_inline` (the same, analysis inside the data plane), `sidecar_traced` (every request
# traced).
# Needs Debian's wrk and nginx-light.   usage: PY=.venv/bin/python bench/run_proxy.sh
# Env: ROUNDS (5), DUR (3 s), LUA=post30.lua for the 30-feature workload.
. "$(dirname "$0")/proxy_setup.sh"
echo "== 16 connections"
"$PY" abbench.py "nginx=./nginx-proxy.sh {port} 18099" \
  "proxy=MODELTAP_ENABLED=false $S --admin-port 18301" \
  "sidecar=$OTLP $S --admin-port 18302 --reference $tmp/reference.json --model-name bench" \
  "sidecar_app=MODELTAP_SIDECAR_DIRECT=0 $OTLP $S --admin-port 18307 --reference $tmp/reference.json --model-name bench" \
  "sidecar_inline=$OTLP MODELTAP_MONITOR=inline $S --admin-port 18304 --reference $tmp/reference.json --model-name bench" \
  "sidecar_traced=$OTLP OTEL_TRACES_SAMPLER=always_on $S --admin-port 18303 --reference $tmp/reference.json --model-name bench" \
  "$@"
echo "== 1 connection (p99)"
CONN=1 "$PY" abbench.py "nginx=./nginx-proxy.sh {port} 18099" \
  "sidecar=$OTLP $S --admin-port 18305 --reference $tmp/reference.json --model-name bench" \
  "sidecar_inline=$OTLP MODELTAP_MONITOR=inline $S --admin-port 18306 --reference $tmp/reference.json --model-name bench"
