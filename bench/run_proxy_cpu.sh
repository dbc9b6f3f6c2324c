#!/bin/bash
# CPU per proxied request (all threads of the proxy process, its monitor included), the same setup
# as run_proxy.sh: nginx, the sidecar's data path alone, and the sidecar with full monitoring;
# twice in rotation.
# usage: PY=.venv/bin/python bench/run_proxy_cpu.sh
. "$(dirname "$0")/proxy_setup.sh"
./nginx-proxy.sh 18110 18099 >/dev/null 2>&1 &
nginx=$!
MODELTAP_ENABLED=false ${S//\{port\}/18111} --admin-port 18311 >/dev/null 2>&1 &
proxy=$!
env $OTLP ${S//\{port\}/18112} --admin-port 18312 --reference "$tmp/reference.json" >/dev/null 2>&1 &
sidecar=$!
trap 'kill $upstream $sink $nginx $proxy $sidecar 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 4
for _ in 1 2; do
  "$PY" cpu_per_request.py "upstream=18099:$upstream" "nginx=18110:$nginx" "proxy=18111:$proxy" \
    "sidecar=18112:$sidecar"
done
