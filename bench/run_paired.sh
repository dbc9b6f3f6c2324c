#!/bin/bash
# The serving core's cost of modeltap with the machine's noise taken out (paired.py: two servers
# pinned to core 0 loaded at the same time, each by its own wrk on core 1): modeltap against the
# bare reference app, then the default tenth of exchanges traced against no tracing, then
# modeltap against the bare logistic regression (30 features x 8 rows, 30-feature reference).
# Needs: pip install -e '.[bench]', Debian's wrk.  usage: PY=$PWD/.venv/bin/python bench/run_paired.sh
# Env: ROUNDS (8), DUR (5 s), WARMUP (10 s).
. "$(dirname "$0")/monitor_setup.sh"
export MODELTAP_BENCH_REFERENCE=ref10.json
echo "== shared reference app: modeltap against bare"
"$PY" paired.py "bare=APP=bare $U" "modeltap=APP=modeltap $U"
echo "== shared reference app: no tracing against the default tenth traced"
"$PY" paired.py "traced=APP=modeltap $U" "untraced=APP=modeltap OTEL_TRACES_SAMPLER=always_off $U"
echo "== logistic regression: modeltap against bare"
MODELTAP_BENCH_REFERENCE=ref30.json LUA=post_lr8.lua "$PY" paired.py "bare=APP=bare $L" "modeltap=APP=modeltap $L"
