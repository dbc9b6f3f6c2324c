#!/bin/bash
# What each layer of the sidecar's data path costs, side by side in one run (ratios to nginx
# proxy_pass in front of the same upstream; upstream and proxies on core 0, wrk, the OTLP sink and
# the sidecar's monitor on core 1, as in run_proxy.sh). Rows: a proxy forwarding from the protocols'
# callbacks (no ASGI), the leanest uvicorn-hosted proxy,
# the same behind the sidecar's client protocol, the sidecar's ProxyApp with uvicorn's protocol and
# with its own, the sidecar with monitoring off, and with full monitoring (see sidecar_layers.py);
# each sidecar row also with every request through the ASGI app (`_app`: MODELTAP_SIDECAR_DIRECT=0,
# the direct path off).
# Needs Debian's wrk and nginx-light.   usage: PY=.venv/bin/python bench/run_sidecar_layers.sh
# Env: ROUNDS (5), DUR (3 s).
. "$(dirname "$0")/proxy_setup.sh"
L="taskset -c 0 $PY sidecar_layers.py"
"$PY" abbench.py "nginx=./nginx-proxy.sh {port} 18099" "callbacks=$L callbacks {port}" \
  "lean=$L lean {port}" "lean_guarded=$L lean_guarded {port}" \
  "proxy=$L proxy {port}" "proxy_guarded=$L proxy_guarded {port}" \
  "sidecar_off_app=MODELTAP_SIDECAR_DIRECT=0 MODELTAP_ENABLED=false $S --admin-port 18313" \
  "sidecar_off=MODELTAP_ENABLED=false $S --admin-port 18311" \
  "sidecar_app=MODELTAP_SIDECAR_DIRECT=0 $OTLP $S --admin-port 18314 --reference $tmp/reference.json --model-name bench" \
  "sidecar=$OTLP $S --admin-port 18312 --reference $tmp/reference.json --model-name bench"
