#!/bin/bash
# What each part of the capture costs the serving core, one part added at a time (paired.py: two
# servers pinned to core 0 loaded at once, so the machine's slow and fast moments fall on both).
# The reference app under full monitoring (process mode, the monitor and the OTLP sink on core 1),
# from a copy of modeltap built by capture_parts.py with parts switched off, in this order:
#   bare                the app alone
#   dispatch (mask 111) the middleware's compiled call and its admission; the app called directly
#   exchange (mask 47)  + the exchange object awaiting the app
#   skeleton (mask 15)  + its clocks, state and finish (the wrappers made, not handed to the app)
#   send     (mask 11)  + the send wrapper (status, timings, response size)
#   receive  (mask 9)   + the receive wrapper (request size, disconnects)
#   record   (mask 8)   + the record encoded and offered (the shipper and the monitor get it)
#   full     (mask 0)   + the trace decision and the default tenth traced: modeltap as shipped
# Each line is the second's requests/s over the first's; their product is close to the last line
# (bare against full, measured directly), and the gap between the two is the method's error.
# BOUNDS=1 asks instead what a cheaper record could gain at most, four pairs:
#   bare against receive  the capture without its record and trace decision (what is left to
#                         spend on them within a goal)
#   full against once     (mask 128) every record the first one's bytes: no encoding at all
#   full against plain    (mask 256) records only for the exchanges with a payload kept or a
#                         trace; the others end before theirs
#   full against folded   (mask 512) as plain, once each plain exchange's shape is read and
#                         found the previous one's: what counting them by shape would leave
# EARLY=1 asks where reading the record's fields costs least, three pairs:
#   plain against early   (mask 1024) the request's share of the record read as the exchange
#                         starts, plain exchanges then ending before their record as in plain
#   full against early    the same against modeltap as shipped
#   full against plain    (mask 256) as in BOUNDS, the same hour: what the two above are out of
# Needs: pip install -e '.[bench]', Debian's wrk, a C compiler.
# usage: PY=$PWD/.venv/bin/python bench/run_capture_parts.sh     Env: ROUNDS (6), DUR (5 s), BOUNDS, EARLY.
. "$(dirname "$0")/monitor_setup.sh"
export MODELTAP_BENCH_REFERENCE=ref10.json ROUNDS=${ROUNDS:-6} WARMUP=${WARMUP:-5}
copy="$MODELTAP_RUN_DIR/parts-build"
"$PY" capture_parts.py "$copy" >/dev/null
spec() {  # spec NAME: the server's environment
  local X="PYTHONPATH=$copy/src APP=modeltap MODELTAP_BENCH_SKIP"
  case $1 in
    bare) echo "APP=bare" ;;
    dispatch) echo "$X=111" ;;
    exchange) echo "$X=47" ;;
    skeleton) echo "$X=15" ;;
    send) echo "$X=11" ;;
    receive) echo "$X=9" ;;
    record) echo "$X=8" ;;
    full) echo "$X=0" ;;
    once) echo "$X=128" ;;
    plain) echo "$X=256" ;;
    folded) echo "$X=512" ;;
    early) echo "$X=1024" ;;
  esac
}
steps=(bare dispatch exchange skeleton send receive record full)
pairs=()
for i in $(seq 1 $((${#steps[@]} - 1))); do pairs+=("${steps[i - 1]}:${steps[i]}"); done
pairs+=("bare:full")
[ "${BOUNDS:-0}" != 1 ] || pairs=("bare:receive" "full:once" "full:plain" "full:folded")
[ "${EARLY:-0}" != 1 ] || pairs=("plain:early" "full:early" "full:plain")
for pair in "${pairs[@]}"; do
  a=${pair%%:*}
  b=${pair##*:}
  "$PY" paired.py "$a=$(spec "$a") $U" "$b=$(spec "$b") $U" | tail -1
done
rm -rf "$copy"
